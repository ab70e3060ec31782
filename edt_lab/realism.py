"""What the realism measures of generated digits are made of: an appearance feature space and image statistics.

The digit classifier's features are made to ignore how a digit is drawn (they must read a thick, blurred or
speckled 7 as a 7), so a Frechet distance in them misses exactly what makes samples look fake. Two measures
that do see it:
- an autoencoder's latent: to rebuild a digit from 32 numbers it must encode stroke thickness, sharpness and
  shape, so the Frechet distance of its latents (`ae_fid`) grows when any of these drift;
- per-image statistics, compared as distributions (1-D Wasserstein distance) with real digits: mean ink,
  stroke width (2 x ink area / ink perimeter), the share of grey pixels among the inked ones (soft, blurred
  edges raise it, hard thresholded ones lower it) and isolated pixels (visible pixels with no visible neighbour,
  the speckle of an under-trained or over-guided sampler).
`edt_lab.metrics.realism_metrics` turns them into distances, each with its real-vs-real value.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from edt_lab.assets import asset_dir
from edt_lab.classifier import fit_on_digits, load_judge
from edt_lab.files import make_weights_readable

DEFAULT_AUTOENCODER_DIR = asset_dir("digit_autoencoder")
INK_THRESHOLD = 0.5  # ink in [0, 1] above this is stroke (stroke width)
VISIBLE_THRESHOLD = 0.25  # ink above this is visible (grey share, isolated pixels)
STATISTICS = ("mean_ink", "stroke_width", "grey_share", "isolated_pixels")
DEGRADATIONS = ("blurred", "thickened", "thinned", "noisy", "speckled")


#################################################################################
#                                 The autoencoder                               #
#################################################################################

class DigitAutoencoder(ModelMixin, ConfigMixin):
    """A small convolutional autoencoder: (B, 1, 32, 32) digits in [-1, 1] <-> (B, latent_dim) codes."""

    @register_to_config
    def __init__(self, width: int = 16, latent_dim: int = 32):
        super().__init__()

        def down(c_in, c_out):  # halve the grid
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU())

        def up(c_in, c_out):  # double the grid
            return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.GELU())

        self.encoder = nn.Sequential(down(1, width), down(width, 2 * width), down(2 * width, 4 * width), nn.Flatten(),
                                     nn.Linear(4 * width * 16, latent_dim))
        self.decoder_input = nn.Linear(latent_dim, 4 * width * 16)
        self.decoder = nn.Sequential(up(4 * width, 2 * width), up(2 * width, width),
                                     nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1), nn.Tanh())

    def encode(self, x):
        """(B, 1, 32, 32) -> (B, latent_dim): 32 -> 16 -> 8 -> 4 grid, flattened, projected."""
        return self.encoder(x)

    def decode(self, z):
        """(B, latent_dim) -> (B, 1, 32, 32) in [-1, 1]."""
        return self.decoder(self.decoder_input(z).view(len(z), -1, 4, 4))

    def forward(self, x):
        return self.decode(self.encode(x))


def load_digit_autoencoder(path=None) -> DigitAutoencoder:
    """The autoencoder saved at path (default: the shipped assets/digit_autoencoder), in eval mode."""
    return load_judge(DigitAutoencoder, DEFAULT_AUTOENCODER_DIR if path is None else path, "train-autoencoder")


@torch.no_grad()
def encode_digits(autoencoder, images, batch_size: int = 500) -> torch.Tensor:
    """Latent codes (N, latent_dim) float64 of digits (N, 1, 32, 32) in [-1, 1]."""
    autoencoder.eval()
    return torch.cat([autoencoder.encode(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).double()


def train_digit_autoencoder(out_dir, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3, seed: int = 0):
    """Fit DigitAutoencoder (MSE) on the classifier's 4,000 training digits, save it to out_dir; return results.

    The held-out digits include every digit the metrics use as their real reference.
    """
    torch.manual_seed(seed)
    model = DigitAutoencoder()
    held_out_mse, seconds, num_train, num_held_out = fit_on_digits(
        model, lambda m, x, y, g: F.mse_loss(m(x), x), lambda m, x, y: ("mse", F.mse_loss(m(x), x).item()),
        epochs, batch_size, lr, seed)
    results = {"held_out_mse": held_out_mse, "seconds": seconds, "epochs": epochs, "seed": seed,
               "num_train": num_train, "num_held_out": num_held_out}
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    make_weights_readable(out_dir)
    (out_dir / "README.md").write_text(_model_card(results, out_dir))
    return results


def _model_card(results, out_dir) -> str:
    """README.md written next to the saved weights."""
    return f"""# Digit autoencoder

