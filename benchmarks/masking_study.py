"""The masking study on the digits: EDT-T/2 with EDT, input-zero and no masking, DiT-T/2, and MDTv2-T/2 with MDT's
own masking, on one budget.

    python benchmarks/masking_study.py [--steps 800] [--batch-size 32] [--lr 1e-3] [--arms ARM ...]
                                       [--train-only | --eval-only] [--runs-dir runs/masking_study]
                                       [--per-class 20] [--json docs/bench/masking-study.json] [--figure FILE.png]

Every arm is `edt-lab train` with the released objective (min-SNR weighted hybrid loss, loss-second-moment
timesteps, Adan, lr on a 40,000-step decay, seed 0) for `--steps` steps at `--batch-size`; a finished arm is not
trained again, a cut one resumes. `--train-only` trains (e.g. one arm per process on a GPU) and `--eval-only`
scores arms trained before; a checkpoint slimmed to its weights, config, classes and step is enough to score.
Each arm's final raw weights (the 0.999 EMA averages over about 1,000 steps, as long as a short budget, so it
would mostly measure the initial weights) sample `--per-class` digits of every class with the AMM off at
DPM-Solver++, 25 steps, guidance 2, judged by the digit classifier and the realism measures, and get a
sample-free score: the noise-prediction MSE on 1,000 digits at ten fixed timesteps (`denoising_errors`). Each
later arm is compared with the first (EDT masking) on the same images and digits: paired 95 % bootstrap intervals
of the differences in denoising MSE, accuracy and the appearance measures. The figure shows the full-pass and
masked-pass losses; the masked/full loss ratio a quarter of the way in and at the end tells whether they fall
together (the paper: MDT's two losses fight, EDT's fall together). Seconds per step are the median over log
lines, on whatever else the machine was doing.
"""

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from edt_lab.cli import main as edt_lab
from edt_lab.amm import apply_amm
from edt_lab.data import diffusion_split, load_digits
from edt_lab.diffusion import make_training_scheduler
from edt_lab.metrics import bootstrap_digit_measures, digit_metrics, judge_digits
from edt_lab.pipeline import EDTPipeline, make_scheduler
from edt_lab.realism import load_digit_autoencoder
from edt_lab.generation import generate
from edt_lab.checkpoints import model_from_checkpoint, safe_torch_load
from edt_lab.classifier import load_digit_classifier
from edt_lab.training.run_folder import list_checkpoints
from options import at_least, positive

# "input-zero" drops MDT's token counts at the input by zeroing (EDT has no side-interpolator for MDT's removal).
# MDTv2-T/2 with `mdt` is MDT's real token removal with its side-interpolator.
ARMS = {"EDT-T/2, EDT masking": ("EDT-T/2", "edt"), "EDT-T/2, input-zero masking": ("EDT-T/2", "input-zero"),
        "EDT-T/2, no masking": ("EDT-T/2", "none"), "DiT-T/2": ("DiT-T/2", "none"),
        "MDTv2-T/2, MDT masking": ("MDTv2-T/2", "mdt")}
RECIPE = ["--data", "mnist", "--log-every", "20", "--sample-every", "0", "--seed", "0", "--lr-decay-steps", "40000",
          "--ema-decay", "0.999", "--keep-checkpoints", "1"]


def arm_dir(runs_dir, model: str, masking: str) -> Path:
    return Path(runs_dir) / f"{model.split('/')[0]}-{masking}"


