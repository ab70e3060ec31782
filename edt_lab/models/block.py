"""The adaLN-Zero transformer block shared by EDT and MDTv2 (with relative position bias) and DiT (without)."""

import torch.nn as nn

from .attention import Attention
from .layers import Mlp, adaln_modulation, gated_residual, modulate


class TransformerBlock(nn.Module):
    """adaLN-Zero block: (B, N, C) -> (B, N, C), conditioned on c (B, cond_dim).

    grid_size (tokens per side) adds a relative position bias to the attention (in MDT's `beit_layout`); None is
    DiT's block. mlp_norm_eps: eps of the LayerNorm before the MLP (diffusers' DiTTransformer2DModel uses its
    `norm_eps`).
    """

    def __init__(self, dim: int, num_heads: int, cond_dim: int, grid_size: int | None = None, mlp_ratio: float = 4.0,
                 beit_layout: bool = False, mlp_norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, grid_size, beit_layout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = adaln_modulation(cond_dim, 6 * dim)

    def forward(self, x, c, keep_ids=None):
        """keep_ids (B, N): the grid positions of x's tokens in an MDT masked pass (None: all tokens, in order)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = gated_residual(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa), keep_ids))
        return gated_residual(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
