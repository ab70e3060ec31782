import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edt_lab.classifier import DigitClassifier, augment, load_digit_classifier
from edt_lab.cli import main
from edt_lab.data import diffusion_split, load_digits, split_digits, unseen_by_judges
from edt_lab.metrics import (digit_metrics, evaluate_npz, feature_statistics, frechet_distance, inception_score,
                             judge_digits, load_inception, precision_recall, read_npz)


@pytest.fixture(scope="module")
def held_out():
    """The 1,000 held-out digits (the last 100 of each class) and their labels."""
    images, labels = load_digits()
    _, indices = split_digits(labels)
    return images[indices], labels[indices]


def to_uint8(images):
    """(N, 1, 32, 32) in [-1, 1] -> uint8 (N, 32, 32, 1), the layout of an ADM .npz."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ------------------------------------------------------------------ generic metrics

def test_frechet_distance_closed_forms():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # Diagonal Gaussians add up per dimension.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected)
    # Identical statistics, also rank-deficient ones, are at distance zero.
    features = np.random.default_rng(0).normal(size=(50, 8)) @ np.diag([1, 1, 1, 1, 1, 1, 0, 0])
    mu, sigma = feature_statistics(features)
    assert np.allclose(mu, features.mean(0)) and np.allclose(sigma, np.cov(features.T))
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    with pytest.raises(ValueError, match="statistics do not match"):
        frechet_distance(mu, sigma, mu[:3], sigma[:3, :3])


def test_inception_score_uniform_and_one_hot():
    uniform = torch.full((100, 10), 0.1)
    assert inception_score(uniform)[0] == pytest.approx(1.0)
    one_hot = F.one_hot(torch.arange(100) % 10, 10).float()
    mean, std = inception_score(one_hot)
    assert mean == pytest.approx(10.0) and std == pytest.approx(0.0)
    # Logits are turned into probabilities first.
    assert inception_score(one_hot * 50)[0] == pytest.approx(10.0, rel=1e-3)
    with pytest.raises(ValueError, match="N >= splits"):
        inception_score(one_hot[:5])


def test_precision_recall_identical_and_disjoint():
    torch.manual_seed(0)
    real = torch.randn(200, 16)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    # Fakes covering half of a 2-D real cloud: full precision, recall a little over one half.
    plane = torch.randn(400, 2)
    precision, recall = precision_recall(plane, plane[plane[:, 0] > 0], batch_size=64)
    assert precision == 1.0 and 0.5 < recall < 0.7
    with pytest.raises(ValueError, match="more than k = 3 rows"):
        precision_recall(real, real[:3])


# ------------------------------------------------------------------ the digit classifier

def test_shipped_classifier_is_accurate_on_held_out_digits(held_out):
    images, labels = held_out
    classifier = load_digit_classifier()
    with torch.no_grad():
        accuracy = (classifier(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.97
    assert classifier.features(images[:4]).shape == (4, 128)


def test_classifier_save_load_and_missing(tmp_path):
    torch.manual_seed(0)
    model = DigitClassifier(width=4, feature_dim=8).eval()
    model.save_pretrained(tmp_path / "clf")
    loaded = load_digit_classifier(tmp_path / "clf")
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(ValueError, match="edt-lab train-classifier --out"):
        load_digit_classifier(tmp_path / "missing")


def test_augment_keeps_background_and_identity(held_out):
    images = held_out[0][:8]
    generator = torch.Generator().manual_seed(0)
    assert torch.allclose(augment(images, generator, max_shift=0, max_degrees=0), images, atol=1e-5)
    moved = augment(images, generator)
    assert moved.shape == images.shape and (moved[:, :, 0, 0] == -1).all()


# ------------------------------------------------------------------ digit metrics

@pytest.mark.slow
def test_digit_metrics_real_versus_noise(held_out):
    digits, digit_labels = load_digits()
    diffusion_train, diffusion_held_out = diffusion_split(digit_labels)
    assert len(diffusion_train) == 4500 and not set(diffusion_train.tolist()) & set(diffusion_held_out.tolist())
    # 500 real digits the classifier never saw but the diffusion model trains on: real-looking, and copies.
    trained = unseen_by_judges(digit_labels)
    assert len(trained) == 500 and not set(trained.tolist()) & set(diffusion_held_out.tolist())
    real = digit_metrics(digits[trained], digit_labels[trained])
    assert real["accuracy"] > 0.97 and len(real["per_class_accuracy"]) == 10
    assert real["fid"] < 2 * real["fid_real_floor"]
    assert real["nearest_train_l2"] < 1e-4  # each is its own nearest training digit
    # The held-out digits are new digits: exactly the copy check's baseline, well above zero.
    new = digit_metrics(digits[diffusion_held_out], digit_labels[diffusion_held_out], reference=digits[trained])
    assert new["nearest_train_l2"] == pytest.approx(new["nearest_train_l2_held_out"]) and new["nearest_train_l2"] > 5
    assert new["accuracy_real"] is None and new["per_class_accuracy_real"] is None  # that reference has no classes
    # The real accuracy is the classifier's on the held-out digits, whatever the samples: judged as samples
    # themselves, the held-out digits score exactly it. Real digits are not all legible (under 1).
    held = digit_metrics(digits[diffusion_held_out], digit_labels[diffusion_held_out])
    assert held["accuracy"] == held["accuracy_real"] == real["accuracy_real"] and 0.95 < held["accuracy_real"] < 1
    assert held["per_class_accuracy"] == held["per_class_accuracy_real"] == real["per_class_accuracy_real"]

    torch.manual_seed(0)
    noise = digit_metrics(torch.rand(200, 1, 32, 32) * 2 - 1, torch.arange(200) % 10)
    assert noise["accuracy"] < 0.3
    assert noise["fid"] > 20 * noise["fid_real_floor"]
    # Copies of training digits are at distance zero.
    train = load_digits()[0][:20]
    copies = digit_metrics(train, reference=digits[trained])
    assert copies["nearest_train_l2"] < 1e-3 and copies["accuracy"] is None


def test_digit_metrics_bad_input(held_out):
    images, labels = held_out
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        digit_metrics(torch.zeros(4, 3, 32, 32), labels[:4])
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        digit_metrics(images[:4] * 255, labels[:4])
    with pytest.raises(ValueError, match="labels in 0..9"):
        digit_metrics(images[:4], torch.tensor([0, 1, 2, 10]))
    # The pipeline's [0, 1] images would otherwise be judged as far too inky digits, without a word.
    with pytest.raises(ValueError, match=r"with a background of -1, got values in \[0, 1\]: .* images \* 2 - 1"):
        digit_metrics((images[:4] + 1) / 2, labels[:4])
    with pytest.raises(ValueError, match=r"got values in \[nan, nan\]"):
        digit_metrics(torch.full((4, 1, 32, 32), float("nan")), labels[:4])
    with pytest.raises(ValueError, match=r"N >= 1, got \(0, 1, 32, 32\)"):
        digit_metrics(images[:0], labels[:0])
    for bad in ([0.5, 1, 2, 3], ["0", "1", "2", "3"], labels[:3]):
        with pytest.raises(ValueError, match="expected 4 integer labels in 0..9"):
            digit_metrics(images[:4], bad)
    with pytest.raises(ValueError, match="labels in 0..9, got labels in 0..42"):
        judge_digits(images[:4], torch.tensor([0, 1, 2, 42]))
    with pytest.raises(ValueError, match="dtype must be torch.float32 or torch.bfloat16, got 'bf16'"):
        digit_metrics(images[:4], labels[:4], dtype="bf16")


# ------------------------------------------------------------------ the eval command

def test_eval_command_on_real_digits(tmp_path, held_out, capsys):
    images, labels = held_out
    np.savez(tmp_path / "samples.npz", to_uint8(images[::2]), labels[::2].numpy())
    assert main(["eval", str(tmp_path / "samples.npz"), "--json", str(tmp_path / "out.json")]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "fid_real_floor" in printed
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["num_samples"] == 500 and results["accuracy"] > 0.97


@pytest.mark.slow
def test_eval_precision_bf16_classifies_like_fp32(tmp_path, held_out, capsys, monkeypatch):
    images, labels = held_out
    np.savez(tmp_path / "samples.npz", to_uint8(images[::5]), labels[::5].numpy())
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: False)
    assert main(["eval", str(tmp_path / "samples.npz"), "--precision", "bf16"]) == 2
    assert "lacks native bf16" in capsys.readouterr().err
    # emulated where the CPU lacks it
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: feature == "bf16")
    fp32 = evaluate_npz(tmp_path / "samples.npz", precision="fp32")
    bf16 = evaluate_npz(tmp_path / "samples.npz", precision="bf16")
    assert abs(bf16["accuracy"] - fp32["accuracy"]) <= 0.01 and bf16["fid"] != fp32["fid"]
    assert abs(bf16["fid"] - fp32["fid"]) < 0.05 * fp32["fid_real_floor"] + 0.5


def test_eval_command_missing_file(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.npz")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nope.npz does not exist" in error


def eval_error(argv, capsys) -> str:
    """The stderr of `edt-lab eval ARGV`, which must fail with exit code 2."""
    assert main(["eval", *map(str, argv)]) == 2
    return capsys.readouterr().err


@pytest.fixture
def tiny_digits(tmp_path):
    """An .npz of 4 digits: valid input, so that an error comes from the option under test."""
    path = tmp_path / "digits.npz"
    np.savez(path, np.zeros((4, 32, 32, 1), dtype=np.uint8))
    return path


@pytest.fixture
def no_evaluation(monkeypatch):
    """Bad options must be refused before the metrics are computed: computing them fails the test."""
    def evaluate(*args, **kwargs):
        raise AssertionError("the metrics were computed before the options were checked")
    monkeypatch.setattr("edt_lab.metrics.evaluate_npz", evaluate)


@pytest.mark.parametrize("size", [0, -3])
def test_eval_command_refuses_batch_size_below_one(tiny_digits, size, no_evaluation, capsys):
    error = eval_error([tiny_digits, "--batch-size", size], capsys)
    assert error == f"edt-lab eval: error: --batch-size must be at least 1, got {size}\n"


def test_eval_command_checks_the_device_as_sample_does(tiny_digits, no_evaluation, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(tiny_digits), "--device", "foo"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1
    assert error.startswith("edt-lab eval: error: argument --device: invalid choice: 'foo'")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # also where this machine has a GPU
    error = eval_error([tiny_digits, "--device", "cuda"], capsys)
    assert error == "edt-lab eval: error: --device cuda: no CUDA device is available\n"


def test_eval_command_refuses_a_folder_as_json(tiny_digits, tmp_path, no_evaluation, capsys):
    error = eval_error([tiny_digits, "--json", tmp_path], capsys)
    assert error == f"edt-lab eval: error: --json {tmp_path}: is a folder, expected a file name\n"
    before = tiny_digits.read_bytes()
    error = eval_error([tiny_digits, "--json", tiny_digits], capsys)  # the samples would be replaced by the JSON
    assert error == (f"edt-lab eval: error: --json {tiny_digits}: is the samples file, which it would overwrite: "
                     f"choose another name\n") and tiny_digits.read_bytes() == before


def test_eval_command_given_inception_file_missing(tmp_path, no_evaluation, capsys):
    np.savez(tmp_path / "size64.npz", np.zeros((4, 64, 64, 3), dtype=np.uint8))
    error = eval_error([tmp_path / "size64.npz", "--ref", tmp_path / "size64.npz", "--inception",
                        tmp_path / "nope.pt"], capsys)
    assert error == (f"edt-lab eval: error: --inception {tmp_path / 'nope.pt'} does not exist: expected the "
                     f"TorchScript inception-2015-12-05.pt of the StyleGAN2-ADA metrics\n")


def test_eval_command_folder_instead_of_npz(tmp_path, capsys):
    error = eval_error([tmp_path], capsys)
    assert error == (f"edt-lab eval: error: {tmp_path} is a folder: expected an ADM-style .npz "
                     f"(arr_0: uint8 N x H x W x 3 or x 1)\n")


def test_eval_command_no_images(tmp_path, capsys):
    for shape in [(0, 32, 32, 1), (0, 16, 16, 3)]:  # the digit metrics and the Inception metrics
        np.savez(tmp_path / "empty.npz", np.zeros(shape, dtype=np.uint8))
        error = eval_error([tmp_path / "empty.npz", "--ref", tmp_path / "empty.npz"], capsys)
        assert error == f"edt-lab eval: error: {tmp_path / 'empty.npz'}: arr_0 holds no images\n"


def test_eval_command_unreadable_npz(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an archive")
    np.savez(tmp_path / "digits.npz", np.zeros((4, 32, 32, 1), dtype=np.uint8))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "digits.npz").read_bytes()[:300])
    np.savez(tmp_path / "objects.npz", np.array([{"a": 1}], dtype=object))  # loading it would unpickle
    reasons = {"notes.txt": "not a zip archive of .npy arrays", "cut.npz": "not a zip archive of .npy arrays",
               "objects.npz": "arr_0 holds Python objects"}
    for name, reason in reasons.items():
        error = eval_error([tmp_path / name], capsys)
        assert error == f"edt-lab eval: error: {tmp_path / name}: not a readable .npz of images ({reason})\n"


def test_read_npz_errors(tmp_path):
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not a readable .npz of images"):
        read_npz(tmp_path / "text.npz")
    np.savez(tmp_path / "good.npz", np.zeros((2, 8, 8, 3), dtype=np.uint8))
    damaged = bytearray((tmp_path / "good.npz").read_bytes())
    damaged[100] ^= 0xFF  # inside the array's bytes: the archive opens, its checksum fails
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="not a readable .npz of images \\(Bad CRC-32"):
        read_npz(tmp_path / "damaged.npz")
    np.savez(tmp_path / "floats.npz", np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="expected uint8"):
        read_npz(tmp_path / "floats.npz")
    np.savez(tmp_path / "labels.npz", np.zeros((2, 8, 8, 3), dtype=np.uint8), np.zeros(3))
    with pytest.raises(ValueError, match="one label per image"):
        read_npz(tmp_path / "labels.npz")


# ------------------------------------------------------------------ Inception metrics plumbing

class StandInInception(torch.nn.Module):
    """Tiny module with the call signature of the StyleGAN2-ADA TorchScript Inception-v3."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(48, 1008)

    def forward(self, img, return_features: bool = False, use_fp16: bool = False, no_output_bias: bool = False):
        features = F.adaptive_avg_pool2d(img / 255, 4).flatten(1)  # (B, 3 * 16), stands in for the 2048 pool
        if return_features:
            return features
        logits = self.fc(features)
        if no_output_bias:
            logits = logits - self.fc.bias
        return logits.softmax(dim=1)


