"""Do the realism measures see what people see? Real held-out digits against blurred, thickened, thinned, noisy
and speckled copies of the same digits, every measure with its real-vs-real value.

    python benchmarks/realism_check.py --json docs/bench/realism_check.json
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from edt_lab.data import diffusion_split, load_digits
from edt_lab.metrics import digit_metrics

MEASURES = ("fid", "ae_fid", "mean_ink_w1", "stroke_width_w1", "grey_share_w1", "isolated_pixels_w1")


def degrade(images, kind: str, generator):
    """A degraded copy of digits (N, 1, 32, 32) in [-1, 1]: "blurred", "thickened", "thinned", "noisy" or "speckled"."""
    ink = (images + 1) / 2
    if kind == "blurred":  # a 3x3 box blur
        ink = F.avg_pool2d(F.pad(ink, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    elif kind == "thickened":  # a 3x3 grey dilation
        ink = F.max_pool2d(ink, 3, stride=1, padding=1)
    elif kind == "thinned":  # a 2x2 grey erosion
        ink = -F.max_pool2d(F.pad(-ink, (0, 1, 0, 1), value=0.0), 2, stride=1)
    elif kind == "noisy":  # Gaussian noise of std 0.1 on the ink
        ink = ink + 0.1 * torch.randn(ink.shape, generator=generator)
    elif kind == "speckled":  # 5 random full-ink dots per digit
        flat = ink.flatten(1).clone()
        dots = torch.randint(flat.shape[1], (len(flat), 5), generator=generator)
        flat.scatter_(1, dots, 1.0)
        ink = flat.view_as(ink)
    else:
        raise ValueError(f"unknown degradation {kind!r}")
    return ink.clamp(0, 1) * 2 - 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    digits, labels = load_digits()
    train, held_out = diffusion_split(labels)
    # The 500 digits the diffusion model trains on but the classifier and autoencoder never saw play the samples;
    # the reference is the default one, the 500 held-out digits.
    from edt_lab.data import split_digits
    unseen = torch.tensor(sorted(set(split_digits(labels)[1].tolist()) - set(held_out.tolist())))
    images = digits[unseen]
    generator = torch.Generator().manual_seed(0)
    rows = {"real": digit_metrics(images, labels[unseen])}
    for kind in ("blurred", "thickened", "thinned", "noisy", "speckled"):
        rows[kind] = digit_metrics(degrade(images, kind, generator), labels[unseen])
    header = f"{'digits':<10}" + "".join(f"{m:>20}" for m in ("accuracy", *MEASURES))
    print(header)
    for name, r in rows.items():
        print(f"{name:<10}" + "".join(f"{r[m]:>20.4f}" for m in ("accuracy", *MEASURES)))
    floor = rows["real"]
    print(f"{'real floor':<10}{'':>20}" + "".join(f"{floor[m + '_real_floor']:>20.4f}" for m in MEASURES))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
