"""bf16 against fp32 on the shipped digits model: are bf16's samples as good as fp32's, within the measures' noise?

    python benchmarks/precision_check.py --seeds 0 1 --json docs/bench/precision_check_v2.json

For each seed, the model's 200 images (20 per class) at its recommended settings are drawn twice from the same
noise: in fp32 and in bf16 (autocast; on a CPU each Linear and the MLPs' GELU run fused, see
`edt_lab.models.layers.Linear`). Each set is judged by `digit_metrics`, and bf16 minus fp32 gets a paired bootstrap
interval per measure (`bootstrap_digit_measures`). The yardstick for "within the noise" is what another seed
changes in fp32: the first two seeds' fp32 difference, with its interval.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from app_latency import command_line, machine_record
from edt_lab.classifier import load_digit_classifier
from edt_lab.cli import OneLineParser, output_file, run_script
from edt_lab.metrics import bootstrap_digit_measures, digit_metrics, judge_digits
from edt_lab.pipeline import DEFAULT_MODEL_DIR, load_default, make_scheduler
from edt_lab.realism import load_digit_autoencoder
from edt_lab.sample import FALLBACK_SETTINGS, generate, read_recommended, sampling_kwargs
from options import at_least

PRECISIONS = ("fp32", "bf16")


def main(argv=None) -> dict:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1])
    parser.add_argument("--per-class", type=at_least(2), default=20)
    parser.add_argument("--resamples", type=at_least(1), default=300)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")

    pipe = load_default()
    pipe.set_progress_bar_config(disable=True)
    settings = {**FALLBACK_SETTINGS, **read_recommended(DEFAULT_MODEL_DIR)}
    pipe.scheduler = make_scheduler(settings["sampler"])
    classifier, autoencoder = load_digit_classifier(), load_digit_autoencoder()
    labels = np.repeat(np.arange(pipe.transformer.config.num_classes), args.per_class)

    runs, judged = [], {}
    for seed in args.seeds:
        images = {}
        for precision in PRECISIONS:
            start = time.perf_counter()
            images[precision] = generate(pipe, labels, list(range(len(labels))), seed, batch_size=len(labels),
                                         **sampling_kwargs(settings), precision=precision)
            seconds = time.perf_counter() - start
            metrics = digit_metrics(images[precision], labels, classifier=classifier, autoencoder=autoencoder)
            judged[seed, precision] = judge_digits(images[precision], labels, classifier, autoencoder)
            runs.append({"seed": seed, "precision": precision, "sampling_seconds": seconds,
                         **{k: v for k, v in metrics.items() if k != "notes"}})
            print(f"seed {seed} {precision}: accuracy {metrics['accuracy']:.3f}, ae_fid {metrics['ae_fid']:.1f}, "
                  f"ink W1 {metrics['mean_ink_w1']:.4f}, width W1 {metrics['stroke_width_w1']:.3f}, "
                  f"grey W1 {metrics['grey_share_w1']:.3f}, sampled in {seconds:.1f} s", flush=True)
        difference = np.abs(images["bf16"].astype(int) - images["fp32"].astype(int))
        runs[-1]["mean_abs_uint8_difference_to_fp32"] = float(difference.mean())

    paired = {f"bf16 - fp32, seed {seed}": bootstrap_digit_measures(judged[seed, "bf16"], judged[seed, "fp32"],
                                                                     args.resamples)
              for seed in args.seeds}
    if len(args.seeds) >= 2:  # different noise: an unpaired yardstick, still resampled within class
        first, second = args.seeds[:2]
        paired[f"fp32, seed {second} - seed {first}"] = bootstrap_digit_measures(
            judged[second, "fp32"], judged[first, "fp32"], args.resamples)
    for name, measures in paired.items():
        print(name + ": " + ", ".join(f"{m} {v['diff']:+.4g} [{v['diff_low']:+.4g}, {v['diff_high']:+.4g}]"
                                      for m, v in measures.items()))
    report = {"command": command_line(__file__, argv),
              "settings": settings, "runs": runs, "differences": paired, "threads": torch.get_num_threads(),
              "machine": machine_record()}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(run_script(main))
