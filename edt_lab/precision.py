"""Numeric precision of the forwards: fp32, bf16 autocast, or "auto" (bf16 where the hardware computes it natively).

bf16 runs the matrix products in bfloat16 under `torch.autocast` while the weights, the normalisations, the
softmax and the sampler stay in float32. It pays only on hardware with bf16 arithmetic: CUDA GPUs of compute
capability 8 (Ampere) and later, and CPUs with AVX512-BF16 or AMX; elsewhere it is emulated and slower than fp32,
so asking for it there is an error and "auto" picks fp32. In CPU inference the models' Linears (and the MLPs'
GELU) then run as single oneDNN kernels (`edt_lab.models.layers.Linear`).
"""

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "auto")
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
NATIVE_BF16_HARDWARE = ("a CUDA GPU of compute capability 8 or later, or a CPU with "
                        + " or ".join(NATIVE_BF16_CPU_FLAGS))


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device) -> bool:
    """True when `device` computes bf16 matrix products in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device) -> torch.dtype:
    """"fp32", "bf16" or "auto" on `device` -> the compute dtype; bf16 without hardware support is a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp32":
        return torch.float32
    if native_bf16(device):
        return torch.bfloat16
    if precision == "auto":
        return torch.float32
    raise ValueError(f"precision bf16 needs native bf16 hardware ({NATIVE_BF16_HARDWARE}), which this "
                     f"{device.type} lacks: use fp32 or auto")


def autocast(device, dtype: torch.dtype):
    """The context that runs the forwards inside it at `dtype`: bf16 autocast, or nothing for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def enable_tf32() -> None:
    """Let float32 matrix products and convolutions on CUDA use TF32, as the released DiT and EDT scripts do."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
