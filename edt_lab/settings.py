"""Sampling settings in one vocabulary: recommended.json, the fallbacks, the one validator and the flag names.

The names are those of the pipeline and the Python API (diffusers' where it has one):

    sampler              one of SAMPLERS (`edt_lab.pipeline.make_scheduler`)
    num_inference_steps  sampling steps, at least 1
    guidance_scale       classifier-free guidance, 1 = none            (Guidance.scale)
    guidance_interval    [low, high] timesteps guided, inclusive, or null = every step (Guidance.interval)
    guidance_schedule    "constant" or "power-cos"                      (Guidance.schedule)
    guided_channels      channels guided, null = all                   (Guidance.channels)
    amm_blocks           "preset", [] (off) or a list of block indices (`edt_lab.amm.apply_amm`)
    amm_radius           null (the released radius of each grid) or a positive number
    amm_scale            null (the preset's, else 0.5) or a positive number

The command line keeps its spellings (--cfg, --steps, --amm, ...); FLAGS maps each name to its flag, the one
place that does. This module imports no torch, so a command can use it before parsing its arguments.
"""

from pathlib import Path

from .checks import finite_number, read_json_object, whole_number
from .guidance import NUM_TRAIN_TIMESTEPS, Guidance

SAMPLERS = ("ddpm", "ddim", "dpm", "dpm-karras", "dpm3-karras", "dpm-sde-karras", "unipc-karras", "deis-karras",
            "euler-karras", "euler-ancestral")

# Used when neither the command line nor the model folder's recommended.json gives a value.
FALLBACK_SETTINGS = {"sampler": "ddpm", "num_inference_steps": 250, "guidance_scale": 1.0, "guidance_interval": None,
                     "guidance_schedule": "constant", "guided_channels": None, "amm_blocks": [], "amm_radius": None,
                     "amm_scale": None}

# Each setting's command-line flag; argparse stores a flag under its name without "--", "-" as "_".
FLAGS = {"sampler": "--sampler", "num_inference_steps": "--steps", "guidance_scale": "--cfg",
         "guidance_interval": "--cfg-interval", "guidance_schedule": "--cfg-schedule",
         "guided_channels": "--guided-channels", "amm_blocks": "--amm", "amm_radius": "--amm-radius",
         "amm_scale": "--amm-scale"}

# The settings that make up a Guidance, with its field names.
GUIDANCE_FIELDS = {"guidance_scale": "scale", "guidance_interval": "interval", "guidance_schedule": "schedule",
                   "guided_channels": "channels"}

# recommended.json's names before the one vocabulary: refused with the new name, never read under the old one.
OLD_NAMES = {"steps": "num_inference_steps", "cfg": "guidance_scale", "cfg_interval": "guidance_interval",
             "cfg_schedule": "guidance_schedule", "amm": "amm_blocks"}


def check_setting(name: str, value):
    """THE validator: `value` of the setting `name` in the form the library uses (a guidance_interval as a tuple,
    amm_blocks as "preset" or a list of ints), or a one-line ValueError that starts with the name."""
    if name in OLD_NAMES:
        raise ValueError(f"{name} is an old name: rename it {OLD_NAMES[name]} (see edt_lab/settings.py)")
    if name not in FALLBACK_SETTINGS:
        raise ValueError(f"{name} is no sampling setting: expected one of {', '.join(FALLBACK_SETTINGS)}")
    if name == "sampler" and value not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {value!r}")
    if name == "num_inference_steps" and whole_number(value, name) < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {value}")
    if name in GUIDANCE_FIELDS:  # Guidance checks its own values
        guidance = Guidance(**{GUIDANCE_FIELDS[name]: value})
        guidance.check_fits(NUM_TRAIN_TIMESTEPS)
        return getattr(guidance, GUIDANCE_FIELDS[name])
    if name == "amm_blocks":
        return _amm_blocks(value)
    if name in ("amm_radius", "amm_scale") and value is not None:
        if finite_number(value, name) <= 0:
            raise ValueError(f"{name} must be null or a positive number, got {value}")
        return float(value)
    return value


def _amm_blocks(value):
    """amm_blocks: "preset" or a list of block indices ([] = off)."""
    if value == "preset":
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"amm_blocks must be 'preset', [] (off) or a list of block indices, got {value!r}")
    blocks = [whole_number(b, "amm_blocks' indices") for b in value]
    if any(b < 0 for b in blocks):
        raise ValueError(f"amm_blocks must not hold a negative index, got {value!r}")
    return blocks


def check_settings(settings: dict, where: str = "") -> dict:
    """Every setting in `settings` checked (`check_setting`), errors prefixed by `where` (e.g. a file name)."""
    try:
        return {name: check_setting(name, value) for name, value in settings.items()}
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


def read_recommended(folder) -> dict:
    """The sampling settings a pipeline folder recommends (its recommended.json, checked), or {} without one."""
    path = Path(folder) / "recommended.json"
    return check_settings(read_json_object(path), f"{path}: ") if path.is_file() else {}


def parse_amm_flag(text) -> str | list[int]:
    """--amm: "preset", "off" or comma-separated block indices "7,10" -> amm_blocks."""
    text = str(text).strip()
    if text in ("preset", "off"):
        return [] if text == "off" else text
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"--amm {text!r}: expected 'preset', 'off' or comma-separated block indices such as "
                         f"7,10") from None


def flag_values(args) -> dict:
    """The settings the command line gave (argparse's namespace `args`; a flag it lacks or left None counts as
    not given), checked, each error naming its flag."""
    given = {}
    for name, flag in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        try:
            given[name] = check_setting(name, parse_amm_flag(value) if name == "amm_blocks" else value)
        except ValueError as error:  # the message in the flag's words: "--cfg must be at least 1 ..."
            message = str(error)
            if not message.startswith(flag):
                message = flag + message[len(name):] if message.startswith(name) else f"{flag}: {message}"
            raise ValueError(message) from None
    return given


def resolve_settings(args=None, recommended: dict | None = None) -> dict:
    """Every setting: the command line's (`flag_values(args)`), else the folder's recommended ones, else
    FALLBACK_SETTINGS."""
    return {**FALLBACK_SETTINGS, **(recommended or {}), **(flag_values(args) if args is not None else {})}


def guidance_of(settings: dict) -> Guidance:
    """The Guidance of a full settings dict (e.g. `resolve_settings`'s)."""
    return Guidance(**{field: settings[name] for name, field in GUIDANCE_FIELDS.items()})
