"""The masking study on the digits: EDT-T/2 with EDT, input-zero and no masking, and DiT-T/2, on one budget.

    python benchmarks/masking_study.py [--steps 800] [--runs-dir runs/masking_study] [--per-class 20]
                                       [--json docs/masking_study.json] [--figure docs/masking_study.png]

Every arm is `edt-lab train` with the recipe the default model started with (batch 32, Adan, lr 1e-3 on its decay,
loss-second-moment timesteps, seed 0) for `--steps` steps; a finished arm is not trained again, a cut one resumes.
Each arm's final raw weights (the 0.999 EMA averages over about 1,000 steps, as long as a short budget, so it would
mostly measure the initial weights) sample `--per-class` digits of every class with the AMM off at DPM-Solver++,
25 steps, guidance 2 (the default model's settings when the study was run), judged by the digit classifier, and
get a sample-free score: the noise-prediction MSE on 1,000 digits at ten fixed timesteps (`denoising_mse`). The
figure shows the full-pass and masked-pass losses; the masked/full loss ratio a quarter of the way in and at the
end tells whether they fall together (the paper: MDT's two losses fight, EDT's fall together). Seconds per step
are the median over log lines, on whatever else the machine was doing.
"""

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from edt_lab.checkpoints import model_from_checkpoint
from edt_lab.cli import main as edt_lab
from edt_lab.data import load_digits
from edt_lab.diffusion import make_training_scheduler
from edt_lab.metrics import digit_metrics
from edt_lab.pipeline import EDTPipeline, make_scheduler
from edt_lab.sample import generate
from edt_lab.train import list_checkpoints, load_latest_checkpoint

# "input-zero" drops MDT's token counts at the input by zeroing (EDT has no side-interpolator for MDT's removal).
ARMS = {"EDT-T/2, EDT masking": ("EDT-T/2", "edt"), "EDT-T/2, input-zero masking": ("EDT-T/2", "input-zero"),
        "EDT-T/2, no masking": ("EDT-T/2", "none"), "DiT-T/2": ("DiT-T/2", "none")}
RECIPE = ["--data", "mnist", "--batch-size", "32", "--ckpt-every", "200", "--log-every", "20", "--sample-every", "0",
          "--seed", "0", "--lr", "1e-3", "--lr-decay-steps", "40000", "--ema-decay", "0.999"]


def train_arm(model: str, masking: str, run_dir: Path, steps: int) -> None:
    """Train (or finish) one arm; raises if the trainer reports an error."""
    resume = ["--resume"] if list_checkpoints(run_dir) else []
    code = edt_lab(["train", "--model", model, "--masking", masking, "--results-dir", str(run_dir),
                    "--max-steps", str(steps), *RECIPE, *resume])
    if code:
        raise SystemExit(f"training {model} --masking {masking} failed (exit {code})")


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def masked_to_full_ratio(log: list[dict], at: float) -> float | None:
    """Masked-pass loss over full-pass loss, averaged over five log lines around fraction `at` of the run (None
    without masking). Both passes see the same digits and timesteps, so the ratio cancels the batch-to-batch
    noise: a flat ratio means the two losses fall together, a rising one that the masked pass falls behind."""
    if log[0]["loss_masked"] is None:
        return None
    centre = min(int(at * len(log)), len(log) - 3)
    lines = log[max(centre - 2, 0):centre + 3]
    return statistics.mean(r["loss_masked"] / r["loss_full"] for r in lines)


def random_digits(num_images: int, generator: torch.Generator):
    """`num_images` bundled digits, chosen by `generator`: images (n, 1, 32, 32) in [-1, 1] and labels (n,)."""
    images, labels = load_digits()
    chosen = torch.randperm(len(images), generator=generator)[:num_images]
    return images[chosen], labels[chosen]


@torch.no_grad()
def noise_prediction_mse(model, images, labels, t: int, noise, batch_size: int = 250) -> float:
    """MSE of the unmasked model's noise prediction for `images` noised with `noise` at timestep t."""
    t_batch = torch.full((len(images),), t)
    x_t = make_training_scheduler().add_noise(images, noise, t_batch)
    eps = torch.cat([model(x, tb, y)[:, :images.shape[1]] for x, tb, y in
                     zip(x_t.split(batch_size), t_batch.split(batch_size), labels.split(batch_size))])
    return ((eps - noise) ** 2).mean().item()


