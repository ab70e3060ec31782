"""The `edt-lab sample` command: every sampler, the ADM .npz layout, the grid, determinism, sharding, bad input."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from edt_lab.cli import main
from edt_lab.metrics import read_npz
from edt_lab.generation import draw_labels, generate
from edt_lab.pipeline import EDTPipeline, make_scheduler
from edt_lab.settings import SAMPLERS
from test_pipeline import DIGITS, tiny_edt, tiny_vae


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny latent EDT saved as the released scripts save it, and a tiny VAE folder."""
    folder = tmp_path_factory.mktemp("sample")
    state_dict = tiny_edt().state_dict()
    args = argparse.Namespace(model="EDT-S/2", image_size=128, num_classes=10)
    torch.save({"model": state_dict, "ema": state_dict, "opt": {}, "args": args}, folder / "edt.pt")
    tiny_vae().save_pretrained(folder / "vae")
    return folder


def sample(files, out, *extra):
    """Run `edt-lab sample` on the tiny files; returns the exit code."""
    return main(["sample", "--ckpt", str(files / "edt.pt"), "--vae", str(files / "vae"), "--classes", "3,1",
                 "--per-class", "2", "--steps", "3", "--device", "cpu", "--out", str(out), *extra])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_writes_the_adm_layout(files, tmp_path, sampler):
    out = tmp_path / "samples.npz"
    assert sample(files, out, "--sampler", sampler, "--cfg", "1.5", "--amm", "preset") == 0
    arrays = read_npz(out)
    assert arrays["arr_0"].dtype == np.uint8 and arrays["arr_0"].shape == (4, 128, 128, 3)
    assert arrays["arr_1"].dtype == np.int64 and arrays["arr_1"].tolist() == [3, 3, 1, 1]  # class-major


def test_same_arguments_same_bytes(files, tmp_path):
    paths = [tmp_path / f"{name}.npz" for name in ("a", "b", "batch1", "seed1")]
    assert sample(files, paths[0], "--batch-size", "3") == 0
    assert sample(files, paths[1], "--batch-size", "3") == 0
    assert sample(files, paths[2], "--batch-size", "1") == 0
    assert sample(files, paths[3], "--batch-size", "3", "--seed", "1") == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a, batch1, seed1 = (np.load(p)["arr_0"].astype(int) for p in (paths[0], paths[2], paths[3]))
    # Another batch size: the same noise per image; kernels that round by batch shape may move a rare pixel by one.
    assert np.abs(a - batch1).max() <= 1 and (a != batch1).mean() < 1e-3
    assert (a != seed1).mean() > 0.5


def test_bf16_precision_samples_what_fp32_samples_up_to_rounding(files, tmp_path, monkeypatch):
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: feature == "bf16")  # emulated where the CPU lacks it
    assert sample(files, tmp_path / "fp32.npz", "--cfg", "2") == 0
    assert sample(files, tmp_path / "bf16.npz", "--cfg", "2", "--precision", "bf16") == 0
    fp32, bf16 = (np.load(tmp_path / f"{name}.npz")["arr_0"].astype(int) for name in ("fp32", "bf16"))
    assert (fp32 != bf16).any() and np.abs(fp32 - bf16).mean() < 2  # of 255 levels


