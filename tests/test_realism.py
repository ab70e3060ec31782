"""The realism measures: image statistics on known images, the autoencoder, and that every measure sees the
degradations people see (blurred, thickened, thinned, noisy, speckled real digits) where the classifier does not."""

import json
import shutil

import numpy as np
import pytest
import torch

import edt_lab.classifier
import edt_lab.realism
from edt_lab.classifier import DEFAULT_CLASSIFIER_DIR
from edt_lab.cli import main
from edt_lab.data import diffusion_split, load_digits, split_digits, unseen_by_judges
from edt_lab.metrics import BOOTSTRAP_MEASURES, bootstrap_digit_measures, digit_metrics, judge_digits
from edt_lab.realism import DEGRADATIONS, degrade, digit_statistics, encode_digits, load_digit_autoencoder
from test_train import assert_weights_readable


def blank(n=1):
    return -torch.ones(n, 1, 32, 32)


def test_statistics_of_known_images():
    images = blank(3)
    images[0, 0, 10:13, 5:25] = 1.0  # a 3 x 20 bar: area 60, perimeter 46
    images[1, 0, 5, 5] = images[1, 0, 20, 7] = images[1, 0, 9, 30] = 0.0  # three isolated grey dots (ink 0.5)
    images[2, 0, 10:14, 10:14] = 1.0  # a 4 x 4 square, its ring grey
    images[2, 0, 9, 9:15] = images[2, 0, 14, 9:15] = images[2, 0, 9:15, 9] = images[2, 0, 9:15, 14] = 0.0
    stats = digit_statistics(images)
    assert stats["stroke_width"][0] == pytest.approx(2 * 60 / 46)
    assert stats["mean_ink"][0] == pytest.approx(60 / 1024)
    assert stats["isolated_pixels"].tolist() == [0, 3, 0]
    assert stats["grey_share"][1] == 1.0 and stats["grey_share"][0] == 0.0
    assert stats["grey_share"][2] == pytest.approx(20 / 36)
    assert stats["stroke_width"][1] == 0.0  # no pixel above the stroke threshold


def test_autoencoder_reconstructs_held_out_digits():
    digits, labels = load_digits()
    held_out = digits[split_digits(labels)[1][:200]]
    autoencoder = load_digit_autoencoder()
    codes = encode_digits(autoencoder, held_out)
    assert codes.shape == (200, 32)
    with torch.no_grad():
        error = ((autoencoder.decode(codes.float()) - held_out) ** 2).mean().item()
    assert error < 0.04  # the model card gives its held-out MSE
    with pytest.raises(ValueError, match="train-autoencoder"):
        load_digit_autoencoder("/nonexistent/folder")
    # Each judge's folder given as the other's: refused, not loaded as random weights.
    with pytest.raises(ValueError, match="digit_classifier holds a DigitClassifier, not a DigitAutoencoder"):
        load_digit_autoencoder(DEFAULT_CLASSIFIER_DIR)
    with pytest.raises(ValueError, match="holds a DigitAutoencoder, not a DigitClassifier: create one with `edt-lab "
                                         "train-classifier --out DIR`"):
        edt_lab.classifier.load_digit_classifier(edt_lab.realism.DEFAULT_AUTOENCODER_DIR)


@pytest.fixture(scope="module")
def degraded_metrics():
    """digit_metrics of 500 real digits (seen by neither judge) and of each degraded copy of them."""
    digits, labels = load_digits()
    unseen = unseen_by_judges(labels)
    generator = torch.Generator().manual_seed(0)
    rows = {"real": digit_metrics(digits[unseen], labels[unseen])}
    for kind in DEGRADATIONS:
        rows[kind] = digit_metrics(degrade(digits[unseen], kind, generator), labels[unseen])
    return rows


@pytest.mark.slow
def test_real_digits_score_near_their_real_vs_real_values(degraded_metrics):
    real = degraded_metrics["real"]
    for measure in ("fid", "ae_fid", "mean_ink_w1", "stroke_width_w1", "grey_share_w1"):
        assert real[measure] < 2 * real[f"{measure}_real_floor"], measure
    assert real["isolated_pixels"] <= real["isolated_pixels_real"] + 0.01


@pytest.mark.slow
def test_the_measures_rank_degraded_digits_worse_than_real_ones(degraded_metrics):
    real = degraded_metrics["real"]
    assert real["ae_fid"] > 0.5 * real["ae_fid_real_floor"] > 1  # new digits, not the reference itself
    # The appearance space sees every change of the strokes themselves.
    for kind in ("blurred", "thickened", "thinned", "noisy"):
        assert degraded_metrics[kind]["ae_fid"] > 1.2 * real["ae_fid"], kind
    # Each degradation moves its own statistic far beyond the real value.
    assert degraded_metrics["blurred"]["grey_share_w1"] > 10 * real["grey_share_w1"]
    assert degraded_metrics["thickened"]["stroke_width_w1"] > 10 * real["stroke_width_w1"]
    assert degraded_metrics["thinned"]["stroke_width_w1"] > 5 * real["stroke_width_w1"]
    for kind in ("speckled", "noisy"):
        assert degraded_metrics[kind]["isolated_pixels"] > 3 + real["isolated_pixels"]
    # What the classifier's features miss: speckle leaves its FID near the real one.
    assert degraded_metrics["speckled"]["fid"] < 2 * real["fid_real_floor"]


