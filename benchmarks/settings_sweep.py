"""Choose a digits pipeline's recommended sampling settings by a stated rule, from a sweep.

Every setting draws the same 200 images (20 per class, seed 0) and is judged by `edt_lab.metrics.digit_metrics`.
The rule: among settings with accuracy >= 0.99, every class >= 0.95, and samples no closer to their nearest
training digits than the held-out digits are (mean nearest-training distance >= 0.98 x the held-out digits'; 2 % is
about one standard error of a 200-image mean), take the one whose worst appearance ratio (ae_fid, and the
Wasserstein distances of mean ink, stroke width and grey share, each divided by its real-vs-real value) is
smallest. Isolated pixels are reported beside it (real digits have almost none).

    python benchmarks/settings_sweep.py assets/edt_t2_digits --json docs/bench/settings_sweep.json
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edt_lab.cli import OneLineParser, output_file, run_script
from edt_lab.metrics import digit_metrics
from edt_lab.pipeline import EDTPipeline, make_scheduler
from edt_lab.sample import generate, parse_amm
from options import amm_setting, at_least, check_amm_blocks, positive, sampler_steps

APPEARANCE = ("ae_fid", "mean_ink_w1", "stroke_width_w1", "grey_share_w1")
MIN_ACCURACY, MIN_CLASS_ACCURACY = 0.99, 0.95
MIN_COPY_RATIO = 0.98  # nearest-training distance over the held-out digits'; 1 = as far from the training set
SETTING = ("sampler", "steps", "cfg", "cfg_interval", "amm", "amm_scale")  # a row's setting: recommended.json's keys


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
    return min(passing, key=lambda r: (r["appearance_ratio"], r["steps"])) if passing else None


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


def main(argv=None, prepare_pipeline=None):
    """prepare_pipeline(pipe): called once on the loaded pipeline, e.g. to change how guidance combines the
    predictions (`benchmarks/guidance_variants.py`)."""
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
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--batch-size", type=at_least(1), default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")

    included = []  # read first, so a bad file fails before the sampling
    for path in args.include:
        try:
            earlier = json.loads(Path(path).read_text())["rows"]
            included += [{"cfg_interval": None, "amm_scale": None, **row, "passes_rule": passes_rule(row)}
                         for row in earlier]
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--include {path}: not a sweep JSON written by this script ({error})")
    pipe = EDTPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    check_amm_blocks(parser, args.amm, pipe.transformer.num_blocks)  # before the sampling
    if prepare_pipeline is not None:
        prepare_pipeline(pipe)
    labels = np.repeat(np.arange(pipe.transformer.config.num_classes), args.per_class)
    indices = list(range(len(labels)))
    rows = []
    print(f"{'sampler':>8}{'steps':>6}{'cfg':>5}{'guided t':>10}{'amm@k':>9}{'acc':>7}{'worst':>6}{'fid':>7}"
          f"{'ae_fid':>8}{'ink':>7}{'width':>7}{'grey':>7}{'isol':>6}{'ratio':>7}  rule")
    for sampler, steps in args.samplers:
        pipe.scheduler = make_scheduler(sampler)
        for guidance in args.guidance:
            for interval in args.intervals if guidance > 1 else [None]:  # nothing to limit without guidance
                for amm, amm_scale in [(amm, scale) for amm in args.amm
                                       for scale in ([None] if amm == "off" else args.amm_scales)]:  # off: no scale
                    images = generate(pipe, labels, indices, seed=args.seed, batch_size=args.batch_size,
                                      guidance_scale=guidance, num_inference_steps=steps,
                                      amm_blocks=parse_amm(amm), amm_scale=amm_scale, guidance_interval=interval)
                    metrics = digit_metrics(images, labels)
                    row = {"sampler": sampler, "steps": steps, "cfg": guidance, "cfg_interval": interval,
                           "amm": amm, "amm_scale": amm_scale, **{k: v for k, v in metrics.items() if k != "notes"},
                           "appearance_ratio": appearance_ratio(metrics), "passes_rule": passes_rule(metrics)}
                    rows.append(row)
                    guided = "all" if interval is None else f"{interval[0]}:{interval[1]}"
                    amm_label = amm if amm_scale is None else f"{amm}@{amm_scale:g}"
                    print(f"{sampler:>8}{steps:>6}{guidance:>5}{guided:>10}{amm_label:>9}{row['accuracy']:>7.3f}"
                          f"{min(row['per_class_accuracy']):>6.2f}{row['fid']:>7.1f}{row['ae_fid']:>8.1f}"
                          f"{row['mean_ink']:>7.3f}{row['stroke_width']:>7.2f}{row['grey_share']:>7.3f}"
                          f"{row['isolated_pixels']:>6.2f}{row['appearance_ratio']:>7.2f}  "
                          f"{'pass' if row['passes_rule'] else '-'}", flush=True)
    rows += included
    real = rows[0]
    print(f"real digits: accuracy {real['accuracy_real']:.3f} (worst class "
          f"{min(real['per_class_accuracy_real']):.2f}), ink {real['mean_ink_real']:.3f}, width "
          f"{real['stroke_width_real']:.2f}, grey {real['grey_share_real']:.3f}, isolated "
          f"{real['isolated_pixels_real']:.2f}; real-vs-real: fid {real['fid_real_floor']:.1f}, ae_fid "
          f"{real['ae_fid_real_floor']:.1f}")
    chosen = choose(rows)
    print("chosen:", None if chosen is None else {k: chosen[k] for k in SETTING})
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=2) + "\n")
    return rows, chosen


if __name__ == "__main__":
    sys.exit(run_script(main))
