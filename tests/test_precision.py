"""Precision: bf16 only where the hardware computes it natively, "auto" picks it there, and autocast in between."""

import pytest
import torch

from edt_lab.precision import autocast, resolve_precision


def test_resolve_precision_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: feature == "bf16")
    assert resolve_precision("bf16", "cpu") == resolve_precision("auto", "cpu") == torch.bfloat16
    assert resolve_precision("fp32", "cpu") == torch.float32
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: False)
    assert resolve_precision("auto", "cpu") == resolve_precision("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match=r"^precision bf16: this CPU \(.*\) lacks native bf16 .*: use fp32 or auto$"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'fp16': expected one of fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")


def test_autocast_runs_matrix_products_in_bf16_and_fp32_changes_nothing():
    linear = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast("cpu", torch.bfloat16):
        assert linear(x).dtype == torch.bfloat16
    with autocast("cpu", torch.float32):
        assert linear(x).dtype == torch.float32 and torch.equal(linear(x), linear(x))
