"""EDT: the Efficient Diffusion Transformer (EDT spec sections 1-3), key for key as released.

A five-stage U-shaped token pyramid (grids n, n/2, n/4, n/2, n) of adaLN-Zero blocks with relative
position bias; down-sampling merges 2x2 tokens with "token information enhancement" (adaLN) and a
"positional encoding supplement"; up-sampling expands tokens; long skips are concatenated.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config

from .base import ClassConditionalTransformer, check_config
from .block import TransformerBlock
from .layers import (FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, adaln_modulation,
                     fixed_pos_embed, init_transformer_weights, modulate, unpatchify)


@dataclass
class TokenMasks:
    """Keep-masks (1 keep, 0 drop) for one masked training pass; None leaves that place unmasked."""

    input: torch.Tensor | None = None  # (B, N): MDT-style, zeroes patch tokens before the first block
    down: tuple = ()  # (B, N_j) per down_blocks.j: zeroes a token's slot in the merged 4C vector
    pos_replace: torch.Tensor | None = None  # (B, N): EDT-XL, dropped tokens become pos_embed before block 4


POS_REPLACE_BLOCK = 4  # EDT-XL's masked pass replaces tokens right before this block of stage 0


# ----------------------------------------------------------------------------------------------------
# Pyramid modules: down-sampling, up-sampling, long skips
# ----------------------------------------------------------------------------------------------------

def merge_2x2(x, grid_size: int):
    """(B, n*n, C) -> (B, n*n/4, 4C): each 2x2 neighbourhood's tokens concatenated in the order
    (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col)."""
    B, _, C = x.shape
    x = x.view(B, grid_size, grid_size, C)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
    return x.view(B, -1, 4 * C)


class DownSample(nn.Module):
    """Token merging: (B, n*n, C) -> (B, n*n/4, C_out), modulated by the condition and re-positioned."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int, grid_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.norm = nn.LayerNorm(4 * dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = adaln_modulation(cond_dim, 8 * dim)  # token information enhancement
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.pos_embed = fixed_pos_embed(out_dim, grid_size // 2)  # positional encoding supplement

    def forward(self, x, c, keep=None):
        """keep (B, n*n): EDT's training mask; a dropped token's slot of the merged vector is zeroed."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm(merge_2x2(x, self.grid_size)), shift, scale)  # (B, N/4, 4C)
        if keep is not None:
            slot_keep = merge_2x2(keep.to(x.dtype).unsqueeze(-1), self.grid_size)  # (B, N/4, 4)
            x = x * slot_keep.repeat_interleave(x.shape[-1] // 4, dim=-1)
        return self.reduction(x) + self.pos_embed


class UpSample(nn.Module):
    """Token expansion: (B, n*n, C) -> (B, 4n*n, C_out) by a linear map and a 2x2 pixel shuffle."""

    def __init__(self, dim: int, out_dim: int, grid_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.expand = nn.Linear(dim, 4 * out_dim, bias=False)

    def forward(self, x):
        B, n = x.shape[0], self.grid_size
        x = self.expand(x).view(B, n, n, 2, 2, -1)  # channels laid out as (2, 2, C_out)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(B, 4 * n * n, -1)


class SkipConcat(nn.Module):
    """Long skip: [up-sampled, skip] (B, N, 2C) -> normalised, modulated, projected to (B, N, C)."""

    def __init__(self, dim: int, cond_dim: int, grid_size: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(2 * dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = adaln_modulation(cond_dim, 4 * dim)
        self.cat = nn.Linear(2 * dim, dim)
        self.pos_embed = fixed_pos_embed(dim, grid_size)

    def forward(self, x, skip, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(torch.cat([x, skip], dim=-1)), shift, scale)
        return self.cat(x) + self.pos_embed


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------

class EDT(ClassConditionalTransformer):
    """Class-conditional EDT: x (B, C, H, W), t (B,), y (B,) -> (B, 2C or C, H, W)."""

    @register_to_config
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        dims: tuple = (312, 416, 520, 416, 312),
        stages_depth: tuple = (2, 2, 2, 3, 3),
        num_heads: tuple = (6, 8, 10, 8, 6),
        num_classes: int = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        if not (len(dims) == len(stages_depth) == len(num_heads) == 5):
            raise ValueError("EDT needs five stages: dims, stages_depth and num_heads of length 5")
        check_config(mlp_ratio, class_dropout_prob, input_size=input_size, patch_size=patch_size,
                     in_channels=in_channels, dims=dims, stages_depth=stages_depth, num_heads=num_heads,
                     num_classes=num_classes)
        grid = input_size // patch_size
        if input_size % patch_size or grid % 4:
            raise ValueError(f"input_size / patch_size must be a whole multiple of 4, got {input_size}/{patch_size}")
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.stage_grids = (grid, grid // 2, grid // 4, grid // 2, grid)
        d0 = dims[0]

        self.x_embedder = PatchEmbed(patch_size, in_channels, d0)
        self.t_embedder = TimestepEmbedder(d0)
        self.y_embedder = LabelEmbedder(num_classes, d0, class_dropout_prob)
        self.pos_embed = fixed_pos_embed(d0, grid)
        self.blocks = nn.ModuleList([
            TransformerBlock(dims[s], num_heads[s], d0, self.stage_grids[s], mlp_ratio)
            for s in range(5) for _ in range(stages_depth[s])
        ])
        self.down_blocks = nn.ModuleList([DownSample(dims[j], dims[j + 1], d0, self.stage_grids[j]) for j in (0, 1)])
        self.up_blocks = nn.ModuleList([UpSample(dims[j], dims[j + 1], self.stage_grids[j]) for j in (2, 3)])
        self.concat_blocks = nn.ModuleList([SkipConcat(dims[j], d0, self.stage_grids[j]) for j in (3, 4)])
        self.final_layer = FinalLayer(d0, patch_size, self.out_channels)
        init_transformer_weights(self)

    def block_info(self):
        phases = ("down", "down", "middle", "up", "up")
        cfg = self.config
        return [
            {"block": i, "stage": s, "grid": self.stage_grids[s], "phase": phases[s], "dim": cfg.dims[s],
             "heads": cfg.num_heads[s]}
            for i, s in enumerate(s for s in range(5) for _ in range(cfg.stages_depth[s]))
        ]

    def forward(self, x, t, y, masks: TokenMasks | None = None):
        """x (B, C, H, W), t (B,), y (B,) -> (B, out_channels, H, W); masks only in a masked training pass."""
        self.check_inputs(x, t, y)
        masks = masks or TokenMasks()
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D0)
        if masks.input is not None:
            x = x * masks.input.to(x.dtype).unsqueeze(-1)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D0)

        skips, i = [], 0
        for stage, depth in enumerate(self.config.stages_depth):
            if stage >= 3:  # decoder: expand tokens, then fuse the skip of the same resolution
                x = self.up_blocks[stage - 3](x)
                x = self.concat_blocks[stage - 3](x, skips.pop(), c)
            elif stage < 2:
                skips.append(x)  # as released, the skip is taken before the stage's blocks
            for _ in range(depth):
                if i == POS_REPLACE_BLOCK and stage == 0 and masks.pos_replace is not None:
                    keep = masks.pos_replace.to(x.dtype).unsqueeze(-1)
                    x = x * keep + (1 - keep) * self.pos_embed
                x = self.blocks[i](x, c)
                i += 1
            if stage < 2:
                keep = masks.down[stage] if stage < len(masks.down) else None
                x = self.down_blocks[stage](x, c, keep)  # (B, N/4, dims[stage + 1])

        x = self.final_layer(x, c)  # (B, N, p*p*out_channels)
        return unpatchify(x, self.config.patch_size, self.out_channels)
