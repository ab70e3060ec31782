"""The Attention Modulation Matrix (AMM): distance-based, training-free local attention (EDT spec section 4).

For an n x n token grid, m_ij = F(d_ij) where d_ij is the Euclidean distance between the grid cells of
tokens i and j, F(d) = k * exp(cos(2*pi*d / T)) with period T = 4 * d_max, and m_ij = 0 beyond the
effective radius R. The attention probabilities are multiplied by M element-wise and not renormalised.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .checks import finite_number, whole_number


def grid_distances(n: int) -> torch.Tensor:
    """Euclidean distances between the cells of an n x n grid, row-major tokens: (n*n, n*n), float64."""
    rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=1).double()  # (N, 2)
    return torch.cdist(coords, coords)


def default_radius(n: int) -> float:
    """The released effective radius: the distance from token (0, 0) to token (2, n - 1)."""
    return math.sqrt((n - 1) ** 2 + 4)


def modulation_function(d, n: int, scale: float = 0.5, form: str = "exp"):
    """F(d) for an n x n grid: scale * exp(cos(f d)) ("exp", 256x256 models) or scale * cos(f d) ("cos", 512x512)."""
    if form not in ("exp", "cos"):
        raise ValueError(f"AMM form must be 'exp' or 'cos', got {form!r}")
    d_max = (n - 1) * math.sqrt(2)
    frequency = 2 * math.pi / (4 * d_max)  # a quarter period spans the whole grid, so F falls monotonically
    wave = torch.cos(frequency * torch.as_tensor(d, dtype=torch.float64))
    return scale * (torch.exp(wave) if form == "exp" else wave)


def modulation_matrix(n: int, radius: float | None = None, scale: float = 0.5, form: str = "exp") -> torch.Tensor:
    """The AMM of an n x n grid: (n*n, n*n) float32; radius None means the released `default_radius(n)`."""
    if n < 2:
        raise ValueError(f"AMM needs a token grid of at least 2 x 2, got {n} x {n}")
    radius = default_radius(n) if radius is None else finite_number(radius, "AMM radius")
    if radius <= 0:
        raise ValueError(f"AMM radius must be positive, got {radius}")
    scale = finite_number(scale, "AMM scale")
    if scale <= 0:
        raise ValueError(f"AMM scale must be positive, got {scale}")
    distances = grid_distances(n)
    values = modulation_function(distances, n, scale, form)
    # The released code keeps F(d) >= F(R); F falls with d on [0, d_max], so that is d <= R. Comparing
    # distances (with a tolerance) keeps the pairs at exactly R, as released, despite rounding in F.
    inside = distances <= radius + 1e-9
    return torch.where(inside, values, torch.zeros_like(values)).float()


def check_blocks(blocks, num_blocks: int) -> list[int]:
    """Sorted distinct AMM block indices (counted from 0 over all blocks); ValueError for one out of range."""
    if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__iter__"):  # "10" would be blocks 1 and 0
        raise ValueError(f"AMM blocks must be a list of block indices, got {blocks!r}")
    blocks = sorted(set(whole_number(b, "an AMM block index") for b in blocks))
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"AMM block index {bad[0]} is out of range: expected 0..{num_blocks - 1}")
    return blocks


@dataclass(frozen=True)
class AMMPreset:
    """A released AMM arrangement: which blocks (counted from 0 over all blocks) and the matrix's form."""

    blocks: tuple[int, ...]
    scale: float = 0.5
    form: str = "exp"
    note: str = ""


AMM_PRESETS = {
    "edt-s/b-low-guidance": AMMPreset((7, 10), note="EDT-S/2, EDT-B/2 at 256x256, guidance scale <= 1.5"),
    "edt-s/b-high-guidance": AMMPreset((8,), note="EDT-S/2, EDT-B/2 at 256x256, guidance scale >= 2"),
    "edt-s-512": AMMPreset((10,), scale=1.3, form="cos", note="EDT-S/2 at 512x512"),
    "edt-xl": AMMPreset((23, 25), note="EDT-XL/2 at 256x256"),
    "dit-xl": AMMPreset((15, 17, 19, 22, 24), note="DiT-XL/2 plug-in, 256x256, no guidance"),
    "dit-s": AMMPreset((8, 10), note="DiT-S/2 plug-in"),
    "mdtv2-s": AMMPreset((8,), note="MDTv2-S/2 plug-in at guidance 1 or 3.8: the first decoder block"),
}


LATENT_SIZE_512 = 64  # a 512x512 image is a 64x64 latent (32x32 tokens at patch 2)


def preset_for(model, guidance_scale: float = 1.0) -> str:
    """Name of the released arrangement that fits `model` (EDT, DiT or MDTv2) at its image size and guidance."""
    family, depth = type(model).__name__, model.num_blocks
    if family == "EDT" and depth == 12:  # the S/B (and our T) pyramid: 2, 2, 2, 3, 3 blocks
        if model.config.input_size == LATENT_SIZE_512:
            return "edt-s-512"
        return "edt-s/b-high-guidance" if guidance_scale >= 2 else "edt-s/b-low-guidance"
    if family == "EDT" and depth == 28:
        return "edt-xl"
    if family == "DiT" and depth == 28:
        return "dit-xl"
    if family == "DiT" and depth == 12:
        return "dit-s"
    if family == "MDTv2" and depth == 12:  # released for MDTv2-S; the 12-block B (and our T) share the layout
        return "mdtv2-s"
    raise ValueError(f"no released AMM arrangement for a {family} with {depth} blocks; pass the blocks explicitly")


def apply_amm(model, blocks, radius: float | None = None, scale: float | None = None,
              guidance_scale: float = 1.0) -> tuple[int, ...]:
    """Set the AMM of `model` (EDT, DiT or MDTv2) until it is set again; returns the modulated blocks.

    blocks: a list of block indices ([] = off), "preset" (the released arrangement for this model at
    `guidance_scale`, `preset_for`) or a preset name (AMM_PRESETS). radius: None = the released radius of each
    block's grid. scale: k, None = the preset's (0.5 for a list of blocks).
    """
    form = "exp"
    if isinstance(blocks, str):
        name = preset_for(model, guidance_scale) if blocks == "preset" else blocks
        if name not in AMM_PRESETS:
            raise ValueError(f"unknown AMM setting {blocks!r}: expected 'preset', a preset name "
                             f"({', '.join(AMM_PRESETS)}) or a list of block indices")
        preset = AMM_PRESETS[name]
        blocks, form, scale = preset.blocks, preset.form, preset.scale if scale is None else scale
    model.set_amm(blocks, radius, 0.5 if scale is None else scale, form)
    return model.amm_blocks


@contextmanager
def amm_applied(model, blocks, radius: float | None = None, scale: float | None = None,
                guidance_scale: float = 1.0):
    """`apply_amm` inside the `with` only: the model's previous AMM comes back afterwards. Yields the blocks."""
    previous = [block.attn.amm for block in model.blocks]
    try:
        yield apply_amm(model, blocks, radius, scale, guidance_scale)
    finally:
        for block, amm in zip(model.blocks, previous):
            block.attn.amm = amm
