"""The AMM study on the digits model: which blocks, which radius and scale, with and without guidance.

    python benchmarks/amm_study.py [--pipeline DIR] [--per-class 20] [--sampler dpm] [--steps 25]
                                   [--guidance 1 3] [--parts arrangements radius scale] [--json FILE]

Every configuration draws the same images (same classes, same per-image seeds), so differences come from the
AMM alone. Each row: the digit classifier's accuracy, its worst class, the feature-space FID (lower is better;
the real-vs-real floor is printed once) and the mean |difference| to the AMM-off images at the same guidance.
"""

import argparse
import json
import math

import numpy as np

from edt_lab.amm import AMM_PRESETS, default_radius, preset_for
from edt_lab.metrics import digit_metrics
from edt_lab.pipeline import DEFAULT_MODEL_DIR, EDTPipeline, make_scheduler
from edt_lab.sample import generate


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


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--sampler", default="dpm")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    parser.add_argument("--parts", nargs="+", default=["arrangements", "radius", "scale"],
                        choices=["arrangements", "radius", "scale"])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    pipe = EDTPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(args.sampler)
    model = pipe.transformer
    labels = np.repeat(np.arange(model.config.num_classes), args.per_class)
    indices = list(range(len(labels)))
    grid = model.block_info()[-1]["grid"]

    rows = []
    print(f"{len(labels)} images, {args.sampler}-{args.steps}; FID in the digit classifier's feature space")
    print(f"{'guidance':>8}  {'configuration':<34}{'accuracy':>9}{'worst':>7}{'FID':>8}{'|diff|':>8}")
    for guidance in args.guidance:
        preset_blocks = list(AMM_PRESETS[preset_for(model, guidance)].blocks)
        configs = []
        if "arrangements" in args.parts:
            configs += [(name, dict(amm_blocks=blocks)) for name, blocks in arrangements(model, guidance).items()]
        if "radius" in args.parts:
            configs += [(f"preset, R = {r:.2f}", dict(amm_blocks=preset_blocks, amm_radius=r))
                        for r in (4.0, 8.0, 12.0, default_radius(grid), (grid - 1) * math.sqrt(2))]
        if "scale" in args.parts:
            configs += [(f"preset, k = {k}", dict(amm_blocks=preset_blocks, amm_scale=k)) for k in (0.3, 0.4, 0.6, 0.8)]
        off = None
        for name, amm in [("off", dict(amm_blocks=[]))] + [c for c in configs if c[0] != "off"]:
            images = generate(pipe, labels, indices, seed=args.seed, batch_size=args.batch_size,
                              guidance_scale=guidance, num_inference_steps=args.steps, **amm)
            off = images if off is None else off
            metrics = digit_metrics(images, labels)
            row = {"guidance": guidance, "configuration": name, **{k: v for k, v in amm.items()},
                   "accuracy": metrics["accuracy"], "worst_class_accuracy": min(metrics["per_class_accuracy"]),
                   "fid": metrics["fid"], "fid_real_floor": metrics["fid_real_floor"],
                   "mean_abs_diff_to_off": float(np.abs(images.astype(np.float32) - off.astype(np.float32)).mean())}
            rows.append(row)
            print(f"{guidance:>8}  {name:<34}{row['accuracy']:>9.3f}{row['worst_class_accuracy']:>7.2f}"
                  f"{row['fid']:>8.2f}{row['mean_abs_diff_to_off']:>8.4f}", flush=True)
    print(f"real-vs-real FID floor: {rows[0]['fid_real_floor']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
