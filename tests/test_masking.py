"""Masks of the masked training pass: EDT's drop rates, one p per batch, independence, input-zero exact counts."""

import numpy as np
import pytest
import torch

from edt_lab.masking import MASKING_STRATEGIES, draw_masks, edt_masks, input_zero_masks, mask_grids, masking_strategies
from edt_lab.models import TokenMasks, create_model

TINY = dict(dims=(16, 24, 32, 24, 16), num_heads=(1, 1, 1, 1, 1), stages_depth=(1, 1, 1, 1, 1))


@pytest.fixture(scope="module")
def edt():
    torch.manual_seed(0)
    return create_model("EDT-T/2", **TINY)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return create_model("DiT-T/2", hidden_size=16, depth=1, num_heads=1)


def drop_fractions(model, draws: int, batch_size: int, seed: int = 0):
    """Per draw and per sample drop fractions of the two EDT masks: two arrays (draws, batch_size)."""
    generator = torch.Generator().manual_seed(seed)
    masks = [edt_masks(model, batch_size, generator, "cpu") for _ in range(draws)]
    return [torch.stack([1 - m.down[j].float().mean(1) for m in masks]).numpy() for j in (0, 1)]


def test_edt_masks_shapes_and_places(edt):
    masks = edt_masks(edt, 3, torch.Generator().manual_seed(0), "cpu")
    assert isinstance(masks, TokenMasks)
    assert masks.input is None and masks.pos_replace is None  # EDT-T/2 has 2 (< 5) blocks in stage 0
    assert [tuple(m.shape) for m in masks.down] == [(3, 256), (3, 64)]
    assert all(m.dtype == torch.bool for m in masks.down)


def test_edt_drop_rates_follow_the_spec(edt):
    first, second = drop_fractions(edt, draws=1500, batch_size=8)
    # The mean drop fraction is the middle of the range; every draw's fraction stays inside it (plus binomial noise).
    assert 0.44 < first.mean() < 0.46 and 0.14 < second.mean() < 0.16
    noise_first, noise_second = 4 * np.sqrt(0.25 / (8 * 256)), 4 * np.sqrt(0.25 / (8 * 64))
    assert first.mean(1).min() > 0.4 - noise_first and first.mean(1).max() < 0.5 + noise_first
    assert second.mean(1).min() > 0.1 - noise_second and second.mean(1).max() < 0.2 + noise_second
    # One p ~ U(low, high) per batch: batch means spread like a uniform of width 0.1 (variance 0.1^2 / 12).
    for fractions, num_tokens in ((first, 256), (second, 64)):
        batch_p = fractions.mean(1)
        spread = batch_p.var() - (batch_p * (1 - batch_p)).mean() / (8 * num_tokens)  # minus the binomial part
        assert 0.7 * 0.01 / 12 < spread < 1.3 * 0.01 / 12


def test_one_p_per_batch_and_independent_tokens(edt):
    first, _ = drop_fractions(edt, draws=800, batch_size=16, seed=1)
    # Given the batch's p, per-sample drop counts are binomial: within-batch variance ~ p (1 - p) / N.
    p = first.mean(1, keepdims=True)
    ratio = first.var(1, ddof=1).mean() / (p * (1 - p) / 256).mean()
    assert 0.85 < ratio < 1.15
    # Neighbouring tokens (right and below in the 16x16 grid) are uncorrelated.
    generator = torch.Generator().manual_seed(2)
    grids = np.concatenate([mask_grids(edt_masks(edt, 16, generator, "cpu"), edt)["down_blocks.0"]
                            for _ in range(200)])  # (3200, 16, 16)
    for a, b in ((grids[:, :, :-1], grids[:, :, 1:]), (grids[:, :-1, :], grids[:, 1:, :])):
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02


