"""Loading released and own model files safely: architecture inferred from tensor shapes, never pickled code.

Accepted: a released EDT/DiT/MDTv2 training file (`torch.save` dict with `model`/`ema`/`opt`/`args`; `ema` is taken),
a bare state dict (`.pt`/`.pth` or `.safetensors`), this project's training checkpoint (it also holds `config`),
a `save_pretrained` model folder, a diffusers `DiTTransformer2DModel` folder (converted to DiT exactly), or a
pipeline folder (its `transformer/`), ours or diffusers' (e.g. `DiTPipeline.save_pretrained`).
"""

import argparse
import inspect
import math
import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .checks import read_json_object
from .devices import available_device
from .diffusers_dit import DIFFUSERS_DIT_CLASSES, dit_config, dit_state_dict
from .models import DiT, EDT, MDTv2
from .models.registry import MODEL_CONFIGS

MODEL_CLASSES = {"EDT": EDT, "DiT": DiT, "MDTv2": MDTv2}
MDT_MASK_RATIO = 0.3  # what the released MDTv2 runs train with; a state dict does not record it


def safe_torch_load(path) -> dict:
    """torch.load(weights_only=True) that also allows argparse.Namespace; anything else pickled is refused."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with open(path, "rb") as file:
        is_pickle = file.read(1) == b"\x80"  # the protocol opcode every pickle since protocol 2 starts with
    if not (zipfile.is_zipfile(path) or is_pickle):
        raise ValueError(f"{path}: not a PyTorch checkpoint (expected the zip archive torch.save writes, or an older "
                         f"pickle)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: refused to load, not a plain weights file ({_refusal_reason(error)})") from None
    except Exception as error:  # a damaged archive or pickle fails in many ways (RuntimeError, EOFError, KeyError...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: unreadable checkpoint ({reason})") from None


TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to load the file with weights_only=False."""
    for line in str(error).splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        if line and not line.startswith(TORCH_ADVICE):
            return line.split(" Please use")[0].rstrip(".")
    return "it holds more than tensors and plain values"


