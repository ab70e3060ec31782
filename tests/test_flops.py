"""Cost accounting against the released figures and against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edt_lab.cli import main
from edt_lab.flops import count_macs, count_params
from edt_lab.models import create_model, set_attention_path

RELEASED_GFLOPS = {"EDT-S/2": (2.667, 0.001), "EDT-B/2": (10.218, 0.001), "EDT-XL/2": (53.440, 0.001),
                   "DiT-S/2": (6.06, 0.01), "DiT-B/2": (23.01, 0.01), "DiT-XL/2": (118.64, 0.01)}


@pytest.mark.parametrize("name", list(RELEASED_GFLOPS))
def test_released_gflops(name, manifest):
    with torch.device("meta"):
        model = create_model(name)
    expected, tolerance = RELEASED_GFLOPS[name]
    assert abs(count_macs(model).gflops - expected) <= tolerance * expected
    assert count_params(model)["trainable"] == manifest[name]["trainable_params"]
    if "all_params" in manifest[name]:
        assert count_params(model)["total"] == manifest[name]["all_params"]


@pytest.mark.parametrize("name", ["EDT-T/2", "DiT-T/2", "MDTv2-T/2"])
def test_flop_counter_agrees_with_the_analytic_count(name):
    """FlopCounterMode counts 2 FLOPs per multiply-accumulate of the matrix products it sees (one sample)."""
    model = create_model(name).eval()
    set_attention_path(model, fused=False)  # explicit attention products, which the counter sees as matmuls
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 1, 32, 32), torch.tensor([10]), torch.tensor([3]))
    assert counter.get_total_flops() == 2 * count_macs(model).total
    # the explicit path's only batched products are the attention products (QK^T and AV)
    assert counter.get_flop_counts()["Global"][torch.ops.aten.bmm] == 2 * count_macs(model).attention_total


def test_breakdown_sums_to_total_and_stages_follow_the_pyramid():
    with torch.device("meta"):
        report = count_macs(create_model("EDT-S/2"))
    assert sum(report.by_stage().values()) == report.total
    assert list(report.by_stage()) == ["embed", "stage 0", "stage 1", "stage 2", "stage 3", "stage 4", "final"]
    # the wide, high-resolution stages cost most: the reason EDT moves work to the down-sampled stages
    assert report.by_stage()["stage 4"] > report.by_stage()["stage 2"]


def test_flops_command_prints_the_table(capsys):
    assert main(["flops", "EDT-S/2", "DiT-S/2"]) == 0
    out = capsys.readouterr().out
    assert "EDT-S/2: 2.667 GFLOPs" in out and "multiply-accumulates" in out and "down_blocks.1" in out
    assert "DiT-S/2: 6.056 GFLOPs" in out
    assert "attention products (QK^T and AV): 0.222 GMACs, 8.3% of the total" in out  # EDT-S/2


def test_count_macs_names_what_it_expects():
    with pytest.raises(ValueError, match=r"count_macs expects an EDT, DiT or MDTv2 model \(for a registered name, "
                                         r"count_macs\(create_model\(name\)\)\), got str"):
        count_macs("EDT-T/2")

