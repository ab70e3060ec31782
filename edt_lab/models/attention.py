"""Multi-head self-attention with an optional relative position bias (EDT, MDTv2) and the AMM hook.

Three ways to compute the same thing, which agree to float32 rounding:
- fused: `scaled_dot_product_attention` with the position bias as its additive mask (default, no AMM);
- explicit: scores, softmax, AMM, @ v written out (AMM blocks in eval mode, attention capture, comparison);
- flex: `flex_attention` with the bias (and the AMM's logarithm) as a score modification, fused into one kernel
  under torch.compile (the GPU fast path; without compiling it runs an unfused reference; on a CPU inductor
  compiles it without the AMM only, as it has no log-sum-exp output there). The AMM's weights are
  not renormalised, so the modulated output is rescaled by exp(lse(s + log M) - lse(s)), the sum of the
  modulated weights per query, which a second pass for lse(s) gives: exact, where SDPA has no exact form.
`Attention.use_fused = False` on a module (or `set_attention_path`) selects the explicit path everywhere,
`use_flex = True` the flex path (attention capture always takes the explicit one). Under bf16 autocast every path
computes in q's dtype. `model.compile_blocks()` compiles the paths together with the rest of their blocks."""

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from .layers import Linear


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
        # the same index as a buffer outside the state dict, for the flex path's score modification: a compiled
        # graph then reads the table and this input instead of a bias computed inside it
        self.register_buffer("pair_index", self.index(), persistent=False)
        self._eval_cache = None  # (key, bias): reused across sampling steps while the table is unchanged

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
        in `dtype` (default: the table's).

        4-D, since SDPA's fused CPU kernel rejects a 3-D mask for a slow fallback.
        """
        table = self.relative_position_bias_table
        dtype = dtype or table.dtype
        if keep_ids is not None:
            return table[kept_pairs(self.pair_index, keep_ids)].permute(0, 3, 1, 2).to(dtype)
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._bias(table).to(dtype)  # a compiled graph computes it in place: a gather, fused with its use
        # The version counter moves on every in-place write (load_state_dict, optimiser steps), so a stale
        # cache is never used.
        version = 0 if table.is_inference() else table._version  # inference tensors cannot change outside it
        key = (table.data_ptr(), version, table.device, dtype)
        if self._eval_cache is None or self._eval_cache[0] != key:
            self._eval_cache = (key, self._bias(table).to(dtype))
        return self._eval_cache[1]

    def _bias(self, table):
        n2 = self.grid_size**2
        return table[self.pair_index.flatten()].view(n2, n2, -1).permute(2, 0, 1).unsqueeze(0).contiguous()


def attention_probs(q, k, scale: float, bias=None):
    """Softmax attention of queries and keys (B, heads, N, head_dim) -> (B, heads, N, N), bias added to the scores."""
    scores = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        scores += bias  # in place: a fresh (B, heads, N, N) buffer costs more than the addition on a CPU
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """Self-attention on (B, N, C) tokens; `amm` (N, N), when set, multiplies the softmax in eval mode only."""

    use_fused = True
    use_flex = False

    def __init__(self, dim: int, num_heads: int, grid_size: int | None = None, beit_layout: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Linear(dim, dim * 3)
        self.proj = Linear(dim, dim)
        if grid_size is not None:
            self.rel_pos_bias = RelativePositionBias(grid_size, num_heads, beit_layout)
        self.amm = None  # set through the model's set_amm; a plain tensor, not state, as released files lack it
        self._amm_cache = None
        self.capture = None  # a dict while capture_attention is active

    def forward(self, x, keep_ids=None):
        """x (B, N, C); keep_ids (B, N): in an MDT masked pass, the grid positions of x's N tokens (bias and AMM)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        # The bias and the AMM in the dtype of q (bf16 under autocast): mixing float32 into the scores would send
        # every score through a slower mixed-dtype float32 path.
        amm = self._amm_for(q) if (self.amm is not None and not self.training) else None
        if amm is not None and keep_ids is not None:
            amm = kept_pairs(amm, keep_ids).unsqueeze(1)  # (B, 1, N, N)
        flex = self.use_flex and self.capture is None  # the flex path reads the bias inside its score modification
        bias = self.rel_pos_bias(keep_ids, q.dtype) if hasattr(self, "rel_pos_bias") and not flex else None
        if flex:
            out = self._flex(q, k, v, keep_ids, amm)
        elif self.use_fused and amm is None and self.capture is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            out = self._explicit(q, k, v, bias, amm)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def _explicit(self, q, k, v, bias, amm):
        probs = attention_probs(q, k, self.scale, bias)
        modulated = probs * amm if amm is not None else None  # not renormalised, as released
        if self.capture is not None:
            self.capture["attention"] = probs.detach()
            self.capture["modulated"] = modulated.detach() if modulated is not None else None
        return (modulated if modulated is not None else probs) @ v

    def _flex(self, q, k, v, keep_ids, amm):
        """flex_attention of q, k, v (B, heads, N, head_dim): scores + bias, and with the AMM the modulated weights
        (not renormalised, as released) through log M and a rescaling by the modulated weights' sum per query.

        The score modification reads the bias from its table (table[pair_index[q, k], h]) and takes the AMM's log
        itself, so a compiled graph captures only the table, the index and the AMM, never a (heads, N, N) tensor
        computed inside it (inductor's CPU kernel refuses one). An MDT masked pass (keep_ids) reads its own bias
        and AMM of the kept pairs, broadcast to (B, heads, N, N) as views."""
        shape, dtype = (*q.shape[:2], q.shape[2], k.shape[2]), q.dtype
        if not hasattr(self, "rel_pos_bias"):
            def add_bias(score, b, h, q_index, k_index):
                return score
        elif keep_ids is None:
            table, pairs = self.rel_pos_bias.relative_position_bias_table, self.rel_pos_bias.pair_index

            def add_bias(score, b, h, q_index, k_index):  # in q's dtype, as the other paths add it
                return score + table[pairs[q_index, k_index], h].to(dtype)
        else:
            bias = self.rel_pos_bias(keep_ids, dtype).expand(shape)

            def add_bias(score, b, h, q_index, k_index):
                return score + bias[b, h, q_index, k_index]

        if amm is None:
            return flex_attention(q, k, v, score_mod=add_bias)
        amm = amm.expand(shape) if amm.ndim == 4 else amm

        def add_bias_and_log_amm(score, b, h, q_index, k_index):  # log 0 = -inf: those keys drop out
            weight = amm[b, h, q_index, k_index] if amm.ndim == 4 else amm[q_index, k_index]
            return add_bias(score, b, h, q_index, k_index) + torch.log(weight)

        out, lse_modulated = flex_attention(q, k, v, score_mod=add_bias_and_log_amm, return_lse=True)
        _, lse = flex_attention(q, k, v, score_mod=add_bias, return_lse=True)
        return (out * (lse_modulated - lse).exp().unsqueeze(-1)).to(q.dtype)  # (B, heads, N, head_dim)

    def _amm_for(self, x):
        """The AMM on x's device and dtype, converted once rather than at every sampling step."""
        if self._amm_cache is None or self._amm_cache[0] is not self.amm or self._amm_cache[1].device != x.device \
                or self._amm_cache[1].dtype != x.dtype:
            self._amm_cache = (self.amm, self.amm.to(device=x.device, dtype=x.dtype))
        return self._amm_cache[1]


def set_attention_path(model: nn.Module, fused: bool, flex: bool = False) -> None:
    """Select the fused (`scaled_dot_product_attention`) or the explicit path in every attention of `model`, or
    with flex=True the flex path (for torch.compile)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.use_fused = fused
            module.use_flex = flex


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