A small convolutional autoencoder (`edt_lab.realism.DigitAutoencoder`, 32-d latent) whose latent space is the
appearance feature space of `edt-lab eval`'s realism measure `ae_fid`: to rebuild a digit it must encode
stroke thickness, sharpness and shape, which the digit classifier's features are trained to ignore.

- Data: the bundled digits less the last {results['num_held_out'] // 10} of every class
  ({results['num_train']} digits); the held-out {results['num_held_out']} include the 500 real digits the
  metrics compare samples with.
- Held-out reconstruction MSE (on [-1, 1] pixels): **{results['held_out_mse']:.4f}** after {results['epochs']}
  epochs (seed {results['seed']}).
- Training time: {results['seconds']:.0f} s on {torch.get_num_threads()} CPU threads (torch {torch.__version__}).
- Made with: `edt-lab train-autoencoder --out {out_dir} --epochs {results['epochs']} --seed {results['seed']} --force`

Load it with `edt_lab.realism.load_digit_autoencoder()`.
"""


#################################################################################
#                               Image statistics                                #
#################################################################################

def digit_statistics(images) -> dict[str, np.ndarray]:
    """Per-image statistics of digits (N, 1, H, W) in [-1, 1] (background -1): each a (N,) float64 array.

    mean_ink: mean ink (0 background .. 1 full stroke). stroke_width: 2 x area / perimeter of the stroke
    (ink > INK_THRESHOLD), in pixels, the width of a long thin stroke. grey_share: the share of visible pixels
    (ink > VISIBLE_THRESHOLD) that are grey (ink < 0.9). isolated_pixels: visible pixels none of whose 8
    neighbours is visible.
    """
    ink = ((torch.as_tensor(images).double() + 1) / 2).clamp(0, 1)[:, 0]  # (N, H, W)
    stroke = (ink > INK_THRESHOLD).double()
    padded = F.pad(stroke, (1, 1, 1, 1))
    # Perimeter: stroke pixels' sides that face a non-stroke pixel (4-neighbourhood).
    sides = sum((stroke * (1 - padded[:, 1 + dy:padded.shape[1] - 1 + dy, 1 + dx:padded.shape[2] - 1 + dx]))
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)))
    area, perimeter = stroke.sum((1, 2)), sides.sum((1, 2))
    visible = (ink > VISIBLE_THRESHOLD).double()
    neighbours = F.conv2d(visible[:, None], torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1)[:, 0] - visible
    grey = visible * (ink < 0.9)
    return {
        "mean_ink": ink.mean((1, 2)).numpy(),
        "stroke_width": torch.where(perimeter > 0, 2 * area / perimeter.clamp(min=1), 0).numpy(),
        "grey_share": (grey.sum((1, 2)) / visible.sum((1, 2)).clamp(min=1)).numpy(),
        "isolated_pixels": (visible * (neighbours == 0)).sum((1, 2)).numpy(),
    }


#################################################################################
#                  Degraded real digits, to check the measures                 #
#################################################################################

def degrade(images, kind: str, generator: torch.Generator):
    """A degraded copy of digits (N, 1, 32, 32) in [-1, 1]; kind is one of DEGRADATIONS."""
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
        raise ValueError(f"unknown degradation {kind!r}: expected one of {', '.join(DEGRADATIONS)}")
    return ink.clamp(0, 1) * 2 - 1

