"""The trainer: loss goes down, exact resume after kill -9, corrupt checkpoints, export, features, bad input."""

import copy
import json
import os
import shutil
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
from pytorch_optimizer import Adan

from edt_lab.checkpoints import load_checkpoint, safe_torch_load
from edt_lab.classifier import DEFAULT_CLASSIFIER_DIR
from edt_lab.cli import main
from edt_lab.export import export
from edt_lab.models import EDT, registry
from edt_lab.pipeline import EDTPipeline
import edt_lab.commands.train as command
import edt_lab.training.loop as loop
import edt_lab.training.step as trainer
from edt_lab.diffusion import LossSecondMomentSampler
from edt_lab.training.batches import StepBatches, batches, epoch_permutation, next_position
from edt_lab.training.loop import fill_released_defaults
from edt_lab.training.run_folder import CHECKPOINT_KEYS, save_atomic, truncate_log
from edt_lab.training.profile import profile_steps
from edt_lab.training.state import TrainState, lr_factor, make_optimizer, update_ema
from edt_lab.training.step import train_step

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
# The real EDT-T/2 (2 M parameters) in a subprocess, one thread.
REAL_EDT_PREFIX = ("import sys, torch; torch.set_num_threads(1)\nfrom edt_lab.cli import main\n"
                   "sys.exit(main(sys.argv[1:]))\n")


def assert_weights_readable(folder):
    """The .safetensors files in `folder` (at least one) have the mode any new file gets, not safetensors' 0600."""
    umask = os.umask(0)
    os.umask(umask)
    weights = list(Path(folder).rglob("*.safetensors"))
    assert weights and all(path.stat().st_mode & 0o777 == 0o666 & ~umask for path in weights), weights


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
    # The released no-masking schedule: the same line, but the rate moves only every K steps.
    assert lr_factor(49, 1e-3, 5e-5, 100, update_every=25) == lr_factor(25, 1e-3, 5e-5, 100)
    assert lr_factor(50, 1e-3, 5e-5, 100, update_every=25) == lr_factor(50, 1e-3, 5e-5, 100)
    assert lr_factor(24, 1e-3, 5e-5, 100, update_every=25) == 1.0


def test_released_defaults_per_model_and_masking():
    parser = __import__("argparse").ArgumentParser()
    command.add_arguments(parser)

    def filled(*argv):
        args = parser.parse_args(["--results-dir", "r", "--max-steps", "1", *argv])
        return fill_released_defaults(args, registry.create_model(args.model) if args.model != "EDT-XL/2" else EDT())

    edt = filled()
    assert (edt.masking, edt.lr, edt.lr_update_every) == ("edt", 1e-3, 1)
    assert filled("--model", "EDT-XL/2").lr == 5e-4  # as the released launch script
    dit = filled("--model", "DiT-T/2")
    assert (dit.masking, dit.lr_update_every) == ("none", 5000)  # the no-masking script's schedule
    assert filled("--masking", "none").lr_update_every == 5000
    explicit = filled("--model", "EDT-XL/2", "--lr", "2e-4", "--lr-update-every", "7")
    assert (explicit.lr, explicit.lr_update_every) == (2e-4, 7)


def test_ema_update():
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    update_ema(ema, model, 0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight.detach())


