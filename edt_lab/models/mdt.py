"""MDTv2, the Masked Diffusion Transformer v2 (Gao et al.), EDT's main baseline, key for key as released.

A flat stack of adaLN-Zero blocks on all N tokens (relative position bias in BEiT's layout), arranged as an
encoder with long skips and a decoder that re-reads the input:

    x = patch embedding + pos_embed (learned, starts as sin-cos); keep x as the input skip
    en_inblocks: after each block, push x
    en_outblocks: x = block(skip_linear([x, popped skip]))
    x + decoder_pos_embed                       (masked pass: the side-interpolator instead)
    de_blocks: x = block(skip_linear([x, input skip]))
    final_layer; unpatchify

MDT's masked training pass (mask latent modelling): the encoder blocks see only the kept tokens (positions
carried by `keep_ids`, so each keeps its position bias); the side-interpolator then puts `mask_token` into the
removed places, adds `decoder_pos_embed`, runs `sideblocks` on all N tokens and takes their output only at the
removed places (the masked shortcut: kept tokens pass unchanged). The decoder sees all N tokens either way.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config

from .base import ClassConditionalTransformer, check_config
from .block import TransformerBlock
from .layers import FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, init_transformer_weights, \
    sincos_2d, unpatchify


@dataclass
class TokenRemoval:
    """MDT's masked pass: keep (B, N) bool, the tokens the encoder sees (1 keep, 0 removed), as many in every sample."""

    keep: torch.Tensor

    def keep_ids(self) -> torch.Tensor:
        """(B, L): the grid positions of each sample's kept tokens, ascending."""
        counts = self.keep.sum(dim=1) if self.keep.ndim == 2 else None
        if counts is None or not len(counts) or (counts != counts[0]).any() or counts[0] < 1:
            raise ValueError("MDT masks must be (B, N) and keep the same number (at least 1) of tokens in every sample")
        return self.keep.nonzero()[:, 1].view(len(counts), -1)  # nonzero is row-major: grouped by sample


# ----------------------------------------------------------------------------------------------------------
# The block behind a long skip
# ----------------------------------------------------------------------------------------------------------

class SkipBlock(TransformerBlock):
    """[x, skip] (B, N, 2D) -> `skip_linear` (B, N, D) -> the adaLN-Zero block."""

    def __init__(self, dim: int, num_heads: int, grid_size: int, mlp_ratio: float):
        super().__init__(dim, num_heads, dim, grid_size, mlp_ratio, beit_layout=True)
        self.skip_linear = nn.Linear(2 * dim, dim)

    def forward(self, x, c, skip, keep_ids=None):
        return super().forward(self.skip_linear(torch.cat([x, skip], dim=-1)), c, keep_ids)


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------

