"""Choose a digits pipeline's recommended sampling settings by a stated rule, from a sweep.

Every setting draws the same 200 images (20 per class, seed 0) and is judged by `edt_lab.metrics.digit_metrics`.
The rule: among settings with accuracy >= 0.99, every class >= 0.95, and samples no closer to their nearest
training digits than the held-out digits are (mean nearest-training distance >= 0.98 x the held-out digits'; 2 % is
about one standard error of a 200-image mean), take the one whose worst appearance ratio (ae_fid, and the
Wasserstein distances of mean ink, stroke width and grey share, each divided by its real-vs-real value) is
smallest. Isolated pixels are reported beside it (real digits have almost none).

    python benchmarks/settings_sweep.py assets/edt_t2_digits --json docs/bench/settings-sweep-seed0.json

Each row records its sampling time (`sampling_s`), so a sweep over samplers is also their speed trade-off.
`--seed 0 1` draws every setting on each seed; `--precisions fp32 bf16` draws it in each precision from the same
noise, and the JSON's `differences` holds, per setting, the paired bootstrap interval of each later precision
minus the first on every seed, and of the second seed minus the first in the first precision: the yardstick for
whether a precision's change is within the noise.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from edt_lab.accel import enable_fast_paths
from edt_lab.amm import apply_amm
from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from edt_lab.generation import generate
from edt_lab.guidance import Guidance
from edt_lab.metrics import bootstrap_digit_measures, digit_metrics, judge_digits
from edt_lab.names import PRECISIONS
from edt_lab.pipeline import EDTPipeline, make_scheduler
from edt_lab.precision import resolve_precision
from edt_lab.settings import parse_amm_flag
from options import amm_setting, at_least, check_amm_blocks, positive, sampler_steps

APPEARANCE = ("ae_fid", "mean_ink_w1", "stroke_width_w1", "grey_share_w1")
MIN_ACCURACY, MIN_CLASS_ACCURACY = 0.99, 0.95
MIN_COPY_RATIO = 0.98  # nearest-training distance over the held-out digits'; 1 = as far from the training set
# A row's setting, in recommended.json's names.
SETTING = ("sampler", "num_inference_steps", "guidance_scale", "guidance_interval", "amm_blocks", "amm_scale")


def appearance_ratio(metrics) -> float:
    """The worst of the appearance measures, each divided by its real-vs-real value (1 = as real as real)."""
    return max(metrics[m] / metrics[f"{m}_real_floor"] for m in APPEARANCE)


def passes_rule(metrics) -> bool:
    """The rule's conditions: accuracy over all and in every class (accuracies are float32: 19/20 is 0.9499999),
    and no nearer the training digits than new digits are."""
    return (metrics["accuracy"] >= MIN_ACCURACY - 1e-6
            and min(metrics["per_class_accuracy"]) >= MIN_CLASS_ACCURACY - 1e-6
            and metrics["nearest_train_l2"] >= MIN_COPY_RATIO * metrics["nearest_train_l2_held_out"])


def choose(rows):
    """The row the rule picks, or None when no setting passes."""
    passing = [r for r in rows if r["passes_rule"]]
    return min(passing, key=lambda r: (r["appearance_ratio"], r["num_inference_steps"])) if passing else None


def parse_interval(text: str):
    """"all" -> None (every step guided); "LOW:HIGH" -> [LOW, HIGH], 0 <= LOW <= HIGH <= 999 (the released
    schedule's timesteps)."""
    if text == "all":
        return None
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH timesteps such as 300:999, or all; got {text!r}") from None
    if not 0 <= low <= high <= 999:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH timesteps with 0 <= LOW <= HIGH <= 999; got {text!r}")
    return [low, high]


def settings_of(args):
    """Every setting the options ask for, in recommended.json's names (no interval without guidance, no scale
    with the AMM off)."""
    for sampler, steps in args.samplers:
        for guidance in args.guidance:
            for interval in args.intervals if guidance > 1 else [None]:
                for amm in args.amm:
                    blocks = parse_amm_flag(amm)
                    for amm_scale in [None] if blocks == [] else args.amm_scales:
                        yield {"sampler": sampler, "num_inference_steps": steps, "guidance_scale": guidance,
                               "guidance_interval": interval, "amm_blocks": blocks, "amm_scale": amm_scale}


def draw(pipe, setting, labels, seed, precision, batch_size):
    """uint8 images of `setting` on `seed` in `precision`, and the seconds they took."""
    pipe.scheduler = make_scheduler(setting["sampler"])
    apply_amm(pipe.transformer, setting["amm_blocks"], scale=setting["amm_scale"],
              guidance_scale=setting["guidance_scale"])
    start = time.perf_counter()
    images = generate(pipe, labels, list(range(len(labels))), seed=seed, batch_size=batch_size,
                      guidance=Guidance(setting["guidance_scale"], setting["guidance_interval"]),
                      num_inference_steps=setting["num_inference_steps"], precision=precision)
    return images, time.perf_counter() - start


def paired_differences(judged, seeds, precisions, resamples) -> dict:
    """name -> measure -> paired bootstrap interval: each later precision minus the first on every seed, and the
    second seed minus the first in the first precision (different noise: the yardstick)."""
    first = precisions[0]
    paired = {f"{other} - {first}, seed {seed}": bootstrap_digit_measures(judged[seed, other], judged[seed, first],
                                                                          resamples)
              for seed in seeds for other in precisions[1:]}
    if len(seeds) >= 2:
        paired[f"{first}, seed {seeds[1]} - seed {seeds[0]}"] = bootstrap_digit_measures(
            judged[seeds[1], first], judged[seeds[0], first], resamples)
    return paired


def print_row(row) -> None:
    interval = row["guidance_interval"]
    guided = "all" if interval is None else f"{interval[0]}:{interval[1]}"
    blocks = row["amm_blocks"]
    amm = "off" if blocks == [] else blocks if isinstance(blocks, str) else ",".join(map(str, blocks))
    amm = amm if row["amm_scale"] is None else f"{amm}@{row['amm_scale']:g}"
    print(f"{row['sampler']:>13}{row['num_inference_steps']:>6}{row['guidance_scale']:>5}{guided:>10}{amm:>9}"
          f"{row['seed']:>5}{row['precision']:>6}{row['accuracy']:>7.3f}{min(row['per_class_accuracy']):>6.2f}"
          f"{row['fid']:>7.1f}{row['ae_fid']:>8.1f}{row['mean_ink']:>7.3f}{row['stroke_width']:>7.2f}"
          f"{row['grey_share']:>7.3f}{row['isolated_pixels']:>6.2f}{row['appearance_ratio']:>7.2f}"
          f"{row['sampling_s']:>8.1f}  {'pass' if row['passes_rule'] else '-'}", flush=True)


def parse_args(argv):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", help="a digits pipeline folder (e.g. assets/edt_t2_digits)")
    parser.add_argument("--guidance", type=at_least(1.0, float), nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--samplers", nargs="+", type=sampler_steps, default=[("dpm", 25), ("ddim", 50), ("ddpm", 250)],
                        help="sampler:steps pairs (default: dpm:25 ddim:50 ddpm:250)")
    parser.add_argument("--amm", nargs="+", type=amm_setting, default=["off", "preset"],
                        help="off, preset (the released arrangement for the guidance) or block indices such as 9,10")
    parser.add_argument("--amm-scales", nargs="+", type=positive, default=[None],
                        help="AMM scale k for the blocks of --amm (default: 0.5, or the preset's)")
    parser.add_argument("--intervals", nargs="+", default=[None], type=parse_interval,
                        help="guided timesteps LOW:HIGH, or all")
    parser.add_argument("--include", nargs="+", default=[], help="JSON files of earlier sweeps to choose among too")
    parser.add_argument("--per-class", type=at_least(1), default=20)
    parser.add_argument("--seed", type=at_least(0), nargs="+", default=[0], help="one or more seeds")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=["fp32"],
                        help="draw every setting in each (same noise); later ones are compared with the first")
    parser.add_argument("--resamples", type=at_least(2), default=300, help="bootstrap resamples for --precisions")
    parser.add_argument("--batch-size", type=at_least(1), default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if len(set(args.precisions)) < len(args.precisions) or len(set(args.seed)) < len(args.seed):
        parser.error("--precisions and --seed take each value once")
    if args.json:
        output_file(args.json, "--json")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    included = []  # read first, so a bad file fails before the sampling
    for path in args.include:
        try:
            earlier = json.loads(Path(path).read_text())["rows"]
            included += [{**{key: row[key] for key in SETTING}, **row, "passes_rule": passes_rule(row)}
                         for row in earlier]
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--include {path}: not a sweep JSON written by this script ({error})")
    pipe = EDTPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    check_amm_blocks(parser, args.amm, pipe.transformer.num_blocks)  # before the sampling
    try:
        for precision in args.precisions:
            resolve_precision(precision, pipe.device)
    except ValueError as error:
        parser.error(f"--precisions: {error}")
    enable_fast_paths(pipe.transformer, pipe.device)  # as the commands and the explorer run it
    labels = np.repeat(np.arange(pipe.transformer.config.num_classes), args.per_class)
    rows, differences = [], []
    print(f"{'sampler':>13}{'steps':>6}{'cfg':>5}{'guided t':>10}{'amm@k':>9}{'seed':>5}{'prec':>6}{'acc':>7}"
          f"{'worst':>6}{'fid':>7}{'ae_fid':>8}{'ink':>7}{'width':>7}{'grey':>7}{'isol':>6}{'ratio':>7}{'s':>8}  rule")
    for setting in settings_of(args):
        judged = {}
        for seed in args.seed:
            for precision in args.precisions:
                images, seconds = draw(pipe, setting, labels, seed, precision, args.batch_size)
                metrics = {k: v for k, v in digit_metrics(images, labels).items() if k != "notes"}
                row = {**setting, "seed": seed, "precision": precision, "sampling_s": seconds, **metrics,
                       "appearance_ratio": appearance_ratio(metrics), "passes_rule": passes_rule(metrics)}
                rows.append(row)
                print_row(row)
                if len(args.precisions) > 1:
                    judged[seed, precision] = judge_digits(images, labels)
        if judged:
            differences.append({**setting, **paired_differences(judged, args.seed, args.precisions, args.resamples)})
    rows += included
    chosen = choose(rows)
    print("chosen:", None if chosen is None else {k: chosen[k] for k in SETTING})
    if args.json:
        report = {"rows": rows, "chosen": chosen, **({"differences": differences} if differences else {})}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return rows, chosen


if __name__ == "__main__":
    sys.exit(run_script(main))