def test_eval_prints_the_realism_measures(tmp_path, capsys):
    digits, labels = load_digits()
    held_out = diffusion_split(labels)[1][::5]
    images = ((digits[held_out] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "s.npz", images, labels[held_out].numpy())
    assert main(["eval", str(tmp_path / "s.npz"), "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "r.json").read_text())
    for name in ("ae_fid", "ae_fid_real_floor", "stroke_width", "stroke_width_real", "isolated_pixels_w1_real_floor"):
        assert name in printed and name in results


def test_bootstrap_intervals_resolve_a_degradation_and_not_a_tie():
    """Paired intervals: thickened digits against the same real digits exclude 0 in the direction of the harm;
    a judgement against itself is a tie; the measures agree with digit_metrics."""
    digits, labels = load_digits()
    chosen = unseen_by_judges(labels)[::2]  # 250 digits, 25 per class
    real = digits[chosen]
    thick = degrade(real, "thickened", torch.Generator().manual_seed(0))
    real_judged, thick_judged = judge_digits(real, labels[chosen]), judge_digits(thick, labels[chosen])
    metrics = digit_metrics(thick, labels[chosen])
    intervals = bootstrap_digit_measures(thick_judged, real_judged, resamples=100)
    assert set(intervals) == set(BOOTSTRAP_MEASURES)
    for name in ("accuracy", "ae_fid", "stroke_width_w1"):
        assert intervals[name]["value"] == pytest.approx(metrics[name], rel=1e-6)
        assert intervals[name]["low"] <= intervals[name]["high"]
    for name in ("ae_fid", "stroke_width_w1", "mean_ink_w1"):
        assert 0 < intervals[name]["diff_low"] <= intervals[name]["diff"] <= intervals[name]["diff_high"]
    tie = bootstrap_digit_measures(real_judged, real_judged, resamples=20)
    assert all(tie[m]["diff_low"] == tie[m]["diff_high"] == 0 for m in BOOTSTRAP_MEASURES)
    assert "diff" not in bootstrap_digit_measures(real_judged, resamples=5)["accuracy"]
    with pytest.raises(ValueError, match="same labels"):
        bootstrap_digit_measures(real_judged, judge_digits(real[:50], labels[chosen][:50]), resamples=5)
    for kwargs in (dict(resamples=0), dict(level=95)):
        with pytest.raises(ValueError, match="need at least 2 resamples and a level in \\(0, 1\\), e.g. 0.95"):
            bootstrap_digit_measures(real_judged, **kwargs)


class TrainingStarted(Exception):
    pass


@pytest.mark.parametrize("command, what", [("train-classifier", "classifier"), ("train-autoencoder", "autoencoder")])
def test_the_judges_training_commands_refuse_bad_input_before_training(tmp_path, capsys, monkeypatch, command,
                                                                        what):
    def training(*args, **kwargs):  # stands in for minutes of training, so a refusal must come before it
        raise TrainingStarted

    monkeypatch.setattr(edt_lab.classifier, "fit_on_digits", training)
    monkeypatch.setattr(edt_lab.realism, "fit_on_digits", training)
    model = tmp_path / "model"
    shutil.copytree(DEFAULT_CLASSIFIER_DIR, model)
    before = {path.name: path.read_bytes() for path in model.iterdir()}
    afile = tmp_path / "afile.txt"
    afile.write_text("kept")
    cases = [
        (["--out", str(afile)], f"--out {afile}: exists and is not a folder"),
        (["--out", str(afile / "x")], f"cannot create the folder {afile / 'x'}"),
        (["--out", str(model)], f"--out {model} already holds files: pass --force to write into it anyway"),
        (["--out", str(tmp_path / "new"), "--seed", "-1"], "--seed must lie in [0, 2**31), got -1"),
        (["--out", str(tmp_path / "new"), "--epochs", "0"], "--epochs must be at least 1, got 0"),
    ]
    for extra, match in cases:
        assert main([command, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"edt-lab {command}: error: ") and match in err, err
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before and afile.read_text() == "kept"
    assert not (tmp_path / "new").exists()
    with pytest.raises(TrainingStarted):  # --force lets the model be replaced, as with export
        main([command, "--out", str(model), "--force"])


@pytest.mark.parametrize("command", ["train-classifier", "train-autoencoder"])
def test_the_judges_training_commands_write_a_model_card_and_readable_weights(tmp_path, monkeypatch, command):
    def no_training(model, *args):  # the model as initialised, with made-up results: this test is about the files
        return 0.5, 0.0, 4500, 500

    monkeypatch.setattr(edt_lab.classifier, "fit_on_digits", no_training)
    monkeypatch.setattr(edt_lab.realism, "fit_on_digits", no_training)
    assert main([command, "--out", str(tmp_path / "model"), "--epochs", "1"]) == 0
    card = (tmp_path / "model" / "README.md").read_text()  # its command rewrites this very folder, so --force
    assert f"`edt-lab {command} --out {tmp_path / 'model'} --epochs 1 --seed 0 --force`" in card
    assert_weights_readable(tmp_path / "model")
