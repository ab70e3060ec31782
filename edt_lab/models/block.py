"""The adaLN-Zero transformer block shared by EDT (with relative position bias) and DiT (without)."""

import torch.nn as nn

from .attention import Attention
from .layers import Mlp, adaln_modulation, gated_residual, modulate


class TransformerBlock(nn.Module):
    """adaLN-Zero block: (B, N, C) -> (B, N, C), conditioned on c (B, cond_dim).

    grid_size (tokens per side) adds EDT's relative position bias to the attention; None is DiT's block.
    """

    def __init__(self, dim: int, num_heads: int, cond_dim: int, grid_size: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, grid_size)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = adaln_modulation(cond_dim, 6 * dim)

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = gated_residual(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa)))
        return gated_residual(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
