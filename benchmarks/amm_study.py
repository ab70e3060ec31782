"""The AMM study on the digits model: which blocks, which radius and scale, with and without guidance.

    python benchmarks/amm_study.py [--pipeline DIR] [--per-class 20] [--sampler dpm] [--steps 25]
                                   [--guidance 1 3] [--cfg-interval LOW HIGH] [--parts arrangements radius scale]
                                   [--vary-blocks 10] [--json FILE]

Every configuration draws the same images (same classes, same per-image seeds), so differences come from the
AMM alone. Each row: the digit classifier's accuracy, its worst class, the feature-space FID (the real-vs-real
floor is printed once), the appearance measures (autoencoder FID, Wasserstein distances of mean ink, stroke width
and grey share to real digits), the mean |difference| to the AMM-off images at the same guidance and, for accuracy
and the appearance measures, the paired bootstrap interval of the difference to AMM off (`--resamples` resamples of the
images within each class): an interval that excludes 0 resolves the difference. The radius and scale parts vary
the AMM of the released preset for each guidance, or of `--vary-blocks` (e.g. the block a model's recommended
settings name). `--cfg-interval` guides only the steps with t in LOW..HIGH, as a model's recommended settings may
(the pipeline's `guidance_interval`).
"""

import json
import sys

import numpy as np

from edt_lab.amm import AMM_PRESETS, apply_amm, default_radius, preset_for
from edt_lab.classifier import load_digit_classifier
from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from edt_lab.metrics import bootstrap_digit_measures, digit_metrics, judge_digits
from edt_lab.guidance import Guidance
from edt_lab.pipeline import DEFAULT_MODEL_DIR, EDTPipeline, make_scheduler
from edt_lab.realism import load_digit_autoencoder
from edt_lab.generation import generate
from edt_lab.settings import SAMPLERS
from options import at_least

# The appearance measures of `digit_metrics` that each row records, with their real-vs-real floors.
APPEARANCE_MEASURES = ("ae_fid", "ae_fid_real_floor", "mean_ink", "mean_ink_w1", "mean_ink_w1_real_floor",
                       "stroke_width", "stroke_width_w1", "stroke_width_w1_real_floor", "grey_share_w1",
                       "grey_share_w1_real_floor", "isolated_pixels")


def arrangements(model, guidance: float) -> dict:
    """Name -> AMM blocks: off, the released preset, each up-sampling block alone, all of them, and
    alternating against consecutive choices of three up-sampling blocks."""
    up = [b["block"] for b in model.block_info() if b["phase"] == "up"]
    preset = preset_for(model, guidance)
    choices = {"off": [], f"preset {preset}": list(AMM_PRESETS[preset].blocks)}
    choices.update({f"block {b}": [b] for b in up})
    choices["all up-sampling"] = up
    choices["alternating " + ",".join(map(str, up[::2]))] = up[::2]
    choices["consecutive " + ",".join(map(str, up[-3:]))] = up[-3:]
    return choices


def with_interval(interval: dict, digits: int, is_off: bool) -> str:
    """"value [low, high]" of the difference to AMM off, or the bare value for AMM off itself."""
    if is_off:
        return f"{interval['value']:.{digits}f}"
    return f"{interval['value']:.{digits}f} [{interval['diff_low']:+.{digits}f},{interval['diff_high']:+.{digits}f}]"