def denoising_mse(model, num_images: int = 1000, timesteps=range(50, 1000, 100), seed: int = 0) -> float:
    """Noise-prediction MSE of the unmasked model on `num_images` digits at fixed timesteps, fixed noise and labels:
    a sample-free measure of fit that still separates the arms when none of them draws digits yet."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = random_digits(num_images, generator)
    return float(np.mean([noise_prediction_mse(model, images, labels, t, torch.randn(images.shape, generator=generator))
                          for t in timesteps]))


def evaluate_arm(run_dir: Path, per_class: int, seed: int) -> dict:
    """Digit metrics of the newest checkpoint's raw weights (DPM-Solver++ 25 steps, guidance 2, AMM off) and the
    denoising MSE."""
    _, checkpoint = load_latest_checkpoint(run_dir)
    model = model_from_checkpoint(checkpoint, "model")
    pipe = EDTPipeline(model, make_scheduler("dpm"), id2label=dict(enumerate(checkpoint["classes"])))
    pipe.set_progress_bar_config(disable=True)
    labels = np.repeat(np.arange(model.config.num_classes), per_class)
    images = generate(pipe, labels, range(len(labels)), seed=seed, batch_size=100, guidance_scale=2.0,
                      num_inference_steps=25, amm_blocks=[])
    metrics = digit_metrics(images, labels)
    return {"step": checkpoint["step"], "denoising_mse": denoising_mse(model), "accuracy": metrics["accuracy"],
            "worst_class_accuracy": min(metrics["per_class_accuracy"]), "fid": metrics["fid"],
            "fid_real_floor": metrics["fid_real_floor"]}


def plot(logs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full_ax, masked_ax, ratio_ax) = plt.subplots(1, 3, figsize=(16, 4))
    for (name, log), colour in zip(logs.items(), ["C0", "C1", "C2", "C3"]):
        steps = [r["step"] for r in log]
        full_ax.plot(steps, [r["loss_full"] for r in log], colour, label=name)
        if log[0]["loss_masked"] is not None:
            masked_ax.plot(steps, [r["loss_full"] for r in log], colour, alpha=0.35)
            masked_ax.plot(steps, [r["loss_masked"] for r in log], colour, linestyle="--", label=f"{name}: masked")
            ratio_ax.plot(steps, [r["loss_masked"] / r["loss_full"] for r in log], colour, label=name)
    full_ax.set(title="full pass", xlabel="step", ylabel="loss (MSE + VLB, per 20-step mean)", yscale="log")
    masked_ax.set(title="masked pass (dashed) against full pass (faint)", xlabel="step", yscale="log")
    ratio_ax.set(title="masked-pass loss / full-pass loss", xlabel="step")
    ratio_ax.legend()
    full_ax.legend()
    masked_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--runs-dir", default="runs/masking_study")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument("--json", default=None)
    parser.add_argument("--figure", default=None)
    args = parser.parse_args(argv)

    rows, logs = [], {}
    for name, (model, masking) in ARMS.items():
        run_dir = Path(args.runs_dir) / f"{model.split('/')[0]}-{masking}"
        train_arm(model, masking, run_dir, args.steps)
        log = read_log(run_dir)
        logs[name] = log
        rows.append({
            "arm": name, "model": model, "masking": masking, "steps": args.steps,
            "final_loss_full": statistics.mean(r["loss_full"] for r in log[-5:]),
            "final_loss_masked": (statistics.mean(r["loss_masked"] for r in log[-5:])
                                  if log[0]["loss_masked"] is not None else None),
            "masked_to_full_ratio_quarter": masked_to_full_ratio(log, 0.25),
            "masked_to_full_ratio_end": masked_to_full_ratio(log, 1.0),
            "seconds_per_step": statistics.median(1 / r["it_per_s"] for r in log[1:] or log),
            **evaluate_arm(run_dir, args.per_class, args.seed),
        })
        row = rows[-1]
        masked = f"{row['final_loss_masked']:.4f}" if row["final_loss_masked"] is not None else "-"
        ratios = (f"{row['masked_to_full_ratio_quarter']:.2f} -> {row['masked_to_full_ratio_end']:.2f}"
                  if row["final_loss_masked"] is not None else "-")
        print(f"{name:<22} full {row['final_loss_full']:.4f}  masked {masked:>6}  masked/full {ratios:>12}  "
              f"{row['seconds_per_step']:.2f} s/step  denoising MSE {row['denoising_mse']:.4f}  "
              f"accuracy {row['accuracy']:.3f}  worst {row['worst_class_accuracy']:.2f}  "
              f"FID {row['fid']:.2f} (floor {row['fid_real_floor']:.2f})",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.figure:
        plot(logs, args.figure)
    return rows


if __name__ == "__main__":
    main()
