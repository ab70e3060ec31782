"""The `edt-lab sample` command: class-conditional samples to a labelled .png grid or an ADM-layout .npz.

Image i of a run (class-major: all K images of the first requested class, then the next class...) is drawn
from the generators of (seed, i). The same arguments give the same bytes however many processes share the
work (`accelerate launch -m edt_lab.cli sample ...`: each process takes whole batches, the main process
gathers them and writes the file). Another --batch-size gives every image the same noise, but the math
libraries' kernels round differently for different batch shapes (by ~1e-7), which can move a rare pixel by
one level of 255.
"""

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from PIL import Image, ImageDraw, ImageFont

from .checkpoints import load_checkpoint
from .checks import available_device, finite_number, generator_seed, read_json_object, whole_number
from .cli import output_file
from .models.base import CFG_SCHEDULES
from .pipeline import (DEFAULT_MODEL_DIR, SAMPLERS, EDTPipeline, image_generators, load_default, load_vae,
                       make_scheduler)
from .precision import PRECISIONS, enable_tf32, resolve_precision

# Used when neither the command line nor the model folder's recommended.json gives a value.
FALLBACK_SETTINGS = {"sampler": "ddpm", "steps": 250, "cfg": 1.0, "cfg_schedule": "constant", "cfg_interval": None,
                     "amm": "off", "amm_radius": None, "amm_scale": None}


# ----------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------

def parse_classes(text: str, pipe: EDTPipeline) -> list[int]:
    """"all" or a comma-separated list of class indices or names -> checked class indices."""
    if text.strip() == "all":
        return list(range(pipe.transformer.config.num_classes))
    items = [item.strip() for item in text.split(",")]
    if not all(items):  # "1,,2" is a typo, as in --amm; no item is quietly dropped
        raise ValueError(f"--classes {text!r}: expected 'all' or a comma-separated list such as 0,1,2, without "
                         f"empty items")
    return pipe.class_ids([int(item) if item.lstrip("-").isdigit() else item for item in items])


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
    raise ValueError(f"--label-draw {draw!r}: expected 'uniform' or 'balanced'")


def parse_amm(value):
    """--amm: "preset", "off" or block indices "7,10" (a list also accepted) -> the pipeline's `amm_blocks`."""
    if isinstance(value, (list, tuple)):
        return [int(b) for b in value]
    text = str(value).strip()
    if text in ("preset", "off"):
        return "preset" if text == "preset" else []
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"--amm {value!r}: expected 'preset', 'off' or comma-separated block indices such as 7,10") \
            from None


def sampling_kwargs(settings: dict) -> dict:
    """The pipeline call's arguments for `settings` (FALLBACK_SETTINGS' keys: a recommended.json, filled in)."""
    return {"guidance_scale": settings["cfg"], "cfg_schedule": settings["cfg_schedule"],
            "guidance_interval": settings["cfg_interval"], "num_inference_steps": settings["steps"],
            "amm_blocks": parse_amm(settings["amm"]), "amm_radius": settings["amm_radius"],
            "amm_scale": settings["amm_scale"]}


def read_recommended(folder) -> dict:
    """The sampling settings a pipeline folder recommends (its recommended.json, checked), or {}."""
    path = Path(folder) / "recommended.json"
    if not path.is_file():
        return {}
    settings = {key: value for key, value in read_json_object(path).items() if key in FALLBACK_SETTINGS}
    for key, value in settings.items():
        try:
            check_setting(key, value)
        except ValueError as error:
            raise ValueError(f"{path}: {key}: {error}") from None
    return settings


def check_setting(key: str, value) -> None:
    """ValueError unless `value` is a usable value of the FALLBACK_SETTINGS key `key` (as a recommended.json
    holds it)."""
    if key == "sampler" and value not in SAMPLERS:
        raise ValueError(f"expected one of {', '.join(SAMPLERS)}, got {value!r}")
    if key == "steps" and whole_number(value, "the step count") < 1:
        raise ValueError(f"expected at least 1 step, got {value}")
    if key == "cfg" and finite_number(value, "the guidance scale") < 1:
        raise ValueError(f"expected a guidance scale of at least 1, got {value}")
    if key == "cfg_schedule" and value not in CFG_SCHEDULES:
        raise ValueError(f"expected one of {', '.join(CFG_SCHEDULES)}, got {value!r}")
    if key == "cfg_interval" and value is not None:
        pair = value if isinstance(value, list) and len(value) == 2 else [-1, -1]
        low, high = (whole_number(t, "a timestep") for t in pair)
        if not 0 <= low <= high <= 999:
            raise ValueError(f"expected null or [LOW, HIGH] with 0 <= LOW <= HIGH <= 999, got {value!r}")
    if key == "amm":
        parse_amm(value)
    if key in ("amm_radius", "amm_scale") and value is not None and finite_number(value, "the value") <= 0:
        raise ValueError(f"expected null or a positive number, got {value}")