def model_config(model) -> dict:
    """JSON-able config of a model (EDT, DiT, MDTv2) with `_class_name`, that `model_from_config` turns back."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    return {"_class_name": type(model).__name__, **config}


def model_from_config(config: dict):
    """Build (untrained) the model described by `model_config`."""
    config = dict(config)
    name = config.pop("_class_name", None)
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {name!r}: expected one of {', '.join(MODEL_CLASSES)}")
    allowed = inspect.signature(MODEL_CLASSES[name].__init__).parameters
    return MODEL_CLASSES[name](**{k: v for k, v in config.items() if k in allowed})


def model_from_checkpoint(checkpoint: dict, weights: str = "ema"):
    """The model of a loaded `edt-lab train` checkpoint with its "ema" or raw "model" weights, in eval mode."""
    model = model_from_config(checkpoint["config"])
    model.load_state_dict(checkpoint[weights])
    return model.eval()


def _namespace_value(args, key):
    return getattr(args, key, None) if isinstance(args, argparse.Namespace) else None


def count_blocks(state_dict: dict, prefix: str) -> int:
    """How many blocks `prefix.{i}.*` a state dict holds (0 when none)."""
    return 1 + max((int(k.split(".")[1]) for k in state_dict if k.startswith(f"{prefix}.")), default=-1)


def infer_config(state_dict: dict, args=None) -> dict:
    """Architecture of an EDT, DiT or MDTv2 state dict from its tensor shapes alone (DiT heads: registry or `args`;
    MDTv2's mask ratio, which only training uses: `args`, else the released 0.3)."""
    if "x_embedder.proj.weight" not in state_dict or "final_layer.linear.weight" not in state_dict:
        raise ValueError("not an EDT, DiT or MDTv2 state dict: no x_embedder.proj.weight / final_layer.linear.weight")
    width, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
    grid = math.isqrt(state_dict["pos_embed"].shape[1])
    out_channels = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
    table_rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    first_block = "en_inblocks.0" if "en_inblocks.0.attn.qkv.weight" in state_dict else "blocks.0"
    mlp_ratio = state_dict[f"{first_block}.mlp.fc1.weight"].shape[0] / width
    common = dict(input_size=grid * patch, patch_size=patch, in_channels=in_channels, num_classes=table_rows - 1,
                  learn_sigma=out_channels == 2 * in_channels, mlp_ratio=mlp_ratio)
    if first_block == "en_inblocks.0":
        decode_layer = count_blocks(state_dict, "de_blocks")
        heads = state_dict["en_inblocks.0.attn.rel_pos_bias.relative_position_bias_table"].shape[1]
        mask_ratio = _namespace_value(args, "mask_ratio")
        return {"_class_name": "MDTv2", **common, "hidden_size": width, "num_heads": heads,
                "depth": 2 * count_blocks(state_dict, "en_inblocks") + decode_layer, "decode_layer": decode_layer,
                "mask_ratio": MDT_MASK_RATIO if mask_ratio is None else float(mask_ratio)}
    num_blocks = count_blocks(state_dict, "blocks")
    widths = [state_dict[f"blocks.{i}.attn.qkv.weight"].shape[1] for i in range(num_blocks)]
    if "down_blocks.0.reduction.weight" in state_dict:
        # Blocks come in five runs of equal width; neighbouring stages differ in width in every EDT.
        runs = []
        for i, w in enumerate(widths):
            if runs and runs[-1][0] == w:
                runs[-1][1] += 1
            else:
                runs.append([w, 1])
        if len(runs) != 5:
            raise ValueError(f"cannot split the {num_blocks} EDT blocks into five stages by width")
        heads, start = [], 0
        for _, depth in runs:
            heads.append(state_dict[f"blocks.{start}.attn.rel_pos_bias.relative_position_bias_table"].shape[1])
            start += depth
        return {"_class_name": "EDT", **common, "dims": [w for w, _ in runs], "stages_depth": [d for _, d in runs],
                "num_heads": heads}
    heads = next((kw["num_heads"] for cls, kw in MODEL_CONFIGS.values()
                  if cls is DiT and kw["hidden_size"] == width and kw["depth"] == num_blocks), None)
    heads = heads or _namespace_value(args, "num_heads") or width // 64  # DiT's sizes all use 64-wide heads
    return {"_class_name": "DiT", **common, "hidden_size": width, "depth": num_blocks, "num_heads": heads}


def check_state_dict(model, state_dict: dict, source) -> None:
    """Raise ValueError naming `source` and the first missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing:
        problems.append(f"missing keys {missing[:3]}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:3]}")
    if shapes:
        k = shapes[0]
        problems.append(f"mis-shaped {k}: file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)}")
    if problems:
        raise ValueError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(problems))


def _weights_from_file(path: Path):
    """(state dict, config or None, args or None) of a .pt/.pth/.safetensors file."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path), None, None
        except SafetensorError as error:  # a cut-short or foreign file
            raise ValueError(f"{path}: not a readable .safetensors file ({error})") from None
    content = safe_torch_load(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a dict of tensors or a training checkpoint, got {type(content).__name__}")
    if "ema" in content or "model" in content:  # training file: the EMA weights are the released ones
        weights = content.get("ema") or content["model"]
        return weights, content.get("config"), content.get("args")
    return content, None, None


def _load_diffusers_dit(folder: Path, config: dict):
    """edt_lab's DiT from a diffusers DiTTransformer2DModel folder, its weights converted exactly."""
    files = [folder / f"diffusion_pytorch_model.{suffix}" for suffix in ("safetensors", "bin")]
    weights = next((file for file in files if file.is_file()), None)
    if weights is None:
        raise ValueError(f"{folder}: no diffusion_pytorch_model.safetensors or .bin beside config.json")
    try:
        model = model_from_config(dit_config(config))
        state_dict = dit_state_dict(_weights_from_file(weights)[0], model.config.depth)
    except ValueError as error:
        raise ValueError(f"{weights}: {error}") from None
    state_dict["pos_embed"] = model.pos_embed.data  # the fixed table, which diffusers computes instead of storing
    check_state_dict(model, state_dict, weights)
    model.load_state_dict(state_dict, strict=True)
    return model


def load_checkpoint(path, device="cpu"):
    """A ready EDT, DiT or MDTv2 (eval mode) from any accepted file or folder."""
    device = available_device(device)  # before any reading: torch's own message comes only at the move
    path = Path(path)
    if path.is_dir():
        folder = path / "transformer" if (path / "model_index.json").is_file() else path
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise ValueError(f"{path}: no config.json (expected a save_pretrained model or pipeline folder)")
        config = read_json_object(config_file)
        name = config.get("_class_name")
        if name is None and (path / "checkpoints").is_dir():  # config.json then holds the run's arguments
            raise ValueError(f"{path}: a training run folder, not a model: pass one of its checkpoints "
                             f"({path / 'checkpoints'}/step_*.pt), or write it as a pipeline folder first with "
                             f"`edt-lab export {path} OUT_DIR`")
        if name in DIFFUSERS_DIT_CLASSES:
            return _load_diffusers_dit(folder, config).to(device).eval()
        if name not in MODEL_CLASSES:
            raise ValueError(f"{config_file}: unknown model class {name!r}: expected one of "
                             f"{', '.join(MODEL_CLASSES)} or a diffusers {' / '.join(DIFFUSERS_DIT_CLASSES)}")
        return MODEL_CLASSES[name].from_pretrained(folder).to(device).eval()
    if not path.exists():
        raise ValueError(f"{path}: no such file or folder")
    state_dict, config, args = _weights_from_file(path)
    model = model_from_config(config or infer_config(state_dict, args))
    check_state_dict(model, state_dict, path)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()