@pytest.fixture
def inception_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(StandInInception()), str(path))
    return path


def test_inception_metrics_with_stand_in(tmp_path, inception_file):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", images)
    np.savez(tmp_path / "ref.npz", images)
    same = evaluate_npz(tmp_path / "samples.npz", tmp_path / "ref.npz", inception=inception_file, batch_size=10)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert 1.0 <= same["inception_score"] and same["sfid"] is None
    assert any("sFID not computed" in note for note in same["notes"])

    # Reference statistics only (as in ADM's reference batches): FID from mu/sigma, no precision/recall.
    model = load_inception(inception_file)
    darker = (images // 2).astype(np.uint8)
    features = model(torch.from_numpy(darker).permute(0, 3, 1, 2).float(), return_features=True)
    mu, sigma = feature_statistics(features.detach())
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    stats = evaluate_npz(tmp_path / "samples.npz", tmp_path / "stats.npz", inception=model)
    assert stats["fid"] > 1 and stats["precision"] is None

    # The command, with single-channel digits given Inception weights.
    np.savez(tmp_path / "digits.npz", rng.integers(0, 256, size=(20, 32, 32, 1), dtype=np.uint8))
    argv = ["eval", str(tmp_path / "digits.npz"), "--ref", str(tmp_path / "stats.npz"),
            "--inception", str(inception_file), "--json", str(tmp_path / "reports" / "out.json")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "reports" / "out.json").read_text())["inception_score"] >= 1.0  # folder created


def test_missing_inception_weights(tmp_path, monkeypatch):
    np.savez(tmp_path / "rgb.npz", np.zeros((4, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="--inception .*missing.pt does not exist"):
        evaluate_npz(tmp_path / "rgb.npz", tmp_path / "rgb.npz", inception=tmp_path / "missing.pt")
    monkeypatch.setattr("edt_lab.metrics.npz.DEFAULT_INCEPTION_PATH", tmp_path / "absent.pt")
    with pytest.raises(ValueError, match="put inception-2015-12-05.pt .* or pass --inception PATH"):
        evaluate_npz(tmp_path / "rgb.npz", tmp_path / "rgb.npz")
    (tmp_path / "bad.pt").write_text("not a model")
    with pytest.raises(ValueError, match="not a TorchScript"):
        load_inception(tmp_path / "bad.pt")