def test_masks_are_reproducible_from_the_generator(edt):
    a = edt_masks(edt, 4, torch.Generator().manual_seed(5), "cpu")
    b = edt_masks(edt, 4, torch.Generator().manual_seed(5), "cpu")
    c = edt_masks(edt, 4, torch.Generator().manual_seed(6), "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.down, b.down))
    assert not torch.equal(a.down[0], c.down[0])


def test_pos_replace_only_with_a_deep_first_stage():
    torch.manual_seed(0)
    deep = create_model("EDT-T/2", **{**TINY, "stages_depth": (5, 1, 1, 1, 1)})
    generator = torch.Generator().manual_seed(0)
    fractions = [1 - edt_masks(deep, 8, generator, "cpu").pos_replace.float().mean().item() for _ in range(400)]
    assert 0.19 < np.mean(fractions) < 0.21
    assert edt_masks(deep, 8, generator, "cpu", pos_replace_ratio=None).pos_replace is None


def test_input_zero_masks_drop_an_exact_count_per_sample(edt, dit):
    generator = torch.Generator().manual_seed(0)
    counts = []
    for model in (edt, dit):
        for _ in range(300):
            masks = input_zero_masks(model, 6, generator, "cpu")
            assert masks.down == () and masks.pos_replace is None
            dropped = (~masks.input).sum(1)  # (B,)
            assert (dropped == dropped[0]).all()  # the same count in every sample of the batch...
            assert not (masks.input == masks.input[0]).all()  # ...at different places
            counts.append(dropped[0].item() / 256)
    assert min(counts) >= 0.3 - 1 / 256 and max(counts) <= 0.5 + 1 / 256
    assert 0.39 < np.mean(counts) < 0.41


def test_masked_forward_runs_with_drawn_masks(edt, dit):
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([10, 500]), torch.tensor([1, 2])
    generator = torch.Generator().manual_seed(0)
    for strategy, model in (("edt", edt), ("input-zero", edt), ("input-zero", dit)):
        out = model(x, t, y, masks=draw_masks(strategy, model, 2, generator, "cpu"))
        assert out.shape == (2, 2, 32, 32) and torch.isfinite(out).all()


def reduction_inputs(model, *args, **kwargs):
    """Run model(*args, **kwargs) and return what enters down_blocks.j.reduction, {j: (B, N_j/4, 4C_j)}."""
    seen = {}
    hooks = [model.down_blocks[j].reduction.register_forward_pre_hook(
        lambda module, inputs, j=j: seen.__setitem__(j, inputs[0].detach())) for j in (0, 1)]
    try:
        model(*args, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_down_sampling_masks_reach_reduction_as_zeroed_slots():
    # The masked forward differs from the unmasked one, and each dropped token's slot of the merged 4C vector is
    # zero where it enters `reduction` (after the adaLN modulation), while kept slots are not.
    torch.manual_seed(0)
    edt = create_model("EDT-T/2", **TINY)
    with torch.no_grad():
        for param in edt.parameters():  # random weights everywhere, so the zero-initialised layers pass signal
            param.normal_(0, 0.1)
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([10, 500]), torch.tensor([1, 2])
    masks = edt_masks(edt, 2, torch.Generator().manual_seed(1), "cpu")
    with torch.no_grad():
        assert (edt(x, t, y, masks=masks) - edt(x, t, y)).abs().max() > 1e-4
        merged_inputs = reduction_inputs(edt, x, t, y, masks=masks)
    for j, grid in ((0, 16), (1, 8)):
        merged = merged_inputs[j]
        keep = masks.down[j].view(2, grid // 2, 2, grid // 2, 2)  # (B, row/2, row%2, col/2, col%2)
        # Slots of a merged token: (even row, even col), (odd row, even col), (even row, odd col), (odd, odd).
        slot_keep = torch.stack([keep[:, :, 0, :, 0], keep[:, :, 1, :, 0], keep[:, :, 0, :, 1], keep[:, :, 1, :, 1]],
                                dim=-1).reshape(2, -1, 4)  # (B, N_j/4, 4)
        slots = merged.view(2, -1, 4, merged.shape[-1] // 4)
        assert 0 < (~slot_keep).sum() < slot_keep.numel()
        assert torch.all(slots[~slot_keep] == 0)
        assert torch.all(slots[slot_keep].abs().sum(-1) > 0)


def test_draw_masks_names(edt, dit):
    generator = torch.Generator().manual_seed(0)
    assert draw_masks("none", edt, 2, generator, "cpu") is None
    assert draw_masks(None, edt, 2, generator, "cpu") is None
    assert len(draw_masks("edt", edt, 2, generator, "cpu").down) == 2
    assert draw_masks("input-zero", dit, 2, generator, "cpu").input.shape == (2, 256)
    with pytest.raises(ValueError, match="unknown masking strategy"):
        draw_masks("random", edt, 2, generator, "cpu")
    with pytest.raises(ValueError, match="needs an EDT model"):
        draw_masks("edt", dit, 2, generator, "cpu")
    with pytest.raises(ValueError, match="ratios"):
        edt_masks(edt, 2, generator, "cpu", ratios=((0.5, 0.4), (0.1, 0.2)))
    with pytest.raises(ValueError, match="ratio"):
        input_zero_masks(edt, 2, generator, "cpu", ratio=(0.3, 1.5))


def test_mask_grids(edt):
    masks = edt_masks(edt, 3, torch.Generator().manual_seed(0), "cpu")
    grids = mask_grids(masks, edt)
    assert set(grids) == {"down_blocks.0", "down_blocks.1"}
    assert grids["down_blocks.0"].shape == (3, 16, 16) and grids["down_blocks.1"].shape == (3, 8, 8)
    # Row-major: token r * n + c sits at grid[r, c].
    np.testing.assert_array_equal(grids["down_blocks.0"][1, 2, 5], masks.down[0][1, 2 * 16 + 5].float().numpy())
    assert set(np.unique(grids["down_blocks.1"])) <= {0.0, 1.0}
    assert mask_grids(None, edt) == {}
    assert set(mask_grids(input_zero_masks(edt, 2, torch.Generator(), "cpu"), edt)) == {"input"}
    with pytest.raises(ValueError, match="mask must be"):
        mask_grids(TokenMasks(input=torch.ones(2, 100, dtype=torch.bool)), edt)


def test_each_model_is_offered_the_masked_passes_it_can_train_with():
    edt, dit = create_model("EDT-T/2"), create_model("DiT-T/2", depth=2, hidden_size=12, num_heads=1)
    mdt = create_model("MDTv2-T/2", mask_ratio=0.3)
    assert masking_strategies(edt) == ("edt", "input-zero", "none")
    assert masking_strategies(dit) == ("input-zero", "none")
    assert masking_strategies(mdt) == ("mdt", "none")
    generator = torch.Generator().manual_seed(0)
    for model in (edt, dit, mdt):  # each strategy offered draws masks for its model; the others are refused
        for strategy in MASKING_STRATEGIES:
            if strategy in masking_strategies(model):
                draw_masks(strategy, model, 2, generator, "cpu")
            else:
                with pytest.raises(ValueError):
                    draw_masks(strategy, model, 2, generator, "cpu")