def test_adan_with_foreach_updates_equals_its_per_parameter_loop():
    # The trainer's Adan (pytorch_optimizer's, foreach=True: a few ops for all parameters) against the same optimiser
    # updating parameter by parameter, over 100 steps.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin = copy.deepcopy(model)
    fused, loop_ = make_optimizer("adan", model.parameters(), 1e-2), Adan(twin.parameters(), lr=1e-2, foreach=False)
    assert fused.param_groups[0]["foreach"] is True
    for step in range(100):
        x = torch.randn(16, 8, generator=torch.Generator().manual_seed(step))
        for net, optimizer in ((model, fused), (twin, loop_)):
            net(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("sizes", [(8, 32), pytest.param((8, 256), marks=pytest.mark.slow)])
def test_a_step_runs_few_ops_outside_the_model_whatever_the_batch(sizes):
    """At most 250 top-level ops outside the model's forward and backward (the noising, masks, loss, timestep
    sampler, Adan and EMA), the same count at every batch size: nothing loops over samples or parameters."""
    outside = []
    for batch in sizes:
        torch.manual_seed(0)
        state = TrainState.create(registry.create_model("EDT-T/2").train(), "cpu", "edt")
        x0, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
        train_step(state, [(x0, y)])  # the optimiser's state is created in the first step
        counts = profile_steps(lambda: train_step(state, [(x0, y)]))
        assert counts["ops_inside"] > 500  # the model's forward and backward are seen, and told apart
        outside.append(counts["ops_outside"])
    assert outside[0] == outside[1] <= 250, outside


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


def test_in_memory_data_is_indexed_on_the_device_in_step_batches_order():
    dataset = torch.utils.data.TensorDataset(torch.randn(50, 1, 4, 4), torch.arange(50))  # as the digits are held
    order = StepBatches(len(dataset), 6, seed=3, epoch=2, position=42, grad_accum=2)
    loaded = batches(dataset, order, "cpu", num_workers=0)
    assert not isinstance(loaded, torch.utils.data.DataLoader)
    reference = iter(torch.utils.data.DataLoader(dataset, batch_sampler=order))  # as the loader gave them
    for _ in range(6):  # across the end of epoch 2
        (x, y), (ref_x, ref_y) = next(loaded), next(reference)
        assert x.shape == (3, 1, 4, 4) and torch.equal(x, ref_x) and torch.equal(y, ref_y)


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

@pytest.mark.slow
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
                           "--log-every", "2", steps=3, batch=4)) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("trained EDT-T/2 from step 0 to 3 in ")
    assert summary.endswith(f"; checkpoints and log.jsonl in {run}")
    config = json.loads((run / "config.json").read_text())
    assert config["max_steps"] == 3 and config["model"] == "EDT-T/2"
    assert (config["masking"], config["lr"], config["lr_update_every"]) == ("edt", 1e-3, 1)  # the filled defaults
    assert [r["step"] for r in read_log(run)] == [2, 3]  # the final step is logged whatever --log-every
    assert f"loss {read_log(run)[-1]['loss']:.4f} at the end" in summary
    assert {"loss", "loss_full", "loss_masked", "lr", "samples_seen", "time", "it_per_s"} <= set(read_log(run)[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002.pt", "step_0000003.pt"]
    checkpoint = safe_torch_load(run / "checkpoints" / "step_0000003.pt")  # weights_only=True
    assert set(CHECKPOINT_KEYS) <= set(checkpoint) and checkpoint["step"] == 3
    assert checkpoint["args"].max_steps == 3 and checkpoint["data"]["samples_seen"] == 12
    with Image.open(run / "samples" / "step_0000003.png") as preview:
        assert preview.size == (10 * 32, 32)

    out = tmp_path / "pipeline"
    assert main(["export", str(run), str(out), "--step", "2"]) == 0
    assert_weights_readable(out)
    capsys.readouterr()
    one_line_error(capsys, ["export", str(run), str(out)], "already holds files: pass --force")
    (out / "README.md").write_text("model card")
    assert main(["export", str(run), str(out), "--force"]) == 0  # the newest (step 3) over step 2
    model = load_checkpoint(out)
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["ema"][name]), name
    assert EDTPipeline.from_pretrained(out).id2label[7] == "7" and (out / "README.md").read_text() == "model card"
    assert main(["export", str(run), str(out), "--force", "--weights", "raw"]) == 0
    raw = load_checkpoint(out).state_dict()
    assert all(torch.equal(raw[name], value) for name, value in checkpoint["model"].items())
    assert not all(torch.equal(raw[name], value) for name, value in checkpoint["ema"].items())  # not the EMA again
    with pytest.raises(ValueError, match="weights must be 'ema' or 'raw', got 'best'"):
        export(run, out, force=True, weights="best")
    capsys.readouterr()
    one_line_error(capsys, ["export", str(run), str(out), "--step", "1", "--force"], "available steps: 2, 3")


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


def test_resume_with_another_recipe_is_refused_and_changes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_argv(run, "--ema-decay", "0.999", steps=2)) == 0
    before = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    capsys.readouterr()
    # Options left at their defaults (batch 256 here, EMA 0.9999) would silently replace the run's.
    one_line_error(capsys, train_argv(run, "--resume", steps=4, batch=8),
                   "--resume: this run was trained with --batch-size 4 --ema-decay 0.999, not --batch-size 8 "
                   "--ema-decay 0.9999: pass the run's options to continue it")
    one_line_error(capsys, train_argv(run, "--ema-decay", "0.999", "--masking", "none", "--resume", steps=4),
                   "this run was trained with --masking edt --lr-update-every 1, not --masking none "
                   "--lr-update-every 5000")
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == before
    # How far it goes and how it reports may change.
    assert main(train_argv(run, "--ema-decay", "0.999", "--log-every", "2", "--resume", steps=4)) == 0
    assert [r["step"] for r in read_log(run)] == [1, 2, 4]


