"""The explorer's controls as plain values: choices, defaults, AMM presets and checked requests.

Every bad input raises ValueError with one line saying what was expected; the app shows it in the status line.
The settings carry the names of edt_lab/settings.py (num_inference_steps, guidance_scale, amm_blocks, ...).
"""

import math
from dataclasses import dataclass

from ..amm import AMM_PRESETS, default_radius, preset_for
from ..guidance import Guidance
from ..precision import resolve_precision
from ..settings import FALLBACK_SETTINGS, SAMPLERS

MAX_IMAGES = 16
MAX_STEPS = 250  # the paper's DDPM evaluation; more only costs time in an interactive page
MAX_GUIDANCE = 10.0
MAX_SEED = 2**31 - 1
RADIUS_DEFAULT = default_radius(16)  # sqrt(229) ~ 15.13, the released radius of the 16 x 16 token grid
SCALE_DEFAULT = 0.5  # k, the released scale of the "exp" form
RADIUS_RANGE = (1.0, 22.0)  # 22 > the 16 x 16 grid's largest distance 15 * sqrt(2), so the top keeps every pair
SCALE_RANGE = (0.05, 2.0)
PRESETS = {
    "recommended": "as the page started (the model's recommendation)",
    "released": "released EDT-S/B arrangement for this guidance",
    "off": "off",
    "up": "every up-sampling block",
}
# The app's own settings for a model whose folder recommends none: quick enough for a first look on a CPU.
APP_SETTINGS = {**FALLBACK_SETTINGS, "sampler": "dpm", "num_inference_steps": 25, "amm_blocks": "preset"}
# bf16 where the hardware computes it natively: the digits model's bf16 samples score within what another seed
# changes of its fp32 ones, a little worse on Karras noise levels (docs/performance.md), and they come 2-3x faster.
PRECISION_DEFAULT = "auto"
AMM_OFF = ("", "off", "none")  # what the AMM field accepts for "no block"


@dataclass
class Request:
    """One checked sampling request: class index, noise seed, image count, sampler, steps, guidance, AMM, precision."""

    class_index: int
    seed: int
    num_images: int
    sampler: str
    num_inference_steps: int
    guidance: Guidance  # the scale from the page; the guided timesteps and the schedule as the model recommends
    amm_blocks: list[int]
    amm_radius: float | None  # None: the released radius of each block's own grid
    amm_scale: float
    precision: str = "fp32"  # of the transformer's forwards: fp32, bf16 or auto (edt_lab.precision)


# ----------------------------------------------------------------------------------------------------------
# Choices and defaults
# ----------------------------------------------------------------------------------------------------------

def class_choices(pipe) -> list[str]:
    """One unique name per class index, in index order (the class index where a model has no names)."""
    names, seen = [], set()
    for i in range(pipe.transformer.config.num_classes):
        name = str(pipe.id2label.get(i, i))
        name = name if name not in seen else f"{name} (class {i})"
        names.append(name)
        seen.add(name)
    return names


def block_label(info: dict) -> str:
    """A block's toggle text: index, token grid and phase."""
    return f"{info['block']} · {info['grid']}×{info['grid']} · {info['phase']}"


def stage_groups(model) -> list[dict]:
    """The blocks by stage, for one toggle group each: label and (text, block index) choices."""
    groups = {}
    for info in model.block_info():
        stage = info["stage"]
        if stage not in groups:
            where = f"stage {stage}" if info["phase"] != "flat" else "all blocks"
            groups[stage] = {"label": f"{where} · {info['grid']}×{info['grid']} tokens · {info['phase']}",
                             "choices": []}
        groups[stage]["choices"].append((block_label(info), info["block"]))
    return list(groups.values())


def split_by_group(model, blocks) -> list[list[int]]:
    """The blocks in `blocks`, split into the groups of `stage_groups(model)`."""
    chosen = set(blocks)
    return [[b for _, b in group["choices"] if b in chosen] for group in stage_groups(model)]


def preset_blocks(model, preset: str, guidance: float, recommended=()) -> list[int]:
    """Blocks of a preset: "recommended" (the `recommended` blocks, those `initial_settings` starts the page
    with), "released" (edt_lab.amm.preset_for at this guidance), "off" or "up" (up-sampling)."""
    if preset == "recommended":
        return list(recommended)
    if preset == "released":
        return list(AMM_PRESETS[preset_for(model, guidance)].blocks)
    if preset == "off":
        return []
    if preset == "up":
        blocks = [info["block"] for info in model.block_info() if info["phase"] == "up"]
        if not blocks:
            raise ValueError(f"a {type(model).__name__} has no up-sampling blocks: choose the blocks by hand")
        return blocks
    raise ValueError(f"unknown AMM preset {preset!r}: expected one of {', '.join(PRESETS)}")


def format_blocks(blocks) -> str:
    """Block indices as the text the AMM field shows: "7, 10" ("" = off)."""
    return ", ".join(str(b) for b in sorted(set(int(b) for b in blocks)))


