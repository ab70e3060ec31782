"""Sampler speed and quality on one pipeline folder: DDPM-250, DDIM-50 and DPM-Solver++-25.

    python benchmarks/sampler_speed.py [--pipeline DIR] [--per-class 20] [--batch-size 100] [--device auto]
                                       [--cfg G] [--amm preset|off|7,10] [--json FILE]

DIR defaults to the shipped digits model (assets/edt_t2_digits). Every sampler draws the same images (same
classes, same per-image seeds); guidance and AMM come from the folder's recommended.json unless given. For
each sampler: wall time of the whole run and per image, and the digit-classifier metrics
(edt_lab.metrics.digit_metrics: accuracy on the requested classes, FID in the classifier's feature space and
the FID real digits get against the same reference).
"""

import json
import sys
import time

import numpy as np
import torch

from edt_lab.cli import OneLineParser, output_file, run_script
from edt_lab.metrics import digit_metrics
from edt_lab.pipeline import DEFAULT_MODEL_DIR, EDTPipeline, make_scheduler
from edt_lab.sample import FALLBACK_SETTINGS, generate, parse_amm, read_recommended
from options import amm_setting, at_least, check_amm_blocks, check_device
from timing import synchronize

SAMPLERS = (("ddpm", 250), ("ddim", 50), ("dpm", 25))


def main(argv=None) -> list[dict]:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default=str(DEFAULT_MODEL_DIR), help="a pipeline folder (model_index.json)")
    parser.add_argument("--per-class", type=at_least(1), default=20)
    parser.add_argument("--batch-size", type=at_least(1), default=100)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--cfg", type=at_least(1.0, float), default=None)
    parser.add_argument("--amm", type=amm_setting, default=None, help="'preset', 'off' or block indices such as 7,10")
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    if args.json:
        output_file(args.json, "--json")

    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    pipe = EDTPipeline.from_pretrained(args.pipeline, device)
    pipe.set_progress_bar_config(disable=True)
    settings = {**FALLBACK_SETTINGS, **read_recommended(args.pipeline)}
    cfg = settings["cfg"] if args.cfg is None else args.cfg
    if args.amm is not None:
        check_amm_blocks(parser, [args.amm], pipe.transformer.num_blocks)
    amm = parse_amm(settings["amm"] if args.amm is None else args.amm)
    labels = np.repeat(np.arange(pipe.transformer.config.num_classes), args.per_class)
    indices = list(range(len(labels)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.pipeline}: {len(labels)} images, batch {args.batch_size}, guidance {cfg}, AMM {amm}, on {name}")

    rows = []
    for sampler, steps in SAMPLERS:
        pipe.scheduler = make_scheduler(sampler)
        synchronize(device)
        start = time.perf_counter()
        images = generate(pipe, labels, indices, args.seed, args.batch_size, num_inference_steps=steps,
                          guidance_scale=cfg, amm_blocks=amm, amm_radius=settings["amm_radius"],
                          amm_scale=settings["amm_scale"])
        synchronize(device)
        seconds = time.perf_counter() - start
        metrics = digit_metrics(images, labels, seed=args.seed)
        rows.append({"sampler": sampler, "steps": steps, "seconds": seconds, "seconds_per_image": seconds / len(images),
                     "accuracy": metrics["accuracy"], "fid": metrics["fid"],
                     "fid_real_floor": metrics["fid_real_floor"], "device": name})

    print(f"{'sampler':<10}{'steps':>6}{'wall s':>10}{'ms/image':>10}{'accuracy':>10}{'FID*':>9}{'real FID*':>11}")
    for row in rows:
        print(f"{row['sampler']:<10}{row['steps']:>6}{row['seconds']:>10.1f}{1000 * row['seconds_per_image']:>10.1f}"
              f"{row['accuracy']:>10.3f}{row['fid']:>9.2f}{row['fid_real_floor']:>11.2f}")
    print("* FID in the digit classifier's feature space (not Inception); 'real FID' is what real digits score.")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=2)
    return rows


if __name__ == "__main__":
    sys.exit(run_script(main))