def main(argv=None) -> list[dict]:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--per-class", type=at_least(1), default=20)
    parser.add_argument("--sampler", default="dpm", choices=SAMPLERS)
    parser.add_argument("--steps", type=at_least(1), default=25)
    parser.add_argument("--guidance", type=at_least(1.0, float), nargs="+", default=[1.0, 3.0])
    parser.add_argument("--cfg-interval", type=int, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="guide only the steps whose timestep lies in LOW..HIGH (default: every step)")
    parser.add_argument("--parts", nargs="+", default=["arrangements", "radius", "scale"],
                        choices=["arrangements", "radius", "scale"])
    parser.add_argument("--vary-blocks", type=int, nargs="+", default=None,
                        help="the AMM blocks whose radius and scale the radius and scale parts vary "
                             "(default: the released preset for each guidance)")
    parser.add_argument("--batch-size", type=at_least(1), default=100)
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--resamples", type=at_least(1), default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")
    interval = None if args.cfg_interval is None else tuple(args.cfg_interval)

    pipe = EDTPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(args.sampler)
    model = pipe.transformer
    bad = [b for b in args.vary_blocks or [] if not 0 <= b < model.num_blocks]
    if bad:
        parser.error(f"--vary-blocks {bad[0]} is out of range: this model has blocks 0..{model.num_blocks - 1}")
    last_timestep = pipe.scheduler.config.num_train_timesteps - 1
    if interval is not None and not 0 <= interval[0] <= interval[1] <= last_timestep:
        parser.error(f"--cfg-interval {interval[0]} {interval[1]}: expected 0 <= LOW <= HIGH <= {last_timestep}")
    labels = np.repeat(np.arange(model.config.num_classes), args.per_class)
    indices = list(range(len(labels)))
    grid = model.block_info()[-1]["grid"]
    # The judges are loaded once and serve every row.
    judges = dict(classifier=load_digit_classifier(), autoencoder=load_digit_autoencoder())

    rows = []
    guided = "" if interval is None else f", guided at t {interval[0]}-{interval[1]} only"
    print(f"{len(labels)} images, {args.sampler}-{args.steps}{guided}; FID in the digit classifier's feature space; "
          f"[95 % interval of the difference to AMM off]")
    print(f"{'guidance':>8}  {'configuration':<28}{'accuracy':>22}{'ae_fid':>22}{'ink w1':>26}{'width w1':>24}"
          f"{'FID':>7}{'|diff|':>8}")
    for guidance in args.guidance:
        if args.vary_blocks is None:
            varied, varied_name = list(AMM_PRESETS[preset_for(model, guidance)].blocks), "preset"
        else:
            varied = args.vary_blocks
            varied_name = ("block " if len(varied) == 1 else "blocks ") + ",".join(map(str, varied))
        configs = []
        if "arrangements" in args.parts:
            configs += [(name, dict(amm_blocks=blocks)) for name, blocks in arrangements(model, guidance).items()]
        if "radius" in args.parts:
            configs += [(f"{varied_name}, R = {r:.2f}", dict(amm_blocks=varied, amm_radius=r))
                        for r in (4.0, 8.0, default_radius(grid))]
        if "scale" in args.parts:
            configs += [(f"{varied_name}, k = {k}", dict(amm_blocks=varied, amm_scale=k)) for k in (0.3, 0.4, 0.6, 0.8)]
        off = off_judgement = None
        for name, amm in [("off", dict(amm_blocks=[]))] + [c for c in configs if c[0] != "off"]:
            apply_amm(model, amm["amm_blocks"], amm.get("amm_radius"), amm.get("amm_scale"), guidance)
            images = generate(pipe, labels, indices, seed=args.seed, batch_size=args.batch_size,
                              guidance=Guidance(guidance, interval), num_inference_steps=args.steps)
            judgement = judge_digits(images, labels, **judges)
            if off is None:
                off, off_judgement = images, judgement
            metrics = digit_metrics(images, labels, **judges)
            intervals = bootstrap_digit_measures(judgement, off_judgement, resamples=args.resamples, seed=args.seed)
            row = {"guidance": guidance, "guidance_interval": interval, "configuration": name, **amm,
                   "accuracy": metrics["accuracy"], "worst_class_accuracy": min(metrics["per_class_accuracy"]),
                   "fid": metrics["fid"], "fid_real_floor": metrics["fid_real_floor"],
                   **{m: metrics[m] for m in APPEARANCE_MEASURES},
                   "bootstrap": intervals,
                   "mean_abs_diff_to_off": float(np.abs(images.astype(np.float32) - off.astype(np.float32)).mean())}
            rows.append(row)
            columns = (("accuracy", 3, 22), ("ae_fid", 1, 22), ("mean_ink_w1", 4, 26), ("stroke_width_w1", 3, 24))
            cells = "".join(f"{with_interval(intervals[m], digits, name == 'off'):>{width}}"
                            for m, digits, width in columns)
            print(f"{guidance:>8}  {name:<28}{cells}{row['fid']:>7.1f}{row['mean_abs_diff_to_off']:>8.2f}", flush=True)
    print(f"real-vs-real FID floor: {rows[0]['fid_real_floor']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    sys.exit(run_script(main))