# ----------------------------------------------------------------------------------------------------------
# Generating and writing
# ----------------------------------------------------------------------------------------------------------

def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images (N, H, W, C) in [0, 1] -> uint8, rounded."""
    return np.round(images * 255).clip(0, 255).astype(np.uint8)


def generate(pipe: EDTPipeline, labels, indices, seed: int = 0, batch_size: int = 64, **call_kwargs) -> np.ndarray:
    """uint8 images (len(indices), H, W, C): image `indices[j]` of class `labels[j]` with the noise of (seed, index)."""
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


# ----------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------

def add_arguments(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a released .pt, a state dict, a save_pretrained model folder, a pipeline "
                                       "folder or a training checkpoint")
    source.add_argument("--model", choices=["default"], help="the shipped EDT-T/2 digits model")
    parser.add_argument("--vae", help="AutoencoderKL folder (e.g. sd-vae-ft-ema) for latent models")
    parser.add_argument("--classes", default="all", help="'all' or comma-separated class indices or names")
    parser.add_argument("--per-class", type=int, help="images per class (default 1)")
    parser.add_argument("--num-samples", type=int, help="FID-style: this many images in all (an .npz), labels drawn "
                        "from --classes by --label-draw; instead of --per-class")
    # No default here: run() refuses an explicit --label-draw without --num-samples, and then uses "uniform".
    parser.add_argument("--label-draw", choices=("uniform", "balanced"),
                        help="with --num-samples: each label uniformly at random (default, as the released "
                        "generator) or every class equally often")
    parser.add_argument("--steps", type=int, help="sampling steps (default: recommended, else 250)")
    parser.add_argument("--sampler", help=f"{', '.join(SAMPLERS)} (default: recommended, else ddpm)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale, 1 = none")
    parser.add_argument("--cfg-schedule", choices=CFG_SCHEDULES, help="constant (default: recommended, else constant) "
                        "or power-cos (MDTv2's released schedule, with --guided-channels 3)")
    parser.add_argument("--cfg-interval", type=int, nargs=2, metavar=("LOW", "HIGH"),
                        help="guide only the steps with LOW <= t <= HIGH (training timesteps 0..999), e.g. 300 999 "
                             "(default: recommended, else every step; 0 999 guides every step)")
    parser.add_argument("--amm", help="'preset', 'off' or block indices such as 7,10 (default: recommended, else off)")
    parser.add_argument("--amm-radius", type=float, help="AMM radius in tokens (default: the released one)")
    parser.add_argument("--amm-scale", type=float, help="AMM scale k (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--guided-channels", type=int, help="channels guided by CFG (3 = released scripts)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (TF32 matrix products on a GPU, as the released scripts), bf16 (autocast; needs "
                             "native bf16 hardware) or auto (bf16 where the hardware has it)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer's blocks: a slower start (minutes on a CPU), faster "
                             "steps on a GPU; rounding differs slightly")
    parser.add_argument("--out", required=True, help="FILE.png (labelled grid) or FILE.npz (ADM layout)")


def load_pipeline(ckpt=None, vae=None, device="cpu") -> tuple[EDTPipeline, dict]:
    """The pipeline of --ckpt (or the default model when ckpt is None) with the VAE folder `vae` (if given) and
    its folder's recommended settings."""
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


