"""Keep-masks (1 keep, 0 drop) for the masked training pass: EDT's token relation-enhanced masking and MDT's.

Strategies: "edt" (EDT: tokens dropped inside the down-sampling modules), "mdt" (MDTv2: tokens removed from its
encoder, filled in by its side-interpolator), "input-zero" (EDT or DiT: MDT's token counts, but the dropped tokens
are zeroed at the input, as these models have no side-interpolator) and "none".

Every function is pure: all randomness comes from the `generator` passed in, so a training run that checkpoints
the generator's state draws the same masks after a resume.
"""

import numpy as np
import torch

from .models import EDT, MDTv2, TokenMasks, TokenRemoval
from .models.edt import POS_REPLACE_BLOCK
from .names import MASKING_STRATEGIES

MDT_RATIO_SPAN = 0.2  # MDT draws the mask ratio from U(mask_ratio, mask_ratio + 0.2) once per batch


def _check_range(name: str, low_high) -> tuple[float, float]:
    """Validate a (low, high) drop-probability range inside [0, 1]."""
    low, high = (float(v) for v in low_high)
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high <= 1, got {tuple(low_high)}")
    return low, high


def _uniform(low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """One number drawn from U(low, high), as a 0-d tensor on the generator's device."""
    return low + (high - low) * torch.rand((), generator=generator, device=generator.device)


def bernoulli_keep_mask(batch_size: int, num_tokens: int, drop_range, generator: torch.Generator, device):
    """(B, N) bool keep-mask: one p ~ U(drop_range) for the batch, then each token dropped independently with p."""
    p = _uniform(*drop_range, generator)
    keep = torch.rand(batch_size, num_tokens, generator=generator, device=generator.device) >= p
    return keep.to(device)


def edt_masks(model, batch_size: int, generator: torch.Generator, device, ratios=((0.4, 0.5), (0.1, 0.2)),
              pos_replace_ratio=(0.15, 0.25)) -> TokenMasks:
    """EDT's masks (spec section 5): tokens entering down_blocks.0 / down_blocks.1 dropped with p ~ U(ratios[j]).

    `ratios` holds the drop-probability ranges of the two down-sampling modules. `pos_replace_ratio` is the range
    of EDT-XL's extra mask (tokens replaced by the positional embedding before block 4 of stage 0); it is drawn
    only for models with more than 4 blocks in stage 0, and None turns it off.
    """
    if not isinstance(model, EDT):
        raise ValueError(f"EDT masking needs an EDT model, got {type(model).__name__}: use 'mdt' for an MDTv2, "
                         f"'input-zero' or 'none' for a DiT")
    if len(ratios) != 2:
        raise ValueError(f"ratios must hold two (low, high) ranges, one per down-sampling module, got {ratios}")
    ranges = [_check_range(f"ratios[{j}]", r) for j, r in enumerate(ratios)]
    down = tuple(
        bernoulli_keep_mask(batch_size, grid * grid, drop, generator, device)
        for grid, drop in zip(model.stage_grids[:2], ranges)  # (B, N_0), (B, N_1)
    )
    pos_replace = None
    if pos_replace_ratio is not None and model.config.stages_depth[0] > POS_REPLACE_BLOCK:
        grid = model.stage_grids[0]
        pos_replace = bernoulli_keep_mask(batch_size, grid * grid, _check_range("pos_replace_ratio", pos_replace_ratio),
                                          generator, device)
    return TokenMasks(down=down, pos_replace=pos_replace)


def random_subset(batch_size: int, num_tokens: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool on the generator's device: `count` tokens chosen at random in each sample, independently."""
    noise = torch.rand(batch_size, num_tokens, generator=generator, device=generator.device)  # (B, N)
    rank = noise.argsort(dim=1).argsort(dim=1)  # each token's rank in its sample's random order
    return rank < count


def input_zero_masks(model, batch_size: int, generator: torch.Generator, device, ratio=(0.3, 0.5)) -> TokenMasks:
    """Input-zeroing masks for EDT or DiT: one ratio r ~ U(ratio) per batch, exactly round(r N) random tokens of
    each sample zeroed at the input (after the positional embedding); every block still sees all N slots.

    The default ratio follows the released MDTv2 (mask_ratio 0.3 plus U(0, 0.2)); MDTv2 itself removes the
    tokens instead (`mdt_masks`).
    """
    if isinstance(model, MDTv2):
        raise ValueError("MDTv2 removes masked tokens instead of zeroing them: use masking 'mdt'")
    low, high = _check_range("ratio", ratio)
    num_tokens = (model.config.input_size // model.config.patch_size) ** 2
    num_drop = int(torch.round(_uniform(low, high, generator) * num_tokens))
    return TokenMasks(input=random_subset(batch_size, num_tokens, num_tokens - num_drop, generator).to(device))


def mdt_masks(model, batch_size: int, generator: torch.Generator, device) -> TokenRemoval:
    """MDT's masks for MDTv2, as released: one ratio r ~ U(mask_ratio, mask_ratio + 0.2) per batch, then every
    sample keeps int(N (1 - r)) random tokens (at least one) for the encoder; the others are removed."""
    if not isinstance(model, MDTv2):
        raise ValueError(f"MDT masking removes tokens and needs an MDTv2 model, got {type(model).__name__}: use "
                         f"'input-zero' (MDT's counts, tokens zeroed), 'edt' for an EDT, or 'none'")
    mask_ratio = model.config.mask_ratio
    if mask_ratio is None:
        raise ValueError("this MDTv2 has no mask_ratio (its mask token is frozen): build it with one, e.g. 0.3, "
                         "to train with MDT masking")
    num_tokens = model.grid_size**2
    ratio = _uniform(mask_ratio, mask_ratio + MDT_RATIO_SPAN, generator)  # float32, as the released torch.rand
    num_keep = max(int(num_tokens * (1 - ratio)), 1)
    return TokenRemoval(random_subset(batch_size, num_tokens, num_keep, generator).to(device))


def masking_strategies(model) -> tuple[str, ...]:
    """The masked passes `model` can train with, its own first: "edt" and "input-zero" for an EDT, "mdt" for an
    MDTv2, "input-zero" for a DiT (released without one: `default_masking`); "none" (no masked pass) for any."""
    if isinstance(model, EDT):
        return "edt", "input-zero", "none"
    return ("mdt", "none") if isinstance(model, MDTv2) else ("input-zero", "none")


def default_masking(model) -> str:
    """The masking a model trains with as released: "edt" for EDT, "mdt" for MDTv2, "none" for DiT."""
    return "edt" if isinstance(model, EDT) else "mdt" if isinstance(model, MDTv2) else "none"


def with_unmasked_first_half(masks: TokenMasks) -> TokenMasks:
    """`masks` of a batch of B as masks of a batch of 2B whose first B images keep every token: the full pass and
    the masked pass in one forward (a kept token passes through unchanged, so the first half is the full pass)."""
    def doubled(keep):
        return None if keep is None else torch.cat([torch.ones_like(keep), keep])
    return TokenMasks(input=doubled(masks.input), down=tuple(doubled(keep) for keep in masks.down),
                      pos_replace=doubled(masks.pos_replace))


def draw_masks(strategy, model, batch_size: int, generator: torch.Generator, device):
    """Masks of one masked pass by strategy name (see MASKING_STRATEGIES); None for "none"/None (no masked pass)."""
    if strategy is None or strategy == "none":
        return None
    if strategy == "edt":
        return edt_masks(model, batch_size, generator, device)
    if strategy == "mdt":
        return mdt_masks(model, batch_size, generator, device)
    if strategy == "input-zero":
        return input_zero_masks(model, batch_size, generator, device)
    raise ValueError(f"unknown masking strategy {strategy!r}: expected one of {', '.join(MASKING_STRATEGIES)}")


def mask_grids(masks: TokenMasks | TokenRemoval | None, model) -> dict[str, np.ndarray]:
    """Each mask of `masks` as a (B, n, n) float array (1 keep, 0 drop), keyed by where it acts, for drawing.

    Keys, for the masks that are set: "input" (input-zero masks, MDT's removal), "down_blocks.0", "down_blocks.1",
    "pos_replace". Tokens are row-major; n is the model's token grid at that place (down_blocks.j sees the grid
    halved j times).
    """
    if masks is None:
        return {}
    grid = model.config.input_size // model.config.patch_size
    if isinstance(masks, TokenRemoval):
        places = [("input", masks.keep, grid)]
    else:
        places = [("input", masks.input, grid)]
        places += [(f"down_blocks.{j}", keep, grid >> j) for j, keep in enumerate(masks.down)]
        places += [("pos_replace", masks.pos_replace, grid)]
    grids = {}
    for place, keep, n in places:
        if keep is None:
            continue
        if keep.ndim != 2 or keep.shape[1] != n * n:
            raise ValueError(f"the {place} mask must be (B, {n * n}) for this model's {n}x{n} grid, "
                             f"got {tuple(keep.shape)}")
        grids[place] = keep.detach().float().cpu().numpy().reshape(keep.shape[0], n, n)
    return grids
