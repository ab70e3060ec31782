"""Do the realism measures see what people see? Real held-out digits against blurred, thickened, thinned, noisy
and speckled copies of the same digits, every measure with its real-vs-real value.

    python benchmarks/realism_check.py --json docs/bench/realism-check.json
"""

import json
import sys
from pathlib import Path

import torch

from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from edt_lab.data import load_digits, unseen_by_judges
from edt_lab.metrics import digit_metrics
from edt_lab.realism import DEGRADATIONS, degrade

MEASURES = ("fid", "ae_fid", "mean_ink_w1", "stroke_width_w1", "grey_share_w1", "isolated_pixels_w1")


def main(argv=None):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")
    digits, labels = load_digits()
    # The 500 digits neither judge saw play the samples; the reference is the default one, the 500 held-out digits.
    unseen = unseen_by_judges(labels)
    images = digits[unseen]
    generator = torch.Generator().manual_seed(0)
    rows = {"real": digit_metrics(images, labels[unseen])}
    for kind in DEGRADATIONS:
        rows[kind] = digit_metrics(degrade(images, kind, generator), labels[unseen])
    header = f"{'digits':<10}" + "".join(f"{m:>20}" for m in ("accuracy", *MEASURES))
    print(header)
    for name, r in rows.items():
        print(f"{name:<10}" + "".join(f"{r[m]:>20.4f}" for m in ("accuracy", *MEASURES)))
    floor = rows["real"]
    print(f"{'real floor':<10}{'':>20}" + "".join(f"{floor[m + '_real_floor']:>20.4f}" for m in MEASURES))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