def process_device(name: str, state: PartialState | None = None) -> torch.device:
    """--device: "cpu", "cuda" or "auto" (a CUDA GPU when there is one, else the CPU); with an accelerate `state`,
    this process's GPU. ValueError for another name, or "cuda" on a machine without one."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        available_device(name, "--device")
    if state is not None:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def refuse_unused(args, keys, why: str, remedy: str) -> None:
    """ValueError naming the options among `keys` that the command line gave although they have no effect `why`
    (the setting that makes them idle), with the `remedy`."""
    given = [f"--{key.replace('_', '-')}" for key in keys if getattr(args, key) is not None]
    if given:
        raise ValueError(f"{' and '.join(given)}: {'has' if len(given) == 1 else 'have'} no effect {why}; {remedy}")


def run(args):
    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise ValueError(f"--out {args.out}: expected a .png or .npz file name")
    if args.per_class is not None and args.num_samples is not None:
        raise ValueError("--per-class and --num-samples exclude each other: give one")
    if args.num_samples is not None and (args.num_samples < 1 or out.suffix != ".npz"):
        raise ValueError(f"--num-samples needs a count of at least 1 and an .npz --out (a .png grid has one row "
                         f"per class: use --per-class), got {args.num_samples} and {out.name}")
    per_class = 1 if args.per_class is None else args.per_class
    if per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {args.per_class}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    generator_seed(args.seed, "--seed")
    for key in ("cfg", "amm_radius", "amm_scale"):  # nan or inf would sample, and write garbage
        if getattr(args, key) is not None:
            finite_number(getattr(args, key), f"--{key.replace('_', '-')}")
    if args.label_draw is not None and args.num_samples is None:
        raise ValueError(f"--label-draw {args.label_draw}: has no effect without --num-samples (--per-class "
                         f"gives every class its images, nothing is drawn)")
    if args.cfg_interval is not None and not 0 <= args.cfg_interval[0] <= args.cfg_interval[1] <= 999:
        raise ValueError(f"--cfg-interval {args.cfg_interval[0]} {args.cfg_interval[1]}: expected LOW <= HIGH, "
                         f"both in 0..999")
    state = PartialState(cpu=args.device == "cpu")
    device = process_device(args.device, state)
    resolve_precision(args.precision, device)  # a bad choice fails before the model loads
    if device.type == "cuda":
        enable_tf32()  # as the released sampling scripts
    pipe, recommended = load_pipeline(args.ckpt, args.vae, device)
    settings = {**FALLBACK_SETTINGS, **recommended,
                **{key: getattr(args, key) for key in FALLBACK_SETTINGS if getattr(args, key) is not None}}
    pipe.scheduler = make_scheduler(settings["sampler"])
    if args.compile:
        pipe.transformer.compile_blocks()
    pipe.set_progress_bar_config(disable=True)
    classes = parse_classes(args.classes, pipe)
    call_kwargs = sampling_kwargs(settings)  # a bad --amm fails here, before the sampling
    # Only what the user typed counts: a recommended.json may well hold a radius next to "amm": "off".
    if not call_kwargs["amm_blocks"]:
        refuse_unused(args, ("amm_radius", "amm_scale"),
                      "with --amm off" if args.amm is not None else "with the AMM off (this model's default)",
                      "turn the AMM on with --amm preset or block indices such as 7,10")
    if call_kwargs["guidance_scale"] == 1:
        refuse_unused(args, ("cfg_schedule", "cfg_interval", "guided_channels"),
                      "at --cfg 1" if args.cfg is not None else "without guidance (this model's default is --cfg 1)",
                      "guide with --cfg above 1")
    if args.num_samples is not None:
        check_fits_in_memory(pipe, args.num_samples, f"--num-samples {args.num_samples}")
    else:
        check_fits_in_memory(pipe, len(classes) * per_class, f"--per-class {per_class} of {len(classes)} classes")
    output_file(out, "--out")

    if args.num_samples is not None:
        labels = draw_labels(classes, args.num_samples, args.label_draw or "uniform", args.seed)
    else:
        labels = np.repeat(np.array(classes, dtype=np.int64), per_class)  # class-major request order
    # Processes share whole batches, so every image is computed in the same batch however many processes run.
    batches = [list(range(start, min(start + args.batch_size, len(labels))))
               for start in range(0, len(labels), args.batch_size)]
    with state.split_between_processes(batches) as own_batches:
        indices = [i for batch in own_batches for i in batch]
        images = generate(pipe, labels[indices], indices, args.seed, args.batch_size, **call_kwargs,
                          guided_channels=args.guided_channels, precision=args.precision)
    if state.num_processes > 1:
        images = _gather(images, out, state)
    if state.is_main_process:
        if out.suffix == ".npz":
            save_npz(out, images, labels)
        else:
            names = [pipe.id2label.get(c, str(c)) for c in classes]
            label_grid(images, names).save(out)
        print(f"wrote {len(images)} images of {len(classes)} classes to {out}")


def _gather(images: np.ndarray, out: Path, state) -> np.ndarray | None:
    """Every process's images, in index order, on the main process (through files beside `out`)."""
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