def parse_blocks(value, model, guidance: float = 1.0) -> list[int]:
    """The AMM field: comma-separated block indices (or a list), "" or "off" (none), "preset" or a preset name."""
    text = format_blocks(value) if isinstance(value, (list, tuple)) else str(value).strip().lower()
    if text in AMM_OFF:
        return []
    if text == "preset":
        blocks = preset_blocks(model, "released", guidance)
    elif text in AMM_PRESETS:
        blocks = list(AMM_PRESETS[text].blocks)
    else:
        try:
            blocks = sorted({int(item) for item in text.replace(";", ",").split(",") if item.strip()})
        except ValueError:
            raise ValueError(f"AMM blocks {text!r}: expected comma-separated block indices such as 7, 10 "
                             f"(or empty for off)") from None
    bad = [b for b in blocks if not 0 <= b < model.num_blocks]
    if bad:
        raise ValueError(f"AMM block {bad[0]} is out of range: this model has blocks 0..{model.num_blocks - 1}")
    return blocks


def initial_settings(loaded) -> dict:
    """Sampler, steps, guidance (and its guided timesteps) and AMM to start the page with: the model's
    recommendation, else ours."""
    settings = {**APP_SETTINGS, **loaded.recommended}
    try:
        blocks = parse_blocks(settings["amm_blocks"], loaded.pipe.transformer, settings["guidance_scale"])
    except ValueError:  # e.g. no released arrangement for this model: start with AMM off
        blocks = []
    radius = settings["amm_radius"]
    return {"sampler": settings["sampler"],
            "num_inference_steps": min(int(settings["num_inference_steps"]), MAX_STEPS),
            "guidance_scale": float(settings["guidance_scale"]),
            "guidance_interval": format_interval(settings["guidance_interval"]),
            "amm_blocks": blocks, "released_radius": radius is None,
            "amm_radius": RADIUS_DEFAULT if radius is None else float(radius),
            "amm_scale": SCALE_DEFAULT if settings["amm_scale"] is None else float(settings["amm_scale"])}


# ----------------------------------------------------------------------------------------------------------
# Checking a request
# ----------------------------------------------------------------------------------------------------------

def check_number(name: str, value, low, high, integer: bool = False):
    """value as a number inside [low, high], else ValueError naming the control."""
    if value is None:  # an emptied field
        raise ValueError(f"{name} is empty: enter a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must lie in {low}..{high}, got {value!r}")
    if integer and number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number) if integer else number


def check_seed(seed, name: str = "seed") -> int:
    """A noise or mask seed (named `name` in the error): a whole number in 0..MAX_SEED, else ValueError."""
    return check_number(name, seed, 0, MAX_SEED, integer=True)


def check_request(pipe, class_name, seed, num_images, sampler, num_inference_steps, guidance_scale, amm_blocks,
                  released_radius, amm_radius, amm_scale, precision="fp32", guidance_interval=None,
                  recommended=None) -> Request:
    """A Request from the page's raw values (the class by name or index), or ValueError with what was expected;
    `recommended` (the model folder's checked recommended.json) gives the guidance schedule, and the guided
    timesteps where `guidance_interval` (the page's "all" or "LOW-HIGH") is None."""
    recommended, index = recommended or {}, class_index(pipe, class_name)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: expected one of {', '.join(SAMPLERS)}")
    scale = check_number("guidance scale", guidance_scale, 1.0, MAX_GUIDANCE)
    interval = (recommended.get("guidance_interval") if guidance_interval is None
                else parse_interval(guidance_interval, pipe.scheduler.config.num_train_timesteps))
    resolve_precision(precision, pipe.device)  # an unknown name, or bf16 where the hardware lacks it
    return Request(
        class_index=index,
        seed=check_seed(seed),
        num_images=check_number("number of images", num_images, 1, MAX_IMAGES, integer=True),
        sampler=sampler,
        num_inference_steps=check_number("steps", num_inference_steps, 1, MAX_STEPS, integer=True),
        guidance=Guidance(scale, interval, recommended.get("guidance_schedule") or "constant",
                          recommended.get("guided_channels")),
        amm_blocks=parse_blocks(amm_blocks, pipe.transformer, scale),
        amm_radius=None if released_radius else check_number("AMM radius R", amm_radius, *RADIUS_RANGE),
        amm_scale=check_number("AMM scale k", amm_scale, *SCALE_RANGE),
        precision=precision,
    )


def class_index(pipe, class_name) -> int:
    """The index of a class given by name or index, else ValueError listing the names."""
    names = class_choices(pipe)
    if class_name in names:
        return names.index(class_name)
    if str(class_name).strip().isdecimal() and int(class_name) < len(names):  # a class index works too
        return int(class_name)
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} classes)" if len(names) > 10 else "")
    raise ValueError(f"unknown class {class_name!r}: expected a class name ({shown}) or an index "
                     f"0..{len(names) - 1}")


def format_interval(interval) -> str:
    """The guided timesteps as the page shows them: "all", or "LOW-HIGH"."""
    return "all" if interval is None else f"{interval[0]}-{interval[1]}"


def parse_interval(text, num_train_timesteps: int = 1000) -> tuple[int, int] | None:
    """The page's guided timesteps, "all" (or empty) or "LOW-HIGH", as a guidance_interval."""
    text = str(text).strip().lower()
    if text in ("", "all"):
        return None
    low, _, high = text.partition("-")
    if low.strip().isdecimal() and high.strip().isdecimal() and int(low) <= int(high) < num_train_timesteps:
        return int(low), int(high)
    raise ValueError(f"guided timesteps must be all, or LOW-HIGH with 0 <= LOW <= HIGH <= {num_train_timesteps - 1} "
                     f"(e.g. 0-800), got {text!r}")
