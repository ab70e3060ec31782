"""Numeric precision of the forwards: fp32, bf16 autocast, or "auto" (bf16 where the hardware computes it natively).

bf16 runs the matrix products in bfloat16 under `torch.autocast` while the weights, the normalisations, the
softmax and the sampler stay in float32. It pays only on hardware with bf16 arithmetic (`edt_lab.accel.supports`);
elsewhere it is emulated and slower than fp32, so asking for it there is an error and "auto" picks fp32.
`resolve_precision` is the one check every entry point makes: sample, eval, train, the app, the pipeline and the
benchmarks.
"""

from contextlib import nullcontext

import torch

from . import accel
from .names import PRECISIONS


def resolve_precision(precision: str, device) -> torch.dtype:
    """"fp32", "bf16" or "auto" on `device` -> the compute dtype; bf16 without hardware support is a one-line
    ValueError naming what the device lacks."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if accel.supports("bf16", device):
        return torch.bfloat16
    if precision == "auto":
        return torch.float32
    raise ValueError(f"precision bf16: {accel.refusal('bf16', device)}: use fp32 or auto")


def autocast(device, dtype: torch.dtype):
    """The context that runs the forwards inside it at `dtype`: bf16 autocast, or nothing for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def enable_tf32() -> None:
    """Let float32 matrix products and convolutions on CUDA use TF32, as the released DiT and EDT scripts do."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
