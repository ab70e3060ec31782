"""The trainer: loss goes down, exact resume after kill -9, corrupt checkpoints, export, features, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image

from edt_lab.checkpoints import load_checkpoint, safe_torch_load
from edt_lab.cli import main
from edt_lab.models import EDT, registry
from edt_lab.pipeline import EDTPipeline
from edt_lab.train import (CHECKPOINT_KEYS, StepBatches, epoch_permutation, lr_factor, next_position, save_atomic,
                           truncate_log, update_ema)

# A ~20k-parameter stand-in for EDT-T/2 (same 32x32 digits, 16x16 token grid, five stages) so tests run in seconds.
TINY_EDT = dict(dims=(16, 24, 32, 24, 16), num_heads=(1, 1, 1, 1, 1), stages_depth=(1, 1, 1, 1, 1), input_size=32,
                in_channels=1, num_classes=10)
# The same stand-in for a subprocess: one thread, so the runs are deterministic and do not fight for the 2 cores.
SUBPROCESS_PREFIX = (
    "import sys, torch; torch.set_num_threads(1)\n"
    "from edt_lab.models import EDT, registry\n"
    f"registry.MODEL_CONFIGS['EDT-T/2'] = (EDT, {TINY_EDT!r})\n"
    "from edt_lab.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.fixture(autouse=True)
def tiny_edt(monkeypatch):
    """EDT-T/2 is the tiny stand-in, and torch uses one thread (fast and deterministic on a shared CPU)."""
    monkeypatch.setitem(registry.MODEL_CONFIGS, "EDT-T/2", (EDT, TINY_EDT))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_argv(run_dir, *extra, steps=4, batch=4):
    return ["train", "--model", "EDT-T/2", "--data", "mnist", "--results-dir", str(run_dir), "--max-steps", str(steps),
            "--batch-size", str(batch), "--log-every", "1", *extra]


def read_log(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def one_line_error(capsys, argv, match):
    """Run the CLI, expecting exit 2 and a single stderr line that contains `match`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and match in err, err


# ----------------------------------------------------------------------------------------------------------------
# Pure parts
# ----------------------------------------------------------------------------------------------------------------

def test_learning_rate_decays_linearly_then_stays_flat():
    assert lr_factor(0, 1e-3, 5e-5, 100) == 1.0
    assert lr_factor(50, 1e-3, 5e-5, 100) * 1e-3 == pytest.approx(5.25e-4)
    assert lr_factor(100, 1e-3, 5e-5, 100) * 1e-3 == pytest.approx(5e-5)
    assert lr_factor(10_000, 1e-3, 5e-5, 100) == lr_factor(100, 1e-3, 5e-5, 100)


def test_ema_update():
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight.detach())


def test_data_order_is_per_epoch_sharded_and_resumable():
    n, batch = 10, 4
    assert torch.equal(epoch_permutation(n, 0, 3), epoch_permutation(n, 0, 3))
    assert not torch.equal(epoch_permutation(n, 0, 0), epoch_permutation(n, 0, 1))
    # Two steps per epoch (the incomplete tail of 2 samples is skipped), epoch by epoch.
    batches = iter(StepBatches(n, batch, seed=0, epoch=0, position=0))
    first = [next(batches) for _ in range(4)]
    assert first[0] + first[1] == epoch_permutation(n, 0, 0)[:8].tolist()
    assert first[2] + first[3] == epoch_permutation(n, 0, 1)[:8].tolist()
    assert next_position(0, 8, batch, n) == (1, 4)
    # Starting at a stored position continues the same order.
    resumed = iter(StepBatches(n, batch, seed=0, epoch=0, position=4))
    assert [next(resumed) for _ in range(3)] == first[1:]
    # Two processes split each global batch; two micro-batches split each shard.
    shards = [iter(StepBatches(n, batch, 0, 0, 0, rank=r, num_processes=2, grad_accum=2)) for r in (0, 1)]
    step = [next(s) for s in shards for _ in range(2)]
    assert all(len(micro) == 1 for micro in step)
    assert sorted(sum(step, [])) == sorted(first[0])