def test_init_weights_starts_model_and_ema_from_given_weights(tmp_path, capsys):
    torch.manual_seed(123)
    start = registry.create_model("EDT-T/2")
    with torch.no_grad():
        for param in start.parameters():
            param.add_(0.01)
    start.save_pretrained(tmp_path / "start")
    run = tmp_path / "run"
    assert main(train_argv(run, "--init-weights", str(tmp_path / "start"), "--ema-decay", "0.999", steps=1)) == 0
    checkpoint = safe_torch_load(run / "checkpoints" / "step_0000001.pt")
    for name, value in start.state_dict().items():  # after one step the EMA is 0.999 of the start weights
        torch.testing.assert_close(checkpoint["ema"][name], value, atol=1e-4, rtol=0)
    capsys.readouterr()
    one_line_error(capsys, train_argv(tmp_path / "b", "--init-weights", str(tmp_path / "start"), "--model",
                                      "DiT-T/2"), "holds a different model")
    one_line_error(capsys, train_argv(run, "--init-weights", str(tmp_path / "start"), "--resume"),
                   "cannot be combined with --resume")


def test_the_masked_pass_trains_the_model(tmp_path, monkeypatch):
    # With the full-pass loss zeroed, training must still move the weights: the masked loss sends gradient.
    # (The control with both losses zeroed leaves them where they started, Adan having no weight decay.)
    real_pass_losses = trainer.pass_losses

    def run_one_step(run_dir, keep_masked):
        def losses(*args, **kwargs):
            full, masked = real_pass_losses(*args, **kwargs)
            return full * 0, masked * (1 if keep_masked else 0)

        monkeypatch.setattr(trainer, "pass_losses", losses)
        # Three steps: adaLN-Zero lets gradient reach the earliest blocks only once the later layers are non-zero.
        assert main(train_argv(run_dir, steps=3)) == 0
        return safe_torch_load(run_dir / "checkpoints" / "step_0000003.pt")["model"]

    torch.manual_seed(0)
    initial = registry.create_model("EDT-T/2").state_dict()
    moved = run_one_step(tmp_path / "masked", keep_masked=True)
    changed = [name for name, value in moved.items() if not torch.equal(value, initial[name])]
    assert any(name.startswith("blocks.0.") for name in changed)  # before the mask, too
    assert any(name.startswith("down_blocks.0.reduction") for name in changed)
    still = run_one_step(tmp_path / "control", keep_masked=False)
    assert [n for n, v in still.items() if not torch.equal(v, initial[n])] == []


@pytest.mark.parametrize("name, masking, sizes", [
    ("EDT-T/2", "edt", {}), ("EDT-T/2", "edt", {"stages_depth": (6, 2, 2, 3, 3)}),  # EDT-XL's pos_replace mask too
    ("EDT-T/2", "input-zero", {}), ("DiT-T/2", "input-zero", {}), ("MDTv2-T/2", "mdt", {})])
