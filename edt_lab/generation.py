"""Class-conditional images in bulk, as `edt-lab sample` writes them: a labelled .png grid or an ADM-layout .npz.

Image i of a run (class-major: all K images of the first requested class, then the next class...) is drawn
from the generators of (seed, i). The same arguments give the same bytes however many processes share the
work (each process takes whole batches, the main process gathers them and writes the file). Another batch size
gives every image the same noise, but the math libraries' kernels round differently for different batch shapes
(by ~1e-7), which can move a rare pixel by one level of 255.
"""

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .checkpoints import load_checkpoint
from .pipeline import DEFAULT_MODEL_DIR, EDTPipeline, image_generators, load_default, load_vae, make_scheduler
from .settings import read_recommended


def load_pipeline(ckpt=None, vae=None, device="cpu") -> tuple[EDTPipeline, dict]:
    """The pipeline of `ckpt` (the default model when None) with the VAE folder `vae` (if given) and its folder's
    recommended settings ({} for a checkpoint file)."""
    if ckpt is None:
        pipe, recommended = load_default(device), read_recommended(DEFAULT_MODEL_DIR)
    elif (Path(ckpt) / "model_index.json").is_file():
        pipe, recommended = EDTPipeline.from_pretrained(ckpt, device), read_recommended(ckpt)
    else:
        pipe, recommended = EDTPipeline(load_checkpoint(ckpt, device), make_scheduler("ddpm")), {}
    if vae is not None:
        channels = pipe.transformer.config.in_channels
        if channels != 4:  # the pipeline's test for a latent model (sd-vae's 4 latent channels)
            raise ValueError(f"--vae {vae}: has no effect, this model works on {channels}-channel images, not on "
                             f"latents for a VAE to decode")
        pipe.vae = load_vae(vae).to(device)
    return pipe, recommended


def draw_labels(classes, num_samples: int, draw: str, seed: int) -> np.ndarray:
    """Labels (num_samples,) int64 for an FID-style run: "uniform" draws each uniformly at random from `classes`
    (the released generator's way, seeded by `seed`); "balanced" gives every class the same count (+-1), class-major."""
    classes = np.asarray(classes, dtype=np.int64)
    if not len(classes):
        raise ValueError("no classes to draw labels from: expected at least one class")
    if draw == "uniform":
        picks = torch.randint(len(classes), (num_samples,), generator=torch.Generator().manual_seed(seed))
        return classes[picks.numpy()]
    if draw == "balanced":
        return np.sort(classes[np.arange(num_samples) % len(classes)], kind="stable")
    raise ValueError(f"draw must be 'uniform' or 'balanced', got {draw!r}")


def image_bytes(pipe: EDTPipeline) -> int:
    """The size of one uint8 output image of `pipe`: the model's own size, or the VAE's decoding of it."""
    config = pipe.transformer.config
    if pipe.vae is None:
        return config.input_size ** 2 * config.in_channels
    upscale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)  # each decoder stage but the last doubles the size
    return (config.input_size * upscale) ** 2 * pipe.vae.config.out_channels


def check_fits_in_memory(pipe: EDTPipeline, num_images: int, option: str) -> None:
    """Refuse a run whose output images alone exceed this machine's memory (it would fail with an allocator's
    message, or after hours of sampling); `option` is the command line's words for the count."""
    need, have = num_images * image_bytes(pipe), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ValueError(f"{option}: {num_images} images would take {need / 2**30:.1f} GiB, more than this "
                         f"machine's {have / 2**30:.1f} GiB of memory: ask for fewer")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] -> uint8, rounded."""
    return np.round(images * 255).clip(0, 255).astype(np.uint8)


def generate(pipe: EDTPipeline, labels, indices, seed: int = 0, batch_size: int = 64, **call_kwargs) -> np.ndarray:
    """uint8 images (len(indices), H, W, C): image `indices[j]` of class `labels[j]` with the noise of (seed, index);
    `call_kwargs` go to the pipeline's call (guidance, num_inference_steps, precision, ...)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if len(labels) != len(indices):
        raise ValueError(f"expected one image index per label, got {len(labels)} labels and {len(indices)} indices")
    batches = []
    for start in range(0, len(indices), batch_size):
        batch = list(indices[start:start + batch_size])
        output = pipe(list(labels[start:start + batch_size]), generator=image_generators(seed, batch),
                      output_type="np", **call_kwargs)
        batches.append(to_uint8(output.images))
    return np.concatenate(batches) if batches else np.zeros((0, 0, 0, 0), np.uint8)


def generate_shared(pipe: EDTPipeline, labels: np.ndarray, state, out: Path, seed: int, batch_size: int,
                    **call_kwargs) -> np.ndarray | None:
    """`generate` all `labels`, the batches shared among the processes of the accelerate PartialState `state`;
    every image on the main process, in index order (None on the others). Processes share whole batches, so
    every image is computed in the same batch however many processes run; they meet through files beside `out`."""
    batches = [list(range(start, min(start + batch_size, len(labels)))) for start in range(0, len(labels), batch_size)]
    with state.split_between_processes(batches) as own_batches:
        indices = [i for batch in own_batches for i in batch]
        images = generate(pipe, labels[indices], indices, seed, batch_size, **call_kwargs)
    if state.num_processes == 1:
        return images
    part = out.with_name(f"{out.name}.part{state.process_index}.npy")
    np.save(part, images)
    state.wait_for_everyone()
    gathered = None
    if state.is_main_process:
        parts = [out.with_name(f"{out.name}.part{rank}.npy") for rank in range(state.num_processes)]
        gathered = np.concatenate([part for part in map(np.load, parts) if len(part)])
        for p in parts:
            p.unlink()
    state.wait_for_everyone()
    return gathered


def save_npz(path, images: np.ndarray, labels: np.ndarray) -> None:
    """ADM layout: arr_0 uint8 (N, H, W, C), arr_1 int64 (N,); fixed zip timestamps, so equal data = equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in (("arr_0", images), ("arr_1", labels)):
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(entry, "w", force_zip64=True) as file:
                np.lib.format.write_array(file, np.ascontiguousarray(array), allow_pickle=False)


def label_grid(images: np.ndarray, row_names: list[str]) -> Image.Image:
    """One row per name: the name, then that row's images; images (rows * K, H, W, C) uint8, row-major."""
    rows = len(row_names)
    per_row, (height, width) = len(images) // rows, images.shape[1:3]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 8 + int(max(measure.textlength(name, font=font) for name in row_names))
    grid = Image.new("RGB", (label_width + per_row * width, rows * height), "white")
    draw = ImageDraw.Draw(grid)
    for r, name in enumerate(row_names):
        draw.text((4, r * height + height // 2), name, fill="black", font=font, anchor="lm")
        for k in range(per_row):
            tile = images[r * per_row + k]
            tile = np.repeat(tile, 3, axis=-1) if tile.shape[-1] == 1 else tile
            grid.paste(Image.fromarray(tile), (label_width + k * width, r * height))
    return grid
