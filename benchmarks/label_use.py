"""How much a checkpoint uses the class label: noise-prediction MSE with the true label against a shuffled one.

    python benchmarks/label_use.py CHECKPOINT.pt [--weights model ema] [--num-images 500]

For each timestep the same digits, noise and shuffling are used with both labels; a ratio (shuffled / true)
near 1 means the model ignores the label at that noise level.
"""

import sys
from pathlib import Path

import torch

from edt_lab.checkpoints import model_from_checkpoint, safe_torch_load
from edt_lab.cli import OneLineParser, run_script
from masking_study import noise_prediction_errors, random_digits
from options import at_least


def label_use(model, num_images: int = 500, timesteps=(300, 500, 700, 900), seed: int = 0) -> dict:
    """timestep -> (MSE with the true labels, MSE with shuffled labels) on `num_images` bundled digits."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = random_digits(num_images, generator)
    results = {}
    for t in timesteps:
        noise = torch.randn(images.shape, generator=generator)
        shuffled = labels[torch.randperm(len(labels), generator=generator)]
        results[t] = tuple(noise_prediction_errors(model, images, y, t, noise).mean().item()
                           for y in (labels, shuffled))
    return results


def main(argv=None) -> None:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint written by `edt-lab train`")
    parser.add_argument("--weights", nargs="+", default=["model", "ema"], choices=["model", "ema"])
    parser.add_argument("--num-images", type=at_least(1), default=500)
    args = parser.parse_args(argv)
    if Path(args.checkpoint).is_dir():  # safe_torch_load would call it "no such file"
        parser.error(f"{args.checkpoint}: is a folder, expected a checkpoint file written by `edt-lab train`")
    checkpoint = safe_torch_load(args.checkpoint)  # ValueError: missing, not a checkpoint, unreadable
    missing = [key for key in ("config", "step", *args.weights) if key not in checkpoint] \
        if isinstance(checkpoint, dict) else ["config"]
    if missing:
        parser.error(f"{args.checkpoint}: not a checkpoint written by `edt-lab train` (no {missing[0]!r})")
    for weights in args.weights:
        rows = label_use(model_from_checkpoint(checkpoint, weights), args.num_images)
        print(f"step {checkpoint['step']} {weights}: " + "; ".join(
            f"t={t}: true {true:.4f} shuffled {shuffled:.4f} ({shuffled / true:.2f}x)"
            for t, (true, shuffled) in rows.items()), flush=True)


if __name__ == "__main__":
    sys.exit(run_script(main))
