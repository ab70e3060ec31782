"""How much a checkpoint uses the class label: noise-prediction MSE with the true label against a shuffled one.

    python benchmarks/label_use.py CHECKPOINT.pt [--weights model ema] [--num-images 500]

For each timestep the same digits, noise and shuffling are used with both labels; a ratio (shuffled / true)
near 1 means the model ignores the label at that noise level.
"""

import argparse

import torch

from edt_lab.checkpoints import model_from_checkpoint, safe_torch_load
from masking_study import noise_prediction_errors, random_digits


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint written by `edt-lab train`")
    parser.add_argument("--weights", nargs="+", default=["model", "ema"], choices=["model", "ema"])
    parser.add_argument("--num-images", type=int, default=500)
    args = parser.parse_args(argv)
    checkpoint = safe_torch_load(args.checkpoint)
    for weights in args.weights:
        rows = label_use(model_from_checkpoint(checkpoint, weights), args.num_images)
        print(f"step {checkpoint['step']} {weights}: " + "; ".join(
            f"t={t}: true {true:.4f} shuffled {shuffled:.4f} ({shuffled / true:.2f}x)"
            for t, (true, shuffled) in rows.items()), flush=True)


if __name__ == "__main__":
    main()
