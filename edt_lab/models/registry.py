"""Named configurations: the released EDT, DiT and MDTv2 sizes and the CPU-sized tiny ones used in this project."""

import inspect

from .dit import DiT
from .edt import EDT
from .mdt import MDTv2

MODEL_CONFIGS = {
    "EDT-S/2": (EDT, dict(dims=(312, 416, 520, 416, 312), num_heads=(6, 8, 10, 8, 6), stages_depth=(2, 2, 2, 3, 3))),
    "EDT-B/2": (EDT, dict(dims=(624, 832, 1040, 832, 624), num_heads=(12, 16, 20, 16, 12),
                          stages_depth=(2, 2, 2, 3, 3))),
    "EDT-XL/2": (EDT, dict(dims=(936, 1248, 1560, 1248, 936), num_heads=(18, 24, 30, 24, 18),
                           stages_depth=(6, 4, 4, 7, 7))),
    "DiT-S/2": (DiT, dict(hidden_size=384, depth=12, num_heads=6)),
    "DiT-B/2": (DiT, dict(hidden_size=768, depth=12, num_heads=12)),
    "DiT-XL/2": (DiT, dict(hidden_size=1152, depth=28, num_heads=16)),
    # MDTv2 as the released scripts train it: mask ratio 0.3 (+ U(0, 0.2) per batch), 4 decoder blocks.
    "MDTv2-S/2": (MDTv2, dict(hidden_size=384, depth=12, num_heads=6, mask_ratio=0.3, decode_layer=4)),
    "MDTv2-B/2": (MDTv2, dict(hidden_size=768, depth=12, num_heads=12, mask_ratio=0.3, decode_layer=4)),
    "MDTv2-XL/2": (MDTv2, dict(hidden_size=1152, depth=28, num_heads=16, mask_ratio=0.3, decode_layer=4)),
    # Tiny models for 32x32 single-channel digits on a CPU (a 16 x 16 token grid, as ImageNet 256 latents).
    "EDT-T/2": (EDT, dict(dims=(64, 96, 128, 96, 64), num_heads=(2, 3, 4, 3, 2), stages_depth=(2, 2, 2, 3, 3),
                          input_size=32, in_channels=1, num_classes=10)),
    "DiT-T/2": (DiT, dict(hidden_size=96, depth=12, num_heads=3, input_size=32, in_channels=1, num_classes=10)),
    "MDTv2-T/2": (MDTv2, dict(hidden_size=96, depth=12, num_heads=3, mask_ratio=0.3, decode_layer=4, input_size=32,
                              in_channels=1, num_classes=10)),
}
MODEL_NAMES = tuple(MODEL_CONFIGS)


def create_model(name: str, **overrides):
    """Build a registered model, e.g. create_model("EDT-S/2") or create_model("EDT-T/2", num_classes=5)."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    cls, kwargs = MODEL_CONFIGS[name]
    accepted = [key for key in inspect.signature(cls).parameters if key not in ("self", "kwargs")]
    unknown = [key for key in overrides if key not in accepted]
    if unknown:
        raise ValueError(f"{name} has no option {unknown[0]!r}: expected some of {', '.join(accepted)}")
    return cls(**{**kwargs, **overrides})