def test_compile_flag_compiles_the_blocks(files, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr("edt_lab.accel.compile_blocks",
                        lambda model, device, **kwargs: compiled.append(type(model).__name__))
    assert sample(files, tmp_path / "plain.npz") == 0 and compiled == []
    assert sample(files, tmp_path / "compiled.npz", "--compile") == 0 and compiled == ["EDT"]


def test_png_grid_has_one_labelled_row_per_class(files, tmp_path):
    out = tmp_path / "new" / "folder" / "grid.png"  # missing folders are created
    assert sample(files, out, "--sampler", "ddim") == 0
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape[0] == 2 * 128 and (grid.shape[1] - 2 * 128) > 0  # two rows; a label column then 2 images
    label_column = grid[:, : grid.shape[1] - 2 * 128]
    assert (label_column < 128).any(axis=(1, 2))[:128].any() and (label_column < 128).any(axis=(1, 2))[128:].any()


@pytest.mark.slow
def test_two_processes_write_the_same_bytes_as_one(files, tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    args = ["sample", "--ckpt", str(files / "edt.pt"), "--vae", str(files / "vae"), "--classes", "3,1,4",
            "--per-class", "1", "--steps", "2", "--sampler", "ddim", "--batch-size", "1", "--device", "cpu"]
    assert main([*args, "--out", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `accelerate launch` through this interpreter: a venv that is not activated has no `accelerate` on PATH.
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    result = subprocess.run([*launch, "--num_processes", "2", "--cpu", "-m", "edt_lab.cli", *args, "--out", str(two)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert one.read_bytes() == two.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "two.npz"]  # no shard files left


def test_default_model_uses_its_recommended_settings(files, tmp_path, monkeypatch):
    pipe = EDTPipeline(tiny_edt(in_channels=1, input_size=16), make_scheduler("ddpm"), None, DIGITS)
    pipe.save_pretrained(tmp_path / "default")
    recommended = {"sampler": "ddim", "num_inference_steps": 2, "guidance_scale": 2.0,
                   "guidance_interval": [500, 999], "amm_blocks": [8], "amm_radius": 3.0, "amm_scale": 0.6}
    (tmp_path / "default" / "recommended.json").write_text(json.dumps(recommended))
    monkeypatch.setattr("edt_lab.pipeline.DEFAULT_MODEL_DIR", tmp_path / "default")
    monkeypatch.setattr("edt_lab.generation.DEFAULT_MODEL_DIR", tmp_path / "default")
    common = ["--classes", "seven,1", "--per-class", "2", "--device", "cpu"]
    assert main(["sample", "--model", "default", *common, "--out", str(tmp_path / "a.npz")]) == 0
    explicit = ["--sampler", "ddim", "--steps", "2", "--cfg", "2", "--amm", "8", "--amm-radius", "3",
                "--amm-scale", "0.6"]
    assert main(["sample", "--ckpt", str(tmp_path / "default"), *common, *explicit, "--cfg-interval", "500", "999",
                 "--out", str(tmp_path / "b.npz")]) == 0
    # Guiding the last step (t = 0) instead of the first (t = 500) draws other images. (Guidance at t = 0 alone
    # moves pixels by ~1e-4, too little to show in uint8 reliably.)
    assert main(["sample", "--ckpt", str(tmp_path / "default"), *common, *explicit, "--cfg-interval", "0", "400",
                 "--out", str(tmp_path / "d.npz")]) == 0
    assert not np.array_equal(np.load(tmp_path / "b.npz")["arr_0"], np.load(tmp_path / "d.npz")["arr_0"])
    assert main(["sample", "--model", "default", *common, "--steps", "3", "--out", str(tmp_path / "c.npz")]) == 0
    a, b, c = (np.load(tmp_path / f"{name}.npz") for name in "abc")
    assert a["arr_0"].shape == (4, 16, 16, 1) and a["arr_1"].tolist() == [7, 7, 1, 1]
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert not np.array_equal(a["arr_0"], c["arr_0"])  # the command line wins over recommended.json


def test_fid_style_labels_are_drawn_uniformly_at_random_by_default(files, tmp_path):
    base = ["sample", "--ckpt", str(files / "edt.pt"), "--vae", str(files / "vae"), "--classes", "all",
            "--steps", "1", "--sampler", "ddim", "--device", "cpu", "--num-samples", "12"]
    assert main([*base, "--out", str(tmp_path / "u.npz")]) == 0
    assert main([*base, "--label-draw", "balanced", "--out", str(tmp_path / "b.npz")]) == 0
    uniform, balanced = np.load(tmp_path / "u.npz")["arr_1"], np.load(tmp_path / "b.npz")["arr_1"]
    assert uniform.shape == balanced.shape == (12,)
    assert balanced.tolist() == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert len(set(uniform.tolist())) < 10  # 12 uniform draws over 10 classes repeat some and miss others
    # The released generator's draw: uniform over the classes, seeded.
    draws = draw_labels(range(10), 100_000, "uniform", seed=0)
    assert np.abs(np.bincount(draws, minlength=10) / 100_000 - 0.1).max() < 0.005
    assert draw_labels([3, 7], 5, "uniform", 1).tolist() == draw_labels([3, 7], 5, "uniform", 1).tolist()


def test_bad_input_is_one_line_and_exit_2(files, tmp_path, capsys, monkeypatch):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    Image.new("L", (8, 8)).save(tmp_path / "digits.png")
    out = str(tmp_path / "x.npz")
    base = ["sample", "--ckpt", str(files / "edt.pt"), "--vae", str(files / "vae"), "--device", "cpu"]
    cases = [
        ([*base, "--classes", "3,10", "--out", out], "class 10 is out of range: this model has classes 0..9"),
        ([*base, "--steps", "0", "--out", out], "--steps must be at least 1, got 0"),
        ([*base, "--sampler", "euler", "--out", out], "--sampler must be one of ddpm, ddim"),
        (["sample", "--ckpt", str(files / "edt.pt"), "--out", out], "needs a VAE"),
        ([*base[:2], str(tmp_path / "missing.pt"), *base[3:], "--out", out], "no such file"),
        ([*base[:2], str(tmp_path / "garbage.pt"), *base[3:], "--out", out], "garbage.pt"),
        ([*base[:2], str(tmp_path / "digits.png"), *base[3:], "--out", out], "digits.png: not a PyTorch checkpoint"),
        ([*base, "--out", str(tmp_path / "garbage.pt" / "x.npz")], "cannot create the folder"),
        ([*base[:4], str(tmp_path / "no_vae"), "--out", out], "no config.json"),
        ([*base, "--amm", "7,x", "--out", out], "--amm '7,x': expected 'preset', 'off'"),
        ([*base, "--amm", "7,40", "--out", out], "AMM block index 40 is out of range"),
        ([*base, "--per-class", "0", "--out", out], "--per-class must be at least 1"),
        ([*base, "--per-class", "2", "--num-samples", "4", "--out", out], "exclude each other"),
        ([*base, "--num-samples", "4", "--out", str(tmp_path / "x.png")], "an .npz --out"),
        ([*base, "--out", str(tmp_path / "x.jpg")], "expected a .png or .npz"),
        ([*base, "--classes", "ten", "--out", out], "this model has no class names"),
        ([*base, "--cfg-interval", "900", "100", "--out", out], "--cfg-interval must be None or (low, high) timesteps with 0 <= low <= high"),
        ([*base, "--classes", "1,,2", "--out", out], "--classes '1,,2': expected 'all' or a comma-separated list"),
        ([*base, "--seed", "-1", "--out", out], "--seed must be an integer in 0..18446744073709551615, got -1"),
        ([*base, "--cfg", "nan", "--out", out], "--cfg must be a finite number, got nan"),
        ([*base, "--cfg", "inf", "--out", out], "--cfg must be a finite number, got inf"),
        ([*base, "--amm", "preset", "--amm-scale", "nan", "--out", out], "--amm-scale must be a finite number"),
        ([*base, "--amm", "preset", "--amm-radius=-inf", "--out", out], "--amm-radius must be a finite number"),
        # The images alone (128 x 128 x 3 bytes each) would not fit in memory: refused before any allocation.
        ([*base, "--num-samples", str(10**15), "--out", out],
         f"--num-samples {10**15}: {10**15} images would take {10**15 * 128 * 128 * 3 / 2**30:.1f} GiB, more than"),
        ([*base, "--classes", "3,1", "--per-class", str(10**15), "--out", out],
         f"--per-class {10**15} of 2 classes: {2 * 10**15} images would take"),
        # Options that would be ignored.
        ([*base, "--label-draw", "balanced", "--out", out], "--label-draw balanced: has no effect without"),
        ([*base, "--amm", "off", "--amm-scale", "0.7", "--out", out], "--amm-scale: has no effect with --amm off"),
        ([*base, "--amm-radius", "2", "--out", out], "--amm-radius: has no effect with the AMM off (this model's"),
        ([*base, "--cfg-interval", "0", "500", "--out", out],
         "--cfg-interval: has no effect without guidance (this model's default is --cfg 1)"),
        ([*base, "--cfg", "1", "--cfg-schedule", "power-cos", "--guided-channels", "3", "--out", out],
         "--cfg-schedule and --guided-channels: have no effect at --cfg 1; guide with --cfg above 1"),
        ([*base, "--cfg", "2", "--guided-channels", "-1", "--out", out], "--guided-channels must be at least 1 (or None for all), got -1"),
        ([*base, "--cfg", "2", "--guided-channels", "5", "--out", out], "guided_channels must lie in [1, 4], got 5"),
    ]
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: False)
    cases.append(([*base, "--precision", "bf16", "--out", out], "precision bf16: this CPU"))
    monkeypatch.setattr("edt_lab.pipeline.DEFAULT_MODEL_DIR", tmp_path / "nothing_here")
    cases.append((["sample", "--model", "default", "--out", out], "the default model is not in assets/edt_t2_digits"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("edt-lab sample: error: "), err
        assert "weights_only" not in err and "pipe." not in err, err  # in the command line's words
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_command_line_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "edt_lab.cli", "sample", "--ckpt", str(tmp_path / "none.pt"),
                             "--out", str(tmp_path / "x.npz")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = f"edt-lab sample: error: {tmp_path / 'none.pt'}: no such file or folder"
    assert result.stderr.strip().splitlines() == [expected]


def test_no_effect_options_and_output_folders_are_refused_before_sampling(files, tmp_path, capsys):
    pixel = EDTPipeline(tiny_edt(in_channels=1, input_size=16), make_scheduler("ddim"), None, DIGITS)
    pixel.save_pretrained(tmp_path / "pixel")
    # A recommended radius and scale beside "off" are the folder's defaults, not the user's: no error.
    recommended = {"sampler": "ddim", "num_inference_steps": 1, "amm_blocks": [], "amm_radius": 3.0,
                   "amm_scale": 0.6}
    (tmp_path / "pixel" / "recommended.json").write_text(json.dumps(recommended))
    base = ["sample", "--ckpt", str(tmp_path / "pixel"), "--classes", "1", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "ok.npz")]) == 0
    capsys.readouterr()
    (tmp_path / "taken.npz").mkdir()  # a folder named like the output file: kept as it is
    (tmp_path / "taken.npz" / "keep.txt").write_text("mine")
    cases = [
        ([*base, "--vae", str(files / "vae"), "--out", str(tmp_path / "x.npz")],
         f"--vae {files / 'vae'}: has no effect, this model works on 1-channel images"),
        ([*base, "--amm-scale", "0.7", "--out", str(tmp_path / "x.npz")], "--amm-scale: has no effect with the AMM"),
        ([*base, "--out", str(tmp_path / "taken.npz")], f"--out {tmp_path / 'taken.npz'}: is a folder"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("edt-lab sample: error: "), err
    assert not (tmp_path / "x.npz").exists()
    assert [p.name for p in (tmp_path / "taken.npz").iterdir()] == ["keep.txt"]
    assert (tmp_path / "taken.npz" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("recommended, message", [
    ({"sampler": "euler"}, "sampler must be one of ddpm, ddim"),
    ({"num_inference_steps": 2.5}, "num_inference_steps must be a whole number, got 2.5"),
    ({"guidance_scale": 0.5}, "guidance_scale must be at least 1 (1 = no guidance), got 0.5"),
    ({"guidance_schedule": "linear"}, "guidance_schedule must be one of constant, power-cos, got 'linear'"),
    ({"guidance_interval": [0]}, "guidance_interval must be None or (low, high) timesteps"),
    ({"guidance_interval": [800, 0]}, "guidance_interval must be None or (low, high) timesteps"),
    ({"amm_blocks": "7,x"}, "amm_blocks must be 'preset', [] (off) or a list of block indices, got '7,x'"),
    ({"amm_scale": -1}, "amm_scale must be null or a positive number, got -1"),
    ({"cfg": 2}, "cfg is an old name: rename it guidance_scale"),
])
def test_a_folders_bad_recommended_settings_are_named_before_sampling(tmp_path, capsys, recommended, message):
    pipe = EDTPipeline(tiny_edt(in_channels=1, input_size=16), make_scheduler("ddim"), None, DIGITS)
    pipe.save_pretrained(tmp_path / "pixel")
    (tmp_path / "pixel" / "recommended.json").write_text(json.dumps(recommended))
    argv = ["sample", "--ckpt", str(tmp_path / "pixel"), "--classes", "1", "--device", "cpu",
            "--out", str(tmp_path / "x.npz")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    path = tmp_path / "pixel" / "recommended.json"
    assert err.startswith(f"edt-lab sample: error: {path}: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "x.npz").exists()



def test_generate_and_draw_labels_refuse_mismatched_or_missing_input():
    pipe = EDTPipeline(tiny_edt(in_channels=1, input_size=16), make_scheduler("ddim"))
    with pytest.raises(ValueError, match="expected one image index per label, got 1 labels and 3 indices"):
        generate(pipe, np.array([1]), [0, 1, 2], batch_size=1, num_inference_steps=1)
    with pytest.raises(ValueError, match="no classes to draw labels from"):
        draw_labels([], 5, "uniform", 0)
    with pytest.raises(ValueError, match="draw must be 'uniform' or 'balanced', got 'random'"):
        draw_labels([1], 5, "random", 0)