class MDTv2(ClassConditionalTransformer):
    """Class-conditional MDTv2: x (B, C, H, W), t (B,), y (B,) -> (B, 2C or C, H, W).

    depth counts en_inblocks + en_outblocks + de_blocks: (depth - decode_layer) // 2 encoder blocks on each side
    of the long skips and decode_layer decoder blocks, as released. mask_ratio None (as the released default)
    leaves `mask_token` frozen; training with MDT masking sets it (the released runs use 0.3).
    """

    @register_to_config
    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        mask_ratio: float | None = None,
        decode_layer: int = 4,
    ):
        super().__init__()
        check_config(mlp_ratio, class_dropout_prob, input_size=input_size, patch_size=patch_size,
                     in_channels=in_channels, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                     num_classes=num_classes)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        if not 0 <= decode_layer <= depth - 2:
            raise ValueError(f"decode_layer must lie in 0..depth - 2 = {depth - 2}, got {decode_layer}")
        if mask_ratio is not None and not 0.0 <= mask_ratio <= 0.8:
            raise ValueError(f"mask_ratio must lie in [0, 0.8] (the pass removes up to mask_ratio + 0.2), "
                             f"got {mask_ratio}")
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.grid_size = n = input_size // patch_size
        half_depth = (depth - decode_layer) // 2
        dim = hidden_size

        self.x_embedder = PatchEmbed(patch_size, in_channels, dim)
        self.t_embedder = TimestepEmbedder(dim)
        self.y_embedder = LabelEmbedder(num_classes, dim, class_dropout_prob)
        self.pos_embed = nn.Parameter(sincos_2d(dim, n))  # (1, N, D), learned
        self.en_inblocks = nn.ModuleList([TransformerBlock(dim, num_heads, dim, n, mlp_ratio, beit_layout=True)
                                          for _ in range(half_depth)])
        self.en_outblocks = nn.ModuleList([SkipBlock(dim, num_heads, n, mlp_ratio) for _ in range(half_depth)])
        self.de_blocks = nn.ModuleList([SkipBlock(dim, num_heads, n, mlp_ratio) for _ in range(decode_layer)])
        self.sideblocks = nn.ModuleList([TransformerBlock(dim, num_heads, dim, n, mlp_ratio, beit_layout=True)])
        self.final_layer = FinalLayer(dim, patch_size, self.out_channels)
        self.decoder_pos_embed = nn.Parameter(sincos_2d(dim, n))  # (1, N, D), learned
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim), requires_grad=mask_ratio is not None)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's recipe (adaLN-Zero, also in the side-interpolator), bias tables trunc-normal(0.02) and, when the
        model trains with masking, mask_token N(0, 0.02), as released."""
        init_transformer_weights(self)
        for block in self.sideblocks:
            for param in block.adaLN_modulation[-1].parameters():
                nn.init.constant_(param, 0)
        for block in [*self.blocks, *self.sideblocks]:
            nn.init.trunc_normal_(block.attn.rel_pos_bias.relative_position_bias_table, std=0.02)
        if self.config.mask_ratio is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    @property
    def blocks(self) -> list:
        """The blocks of a sampling forward in order: en_inblocks, en_outblocks, de_blocks (AMM indices count these)."""
        return [*self.en_inblocks, *self.en_outblocks, *self.de_blocks]

    def block_info(self):
        cfg = self.config
        phases = ["encoder in"] * len(self.en_inblocks) + ["encoder out"] * len(self.en_outblocks) \
            + ["decoder"] * len(self.de_blocks)
        stages = {"encoder in": 0, "encoder out": 1, "decoder": 2}
        return [{"block": i, "stage": stages[phase], "grid": self.grid_size, "phase": phase, "dim": cfg.hidden_size,
                 "heads": cfg.num_heads} for i, phase in enumerate(phases)]

    def side_interpolate(self, x, c, keep, keep_ids):
        """Kept tokens x (B, L, D) -> all N tokens (B, N, D): mask_token in the removed places, decoder_pos_embed,
        then `sideblocks`, whose output replaces only the removed tokens (the masked shortcut)."""
        B, _, D = x.shape
        index = keep_ids.unsqueeze(-1).expand(-1, -1, D)
        x = self.mask_token.to(x.dtype).expand(B, keep.shape[1], D).scatter(1, index, x) + self.decoder_pos_embed
        filled = x
        for block in self.sideblocks:
            filled = block(filled, c)
        return torch.where(keep.unsqueeze(-1), x, filled)

    def forward(self, x, t, y, masks: TokenRemoval | None = None):
        """x (B, C, H, W), t (B,), y (B,) -> (B, out_channels, H, W); masks only in an MDT masked training pass."""
        self.check_inputs(x, t, y)
        if masks is not None and not isinstance(masks, TokenRemoval):
            raise ValueError(f"MDTv2 removes tokens in its masked pass: expected TokenRemoval masks (masking 'mdt'), "
                             f"got {type(masks).__name__}")
        if masks is not None and tuple(masks.keep.shape) != (x.shape[0], self.grid_size**2):
            raise ValueError(f"MDT masks must be (B, N) = ({x.shape[0]}, {self.grid_size**2}), "
                             f"got {tuple(masks.keep.shape)}")
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        input_skip = x

        keep_ids = None
        if masks is not None:
            keep_ids = masks.keep_ids()  # (B, L)
            x = x.gather(1, keep_ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, L, D)
        skips = []
        for block in self.en_inblocks:
            x = block(x, c, keep_ids)
            skips.append(x)
        for block in self.en_outblocks:
            x = block(x, c, skips.pop(), keep_ids)
        if masks is not None:
            x = self.side_interpolate(x, c, masks.keep, keep_ids)  # (B, N, D)
        else:
            x = x + self.decoder_pos_embed
        for block in self.de_blocks:
            x = block(x, c, input_skip)

        x = self.final_layer(x, c)  # (B, N, p*p*out_channels)
        return unpatchify(x, self.config.patch_size, self.out_channels)