def test_full_and_masked_passes_in_one_forward_equal_two_passes(name, masking, sizes):
    """The losses of the full and masked passes, computed in one forward of 2B where the masks keep the token count,
    are those of two separate forwards on the same noise and masks, as released."""
    from edt_lab.diffusion import make_training_scheduler, q_sample, training_losses
    from edt_lab.masking import draw_masks
    from edt_lab.models import randomize_weights

    torch.manual_seed(0)
    # random weights (a new model's adaLN-Zero layers output zeros whatever it is given); no label dropout, so
    # nothing else is random
    model = randomize_weights(registry.create_model(name, class_dropout_prob=0.0, **sizes)).train()
    scheduler, cfg = make_training_scheduler(), model.config
    x0 = torch.randn(3, cfg.in_channels, cfg.input_size, cfg.input_size)
    y, t = torch.tensor([1, 5, 9]), torch.tensor([10, 500, 990])

    def generators():
        return {"noise": torch.Generator().manual_seed(1), "masks": torch.Generator().manual_seed(2)}

    full, masked = trainer.pass_losses(model, model, x0, y, t, scheduler, generators(), masking)
    streams = generators()  # the same draws, in the same order: noise, masks, the masked pass's fresh noise
    noise = torch.randn(x0.shape, generator=streams["noise"])
    masks = draw_masks(masking, model, len(x0), streams["masks"], "cpu")
    masked_noise = torch.randn(x0.shape, generator=streams["noise"])
    expected = [training_losses(model(q_sample(scheduler, x0, t, n), t, y, masks=m).float(), x0,
                                q_sample(scheduler, x0, t, n), t, n, scheduler)["loss"]
                for n, m in ((noise, None), (masked_noise, masks))]
    torch.testing.assert_close(full, expected[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(masked, expected[1], atol=1e-6, rtol=1e-5)
    assert (masked - full).abs().max() > 1e-4  # the masked pass is another pass
    if sizes:
        assert masks.pos_replace is not None


def test_the_timestep_sampler_learns_full_plus_masked_losses(tmp_path, monkeypatch):
    passes, updates = [], []
    real_pass_losses, real_update = trainer.pass_losses, LossSecondMomentSampler.update

    def recording_pass_losses(*args, **kwargs):
        full, masked = real_pass_losses(*args, **kwargs)
        passes.append((full.detach().clone(), masked.detach().clone()))
        return full, masked

    def recording_update(self, t, losses):
        updates.append(losses.detach().clone())
        real_update(self, t, losses)

    monkeypatch.setattr(trainer, "pass_losses", recording_pass_losses)
    monkeypatch.setattr(LossSecondMomentSampler, "update", recording_update)
    assert main(train_argv(tmp_path / "run", steps=2)) == 0
    assert len(passes) == len(updates) == 2
    for (full, masked), seen in zip(passes, updates):
        assert (masked - full).abs().max() > 0
        torch.testing.assert_close(seen, full + masked)


@pytest.mark.slow
def test_compiled_training_gives_the_losses_of_eager_training(tmp_path, monkeypatch):
    # torch.compile of the forward and backward of both passes (EDT's masked pass in the one forward of 2B) on the
    # CPU: the losses of 4 steps within 1e-4 relative of eager's, and the weights after them within 1e-5. Inductor
    # draws the label dropout from the same random numbers as eager only with fallback_random.
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        assert main(train_argv(tmp_path / name, *extra, steps=4, batch=4)) == 0
        assert (torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0) == (name == "compiled")
    eager, compiled = read_log(tmp_path / "eager"), read_log(tmp_path / "compiled")
    for key in ("loss_full", "loss_masked"):
        torch.testing.assert_close(torch.tensor([r[key] for r in compiled]), torch.tensor([r[key] for r in eager]),
                                   rtol=1e-4, atol=0)
    weights = [safe_torch_load(tmp_path / name / "checkpoints" / "step_0000004.pt")["model"]
               for name in ("eager", "compiled")]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=1e-5, msg=name)


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    # The real EDT-T/2 with EDT masking; besides the logged losses, the final weights, EMA weights and the
    # importance sampler's loss history must equal those of a run that was never interrupted.
    def launch(run_dir, *extra):
        argv = train_argv(run_dir, "--ckpt-every", "4", *extra, steps=12)
        return subprocess.Popen([sys.executable, "-c", REAL_EDT_PREFIX, *argv], stdout=subprocess.DEVNULL,
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
    final = [safe_torch_load(tmp_path / run / "checkpoints" / "step_0000012.pt") for run in ("reference", "killed")]
    assert final[0]["config"]["dims"] == [64, 96, 128, 96, 64]  # the real EDT-T/2
    for part in ("model", "ema"):
        for name, value in final[0][part].items():
            assert torch.equal(final[1][part][name], value), (part, name)
    assert not all(torch.equal(final[0]["ema"][n], v) for n, v in final[0]["model"].items())
    sampler = [f["timestep_sampler"] for f in final]
    assert sampler[0]["loss_counts"].sum() == 12 * 4  # every sample of every step recorded
    assert torch.equal(sampler[1]["loss_counts"], sampler[0]["loss_counts"])
    assert torch.equal(sampler[1]["loss_history"], sampler[0]["loss_history"])


def test_features_pipeline_extract_train_export(tmp_path, monkeypatch, capsys):
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

    # Bad input to extract-features: one line, before any encoding, and the features already there stay.
    capsys.readouterr()
    before = {path.name: path.read_bytes() for path in features.iterdir()}
    (tmp_path / "images" / "dog" / "broken.png").write_bytes(b"not a png")
    extract = ["extract-features", "--data", f"images:{tmp_path / 'images'}", "--image-size", "64", "--vae",
               str(vae_dir)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for extra, match in ((["--out", str(features)], f"--out {features} already holds files: pass --force"),
                         (["--out", str(run / "config.json")], "exists and is not a folder"),
                         (["--out", str(tmp_path / "f"), "--seed", "-5"], "--seed must be an integer in 0.."),
                         (["--out", str(tmp_path / "f"), "--device", "cuda"], "--device cuda: no CUDA device"),
                         (["--out", str(tmp_path / "f")], "broken.png: not a readable image (cannot identify")):
        one_line_error(capsys, [*extract, *extra], match)
    assert {path.name: path.read_bytes() for path in features.iterdir()} == before


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


def test_a_results_dir_that_would_lose_files_is_refused_before_training(tmp_path, capsys):
    model = tmp_path / "model"  # another model's folder: its config.json must not become the run's
    shutil.copytree(DEFAULT_CLASSIFIER_DIR, model)
    before = {path.name: path.read_bytes() for path in model.iterdir()}
    afile = tmp_path / "afile.txt"
    afile.write_text("kept")
    cases = [
        (train_argv(model), f"--results-dir {model} already holds files that are not a training run's (README.md, "
         "config.json, diffusion_pytorch_model.safetensors): choose a new or empty folder"),
        (train_argv(afile), f"--results-dir {afile}: exists and is not a folder"),
        (train_argv(afile, "--resume"), f"--results-dir {afile}: exists and is not a folder"),
        (train_argv(tmp_path / "v", "--vae", str(tmp_path)), "has no effect with --data mnist, whose images are "
         "pixels"),
        (train_argv(afile / "run"), f"--results-dir {afile / 'run'}: cannot create the folder {afile}"),
    ]
    for argv, match in cases:
        one_line_error(capsys, argv, match)
    assert {path.name: path.read_bytes() for path in model.iterdir()} == before  # no log or checkpoint either
    assert afile.read_text() == "kept"

    # A run stopped before its first checkpoint holds only what a run writes: it may start afresh, unless
    # something else came in.
    run = tmp_path / "run"
    assert main(train_argv(run, steps=1)) == 0
    shutil.rmtree(run / "checkpoints")
    assert main(train_argv(run, steps=1)) == 0
    shutil.rmtree(run / "checkpoints")
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()
    one_line_error(capsys, train_argv(run, steps=1), "not a training run's (notes.txt)")
    assert not (run / "checkpoints").exists()


def test_bf16_mixed_precision_runs_under_autocast_where_native_and_is_refused_elsewhere(tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: False)
    one_line_error(capsys, train_argv(tmp_path / "refused", "--mixed-precision", "bf16"),
                   "--mixed-precision bf16: precision bf16")
    assert not (tmp_path / "refused").exists()

    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: feature == "bf16")  # emulated where the CPU lacks it
    matmul_dtypes = []

    def recording_model(name):
        model = registry.create_model(name)
        model.blocks[0].mlp.fc1.register_forward_hook(lambda module, args, out: matmul_dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(loop, "create_model", recording_model)
    # accelerate keeps one precision per process: start this run, and the tests after it, afresh
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        assert main(train_argv(tmp_path / "run", "--mixed-precision", "bf16", steps=2)) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert matmul_dtypes and set(matmul_dtypes) == {torch.bfloat16}  # both passes of both steps
    assert all(np.isfinite(row["loss"]) for row in read_log(tmp_path / "run"))