def train_arm(model: str, masking: str, run_dir: Path, steps: int, batch_size: int, lr: float) -> None:
    """Train (or finish) one arm; raises if the trainer reports an error."""
    resume = ["--resume"] if list_checkpoints(run_dir) else []
    code = edt_lab(["train", "--model", model, "--masking", masking, "--results-dir", str(run_dir),
                    "--max-steps", str(steps), "--batch-size", str(batch_size), "--lr", str(lr),
                    "--ckpt-every", str(max(steps // 8, 1)), *RECIPE, *resume])
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
def noise_prediction_errors(model, images, labels, t: int, noise, batch_size: int = 250):
    """Per-digit MSE (N,) of the unmasked model's noise prediction for `images` noised with `noise` at timestep t."""
    t_batch = torch.full((len(images),), t)
    x_t = make_training_scheduler().add_noise(images, noise, t_batch)
    eps = torch.cat([model(x, tb, y)[:, :images.shape[1]] for x, tb, y in
                     zip(x_t.split(batch_size), t_batch.split(batch_size), labels.split(batch_size))])
    return ((eps - noise) ** 2).flatten(1).mean(dim=1)


def denoising_errors(model, num_images: int = 1000, timesteps=range(50, 1000, 100), seed: int = 0) -> np.ndarray:
    """Noise-prediction MSE of the unmasked model per digit (num_images,), averaged over fixed timesteps, with fixed
    noise and labels: a sample-free measure of fit that still separates the arms when none of them draws digits
    yet. Every arm sees the same digits and noise, so arms compare digit by digit."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = random_digits(num_images, generator)
    errors = [noise_prediction_errors(model, images, labels, t, torch.randn(images.shape, generator=generator))
              for t in timesteps]
    return torch.stack(errors).mean(dim=0).numpy()


def paired_interval(values, baseline, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of mean(values) - mean(baseline) over the same items."""
    index = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    low, high = np.percentile(values[index].mean(axis=1) - baseline[index].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def evaluate_arm(run_dir: Path, per_class: int, seed: int) -> tuple[dict, dict, np.ndarray]:
    """Digit metrics of the newest checkpoint's raw weights (DPM-Solver++ 25 steps, guidance 2, AMM off), with
    what their bootstrap needs (`judge_digits`), and the per-digit denoising errors."""
    # Only the weights are read, so a checkpoint slimmed to model, config, classes and step will do.
    checkpoint = safe_torch_load(list_checkpoints(run_dir)[-1])
    model = model_from_checkpoint(checkpoint, "model")
    pipe = EDTPipeline(model, make_scheduler("dpm"), id2label=dict(enumerate(checkpoint["classes"])))
    pipe.set_progress_bar_config(disable=True)
    labels = np.repeat(np.arange(model.config.num_classes), per_class)
    apply_amm(model, [])
    images = generate(pipe, labels, range(len(labels)), seed=seed, batch_size=100, guidance_scale=2.0,
                      num_inference_steps=25)
    judges = dict(classifier=load_digit_classifier(), autoencoder=load_digit_autoencoder())  # one load for both
    metrics = digit_metrics(images, labels, **judges)
    errors = denoising_errors(model)
    row = {"step": checkpoint["step"], "denoising_mse": float(errors.mean()), "accuracy": metrics["accuracy"],
           "worst_class_accuracy": min(metrics["per_class_accuracy"]), "fid": metrics["fid"],
           "fid_real_floor": metrics["fid_real_floor"],
           **{m: metrics[m] for m in ("ae_fid", "ae_fid_real_floor", "stroke_width_w1", "stroke_width_w1_real_floor")}}
    return row, judge_digits(images, labels, **judges), errors


def plot(logs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full_ax, masked_ax, ratio_ax) = plt.subplots(1, 3, figsize=(16, 4))
    for (name, log), colour in zip(logs.items(), ["C0", "C1", "C2", "C3", "C4"]):
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
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=at_least(1), default=800)
    parser.add_argument("--runs-dir", default="runs/masking_study")
    parser.add_argument("--per-class", type=at_least(1), default=20)
    parser.add_argument("--seed", type=at_least(0), default=0, help="the sampling seed")
    parser.add_argument("--batch-size", type=at_least(1), default=32)
    parser.add_argument("--lr", type=positive, default=1e-3)
    parser.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(ARMS))
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--train-only", action="store_true", help="train the arms, score nothing (e.g. on a GPU)")
    stage.add_argument("--eval-only", action="store_true", help="score the arms already trained in --runs-dir")
    parser.add_argument("--json", default=None)
    parser.add_argument("--figure", default=None)
    args = parser.parse_args(argv)
    if Path(args.runs_dir).exists() and not Path(args.runs_dir).is_dir():
        parser.error(f"--runs-dir {args.runs_dir}: is a file, expected a folder")
    for name in args.arms if args.eval_only else ():  # every arm to score, before scoring any
        run_dir = arm_dir(args.runs_dir, *ARMS[name])
        if not (run_dir / "log.jsonl").is_file() or not list_checkpoints(run_dir):
            parser.error(f"--eval-only: {run_dir} holds no trained arm {name!r} (log.jsonl and a checkpoint)")
    num_train = len(diffusion_split(load_digits()[1])[0])
    if not args.eval_only and args.batch_size > num_train:  # else the trainer refuses it after the first arm's start
        parser.error(f"--batch-size {args.batch_size} is larger than the data ({num_train} training digits)")
    for path, option in ((args.json, "--json"), (args.figure, "--figure")):
        if path:
            output_file(path, option)

    rows, logs = [], {}
    baseline = None  # the first arm's judgement and denoising errors: every other arm's differences are to it
    for name in args.arms:
        model, masking = ARMS[name]
        run_dir = arm_dir(args.runs_dir, model, masking)
        if not args.eval_only:
            train_arm(model, masking, run_dir, args.steps, args.batch_size, args.lr)
        if args.train_only:
            continue
        log = read_log(run_dir)
        logs[name] = log
        scores, judgement, errors = evaluate_arm(run_dir, args.per_class, args.seed)
        baseline = baseline or (name, judgement, errors)
        rows.append({
            "arm": name, "model": model, "masking": masking, "batch_size": args.batch_size, "lr": args.lr,
            "final_loss_full": statistics.mean(r["loss_full"] for r in log[-5:]),
            "final_loss_masked": (statistics.mean(r["loss_masked"] for r in log[-5:])
                                  if log[0]["loss_masked"] is not None else None),
            "masked_to_full_ratio_quarter": masked_to_full_ratio(log, 0.25),
            "masked_to_full_ratio_end": masked_to_full_ratio(log, 1.0),
            "seconds_per_step": statistics.median(1 / r["it_per_s"] for r in log[1:] or log),
            **scores,
            "compared_with": baseline[0],
            "denoising_mse_diff_interval": paired_interval(errors, baseline[2], seed=args.seed),
            "bootstrap": bootstrap_digit_measures(judgement, baseline[1], seed=args.seed),
        })
        row = rows[-1]
        masked = f"{row['final_loss_masked']:.4f}" if row["final_loss_masked"] is not None else "-"
        ratios = (f"{row['masked_to_full_ratio_quarter']:.2f} -> {row['masked_to_full_ratio_end']:.2f}"
                  if row["final_loss_masked"] is not None else "-")
        low, high = row["denoising_mse_diff_interval"]
        accuracy = row["bootstrap"]["accuracy"]
        print(f"{name:<28} step {row['step']}  full {row['final_loss_full']:.4f}  masked {masked:>6}  "
              f"masked/full {ratios:>12}  {row['seconds_per_step']:.3f} s/step  "
              f"denoising MSE {row['denoising_mse']:.4f} [{low:+.4f},{high:+.4f}]  "
              f"accuracy {row['accuracy']:.3f} [{accuracy['diff_low']:+.3f},{accuracy['diff_high']:+.3f}]  "
              f"worst {row['worst_class_accuracy']:.2f}  "
              f"ae_fid {row['ae_fid']:.1f} (floor {row['ae_fid_real_floor']:.1f})  "
              f"FID {row['fid']:.2f} (floor {row['fid_real_floor']:.2f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    if args.figure:
        plot(logs, args.figure)
    return rows


if __name__ == "__main__":
    sys.exit(run_script(main))