def test_truncate_log_and_atomic_save(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    truncate_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    save_atomic({"x": torch.ones(2)}, tmp_path / "ckpt" / "a.pt")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["a.pt"]
    assert torch.equal(safe_torch_load(tmp_path / "ckpt" / "a.pt")["x"], torch.ones(2))


# ----------------------------------------------------------------------------------------------------------------
# Training runs
# ----------------------------------------------------------------------------------------------------------------

def test_loss_falls_on_the_digits(tmp_path):
    assert main(train_argv(tmp_path / "run", steps=50, batch=8)) == 0
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 51))
    losses = np.array([r["loss"] for r in log])
    assert losses[-10:].mean() < 0.85 * losses[:10].mean()
    # Both passes train: the masked pass's loss falls too.
    masked = np.array([r["loss_masked"] for r in log])
    assert masked[-10:].mean() < masked[:10].mean()


def test_cli_end_to_end_checkpoints_previews_and_export(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(run, "--ckpt-every", "1", "--keep-checkpoints", "2", "--sample-every", "3",
                           steps=3, batch=4)) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["max_steps"] == 3 and config["model"] == "EDT-T/2" and config["masking"] is None
    assert [r["step"] for r in read_log(run)] == [1, 2, 3]
    assert {"loss", "loss_full", "loss_masked", "lr", "samples_seen", "time", "it_per_s"} <= set(read_log(run)[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002.pt", "step_0000003.pt"]
    checkpoint = safe_torch_load(run / "checkpoints" / "step_0000003.pt")  # weights_only=True
    assert set(CHECKPOINT_KEYS) <= set(checkpoint) and checkpoint["step"] == 3
    assert checkpoint["args"].max_steps == 3 and checkpoint["data"]["samples_seen"] == 12
    with Image.open(run / "samples" / "step_0000003.png") as preview:
        assert preview.size == (10 * 32, 32)

    out = tmp_path / "pipeline"
    assert main(["export", str(run), str(out)]) == 0
    model = load_checkpoint(out)
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["ema"][name]), name
    assert EDTPipeline.from_pretrained(out).id2label[7] == "7"
    capsys.readouterr()
    one_line_error(capsys, ["export", str(run), str(out), "--step", "1"], "available steps: 2, 3")


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(run, "--ckpt-every", "2", steps=4)) == 0
    reference = read_log(run)
    newest = run / "checkpoints" / "step_0000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a partial file
    capsys.readouterr()
    assert main(train_argv(run, "--ckpt-every", "2", "--resume", steps=4)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "step_0000004.pt" in line]
    assert len(warnings) == 1 and "skipping" in warnings[0]
    assert [r["step"] for r in read_log(run)] == [1, 2, 3, 4]
    assert [r["loss"] for r in read_log(run)] == [r["loss"] for r in reference]  # steps 3-4 redone identically
    assert safe_torch_load(newest)["step"] == 4  # rewritten whole


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    def launch(run_dir, *extra):
        argv = train_argv(run_dir, "--ckpt-every", "4", *extra, steps=12)
        return subprocess.Popen([sys.executable, "-c", SUBPROCESS_PREFIX, *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)

    reference = launch(tmp_path / "reference")  # runs alongside the killed one
    killed = launch(tmp_path / "killed")
    first_checkpoint = tmp_path / "killed" / "checkpoints" / "step_0000004.pt"
    deadline = time.time() + 120
    while not first_checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, killed.stderr.read()
    killed.stderr.close()
    assert first_checkpoint.exists()
    steps_before = [r["step"] for r in read_log(tmp_path / "killed")]
    assert steps_before and max(steps_before) < 12  # the kill hit a run in progress

    resumed = launch(tmp_path / "killed", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    expected, got = read_log(tmp_path / "reference"), read_log(tmp_path / "killed")
    assert [r["step"] for r in got] == list(range(1, 13))  # no step lost or repeated
    for key in ("loss", "loss_full", "loss_masked", "lr", "samples_seen"):
        assert [r[key] for r in got] == [r[key] for r in expected], key


def test_features_pipeline_extract_train_export(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae_dir = tmp_path / "vae"
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1).save_pretrained(vae_dir)
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(2):
            image = Image.fromarray(rng.integers(0, 255, (70, 80, 3), dtype=np.uint8))
            image.save(tmp_path / "images" / name / f"{i}.png")
    features = tmp_path / "features"
    assert main(["extract-features", "--data", f"images:{tmp_path / 'images'}", "--image-size", "64",
                 "--vae", str(vae_dir), "--out", str(features)]) == 0
    latent_edt = {**TINY_EDT, "input_size": 8, "in_channels": 4, "num_classes": 2}
    monkeypatch.setitem(registry.MODEL_CONFIGS, "EDT-T/2", (EDT, latent_edt))
    run = tmp_path / "run"
    assert main(["train", "--model", "EDT-T/2", "--data", f"features:{features}", "--vae", str(vae_dir),
                 "--results-dir", str(run), "--max-steps", "2", "--batch-size", "2", "--sample-every", "2",
                 "--log-every", "1"]) == 0
    with Image.open(run / "samples" / "step_0000002.png") as preview:
        assert preview.size == (2 * 64, 64)  # decoded by the VAE
    assert main(["export", str(run), str(tmp_path / "pipeline")]) == 0
    pipe = EDTPipeline.from_pretrained(tmp_path / "pipeline")
    assert pipe.vae is not None and pipe.id2label == {0: "cat", 1: "dog"}


# ----------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2
# ----------------------------------------------------------------------------------------------------------------

def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    many = tmp_path / "many"
    for i in range(11):
        (many / f"class{i}").mkdir(parents=True)
    cases = [
        (train_argv(tmp_path / "a", "--model", "EDT-Q/2"), "unknown model"),
        (train_argv(tmp_path / "a", "--data", "cifar"), "unknown data"),
        (train_argv(tmp_path / "a", "--data", f"images:{empty}"), "no class sub-folders"),
        (train_argv(tmp_path / "a", "--data", f"images:{many}"), "11 class folders"),
        (train_argv(tmp_path / "a", batch=100_000), "larger than the data"),
        (train_argv(tmp_path / "a", steps=0), "--max-steps must be at least 1"),
        (train_argv(tmp_path / "a", "--resume"), "has no checkpoint"),
        (train_argv(tmp_path / "a", "--model", "DiT-T/2", "--masking", "edt"), "needs an EDT model"),
        (train_argv(tmp_path / "a", "--model", "EDT-S/2"), "expects (4, 32, 32)"),
        (train_argv(tmp_path / "a", "--batch-size", "6", "--grad-accum", "4"), "split evenly"),
        (["export", str(tmp_path / "a"), str(tmp_path / "out")], "has no checkpoint"),
        (["extract-features", "--data", "mnist", "--vae", str(tmp_path), "--out", str(tmp_path / "f")],
         "expected images:DIR"),
    ]
    for argv, match in cases:
        one_line_error(capsys, argv, match)
    assert not (tmp_path / "a").exists()  # nothing written for a refused run

    run = tmp_path / "run"
    assert main(train_argv(run, steps=1)) == 0
    capsys.readouterr()
    one_line_error(capsys, train_argv(run, steps=2), "already holds checkpoints")


def test_bf16_mixed_precision_runs_under_autocast_where_native_and_is_refused_elsewhere(tmp_path, capsys,
                                                                                        monkeypatch):
    import edt_lab.train as train_module

    monkeypatch.setattr(train_module, "native_bf16", lambda device: False)
    one_line_error(capsys, train_argv(tmp_path / "refused", "--mixed-precision", "bf16"), "needs native bf16")
    assert not (tmp_path / "refused").exists()

    monkeypatch.setattr(train_module, "native_bf16", lambda device: True)  # emulated where the CPU lacks it
    matmul_dtypes = []

    def recording_model(name):
        model = registry.create_model(name)
        model.blocks[0].mlp.fc1.register_forward_hook(lambda module, args, out: matmul_dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(train_module, "create_model", recording_model)
    # accelerate keeps one precision per process: start this run, and the tests after it, afresh
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        assert main(train_argv(tmp_path / "run", "--mixed-precision", "bf16", steps=2)) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert matmul_dtypes and set(matmul_dtypes) == {torch.bfloat16}  # both passes of both steps
    assert all(np.isfinite(row["loss"]) for row in read_log(tmp_path / "run"))
