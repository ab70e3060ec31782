"""Multi-head self-attention with an optional relative position bias (EDT, MDTv2) and the AMM hook.

Two ways to compute the same thing, which agree to float32 rounding: `scaled_dot_product_attention` with the
position bias as its additive mask (`use_fused`, the default without an AMM), and the scores, softmax, AMM and
@ v written out (blocks with an AMM in eval mode, attention capture, FLOP counting). Under bf16 autocast both
compute in q's dtype. Hardware fast paths (flex attention, compiled blocks) live in `edt_lab.accel`."""

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F


def kept_pairs(matrix: torch.Tensor, keep_ids: torch.Tensor) -> torch.Tensor:
    """The rows and columns of the kept tokens: matrix (N, N, ...) and keep_ids (B, L) -> (B, L, L, ...)."""
    return matrix[keep_ids[:, :, None], keep_ids[:, None, :]]


class RelativePositionBias(nn.Module):
    """BEiT-style learned bias per head for each (query, key) offset on an n x n grid: table ((2n-1)^2, heads).

    beit_layout: BEiT's own layout, which MDT releases: 3 more table rows (BEiT's class-token offsets, unused on a
    grid) and the index stored in the state dict as `relative_position_index` (N, N); the same values as `index`.
    """

    def __init__(self, grid_size: int, num_heads: int, beit_layout: bool = False):
        super().__init__()
        self.grid_size = grid_size
        rows = (2 * grid_size - 1) ** 2 + (3 if beit_layout else 0)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # as released (cut at +-2)
        if beit_layout:
            self.register_buffer("relative_position_index", self.index())
        # the index outside the state dict too, so models without BEiT's layout have it and it moves with them
        self.register_buffer("pair_index", self.index(), persistent=False)

    def index(self) -> torch.Tensor:
        """Table row for each (query, key) pair: (N, N); row = (r1-r2+n-1)*(2n-1) + (c1-c2+n-1)."""
        n = self.grid_size
        rows, cols = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        d_row = rows[:, None] - rows[None, :] + n - 1
        d_col = cols[:, None] - cols[None, :] + n - 1
        return d_row * (2 * n - 1) + d_col

    def forward(self, keep_ids: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The bias (1, heads, N, N), or (B, heads, L, L) among the kept tokens keep_ids (B, L) of an MDT masked pass,
        in `dtype` (default: the table's). 4-D, since SDPA's fused CPU kernel rejects a 3-D mask for a slow fallback.
        """
        table = self.relative_position_bias_table
        pairs = self.pair_index[None] if keep_ids is None else kept_pairs(self.pair_index, keep_ids)  # (B, L, L)
        return table[pairs].permute(0, 3, 1, 2).to(dtype or table.dtype).contiguous()


def attention_probs(q, k, scale: float, bias=None):
    """Softmax attention of queries and keys (B, heads, N, head_dim) -> (B, heads, N, N), bias added to the scores."""
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores += bias  # in place: a fresh (B, heads, N, N) buffer costs more than the addition on a CPU
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """Self-attention on (B, N, C) tokens; `amm` (N, N), when set, multiplies the softmax in eval mode only."""

    use_fused = True  # scaled_dot_product_attention where nothing needs the weights themselves

    def __init__(self, dim: int, num_heads: int, grid_size: int | None = None, beit_layout: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        if grid_size is not None:
            self.rel_pos_bias = RelativePositionBias(grid_size, num_heads, beit_layout)
        self.amm = None  # set through the model's set_amm; a plain tensor, not state, as released files lack it
        self.capture = None  # a dict while capture_attention is active

    def forward(self, x, keep_ids=None):
        """x (B, N, C); keep_ids (B, N): in an MDT masked pass, the grid positions of x's N tokens (bias and AMM)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        # The AMM in the dtype of q (bf16 under autocast): mixing float32 into the scores would send every score
        # through a slower mixed-dtype float32 path.
        amm = self.amm.to(q.device, q.dtype) if (self.amm is not None and not self.training) else None
        if amm is not None and keep_ids is not None:
            amm = kept_pairs(amm, keep_ids).unsqueeze(1)  # (B, 1, N, N)
        out = self.attend(q, k, v, keep_ids, amm)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def attend(self, q, k, v, keep_ids, amm):
        """Attention of q, k, v (B, heads, N, head_dim) with the position bias and, when given, the AMM."""
        bias = self.rel_pos_bias(keep_ids, q.dtype) if hasattr(self, "rel_pos_bias") else None
        if self.use_fused and amm is None and self.capture is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        probs = attention_probs(q, k, self.scale, bias)
        modulated = probs * amm if amm is not None else None  # not renormalised, as released
        if self.capture is not None:
            self.capture["attention"] = probs.detach()
            self.capture["modulated"] = modulated.detach() if modulated is not None else None
        return (modulated if modulated is not None else probs) @ v


def set_attention_path(model: nn.Module, fused: bool) -> None:
    """Select the fused (`scaled_dot_product_attention`) or the explicit path in every attention of `model`."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.use_fused = fused


@contextmanager
def capture_attention(model: nn.Module, blocks):
    """Record attention probabilities of `blocks` during the forwards inside the `with`.

    Yields a dict block -> {"attention": (B, heads, N, N) softmax, "modulated": the same times the AMM, or
    None when the block has no AMM or the model is in training mode}, holding the last forward's values.
    """
    attentions = {}
    try:
        for index in blocks:
            attention = model.blocks[index].attn
            attention.capture = attentions.setdefault(index, {})
        yield attentions
    finally:
        for index in blocks:
            model.blocks[index].attn.capture = None
