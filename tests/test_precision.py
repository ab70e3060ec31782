"""Precision: bf16 only where the hardware computes it natively, "auto" picks it there, and autocast in between."""

import pytest
import torch

from edt_lab import precision
from edt_lab.precision import autocast, native_bf16, resolve_precision


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU's feature flags: cpu_flags(["avx512_bf16"])."""
    def set_flags(flags):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    return set_flags


def test_native_bf16_follows_the_cpu_flags(cpu_flags):
    for flags, native in ((["avx512f", "avx512_bf16"], True), (["amx_tile", "amx_bf16"], True),
                          (["avx2", "avx512f"], False), ([], False)):
        cpu_flags(flags)
        assert native_bf16("cpu") is native, flags


def test_resolve_precision_picks_bf16_only_on_native_hardware(cpu_flags):
    cpu_flags(["avx512_bf16"])
    assert resolve_precision("bf16", "cpu") == resolve_precision("auto", "cpu") == torch.bfloat16
    assert resolve_precision("fp32", "cpu") == torch.float32
    cpu_flags(["avx2"])
    assert resolve_precision("auto", "cpu") == resolve_precision("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="bf16 needs native bf16 hardware .* which this cpu lacks: use fp32 or auto"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'fp16': expected one of fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")


def test_cpu_flags_reads_this_machine():
    flags = precision.cpu_flags()
    assert isinstance(flags, frozenset) and all(isinstance(flag, str) and " " not in flag for flag in flags)


def test_autocast_runs_matrix_products_in_bf16_and_fp32_changes_nothing():
    linear = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast("cpu", torch.bfloat16):
        assert linear(x).dtype == torch.bfloat16
    with autocast("cpu", torch.float32):
        assert linear(x).dtype == torch.float32 and torch.equal(linear(x), linear(x))
