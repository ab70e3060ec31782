"""DiT, the baseline: a flat stack of adaLN-Zero blocks with global attention, key for key as released."""

import torch.nn as nn
from diffusers.configuration_utils import register_to_config

from .base import ClassConditionalTransformer, check_config
from .block import TransformerBlock
from .layers import (FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, fixed_pos_embed, init_transformer_weights,
                     unpatchify)


class DiT(ClassConditionalTransformer):
    """Class-conditional DiT: x (B, C, H, W), t (B,), y (B,) -> (B, 2C or C, H, W).

    timestep_freq_shift and mlp_norm_eps keep DiT's values (0, 1e-6) except in models converted from diffusers'
    DiTTransformer2DModel, which computes slightly different timestep features and normalises the MLP input with
    its own eps (`edt_lab.diffusers_dit`).
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
        num_classes: int = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
        timestep_freq_shift: int = 0,
        mlp_norm_eps: float = 1e-6,
    ):
        super().__init__()
        check_config(mlp_ratio, class_dropout_prob, input_size=input_size, patch_size=patch_size,
                     in_channels=in_channels, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
                     num_classes=num_classes)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not divisible by patch_size {patch_size}")
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.grid_size = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, timestep_freq_shift)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.pos_embed = fixed_pos_embed(hidden_size, self.grid_size)
        self.blocks = nn.ModuleList([
            TransformerBlock(hidden_size, num_heads, hidden_size, None, mlp_ratio, mlp_norm_eps=mlp_norm_eps)
            for _ in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        init_transformer_weights(self)

    def block_info(self):
        cfg = self.config
        return [
            {"block": i, "stage": 0, "grid": self.grid_size, "phase": "flat", "dim": cfg.hidden_size,
             "heads": cfg.num_heads}
            for i in range(cfg.depth)
        ]

    def forward(self, x, t, y, masks=None):
        """x (B, C, H, W), t (B,), y (B,) -> (B, out_channels, H, W); masks may carry only an input keep-mask."""
        self.check_inputs(x, t, y)
        if masks is not None and (masks.down or masks.pos_replace is not None):
            raise ValueError("DiT has no down-sampling modules: only input (MDT-style) masks apply")
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        if masks is not None and masks.input is not None:
            x = x * masks.input.to(x.dtype).unsqueeze(-1)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D)
        for block in self.blocks:
            x = block(x, c)
        x = self.final_layer(x, c)  # (B, N, p*p*out_channels)
        return unpatchify(x, self.config.patch_size, self.out_channels)
