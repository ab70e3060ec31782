"""Opt-in hardware fast paths, each behind one capability check.

The models are plain PyTorch and run on every CPU and GPU torch runs on. The paths here swap faster kernels in,
and only where `supports(feature, device)` says the hardware runs them; everywhere else the plain op runs and the
caller is told why. What torch reports decides, never /proc/cpuinfo, so the answers hold on macOS, Windows and
arm64 too.

Features:
- "bf16": bf16 matrix products in hardware. CUDA: compute capability 8 (Ampere) or later; CPU: oneDNN's bf16
  kernels (AVX512-BF16, AMX or AVX-NE-CONVERT on x86, bf16 instructions on arm64). Elsewhere bf16 is emulated,
  slower than fp32.
- "onednn_linear": a Linear (and the MLPs' tanh GELU) as one oneDNN kernel in CPU bf16 inference
  (`FusedCPULinear`); needs oneDNN's bf16 kernels, without which its weight reorder raises.
- "flex": flex_attention compiled into one kernel (`FlexAttention`): CUDA of compute capability 8 or later.
- "compile": torch.compile's inductor backend: CUDA of compute capability 7 or later (Triton's minimum), or a CPU
  with a C++ compiler.

Setting EDT_LAB_FORCE_NO_NATIVE=1 makes every answer "no", so a machine that has these paths can run the test
suite as one that lacks them would.
"""

import os
import warnings
import weakref

import torch
import torch.nn as nn
from torch.nn.attention.flex_attention import flex_attention

from .models.attention import Attention
from .models.layers import Mlp

FEATURES = ("bf16", "onednn_linear", "flex", "compile")
FORCE_NO_NATIVE = "EDT_LAB_FORCE_NO_NATIVE"


def supports(feature: str, device) -> bool:
    """Whether `device` runs `feature` (one of FEATURES) natively, from what torch reports."""
    if feature not in FEATURES:
        raise ValueError(f"unknown hardware feature {feature!r}: expected one of {', '.join(FEATURES)}")
    if os.environ.get(FORCE_NO_NATIVE, "") not in ("", "0"):
        return False
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability(device)
        if feature == "bf16":
            return major >= 8 and torch.cuda.is_bf16_supported(including_emulation=False)
        return {"onednn_linear": False, "flex": major >= 8, "compile": major >= 7}[feature]
    if device.type == "cpu":
        if feature in ("bf16", "onednn_linear"):
            return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return feature == "compile" and _inductor_cpp_compiler()
    return False


def _inductor_cpp_compiler() -> bool:
    """Whether torch's inductor finds the C++ compiler that it compiles CPU kernels with."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        return bool(get_cpp_compiler())
    except Exception:  # inductor raises its own error types when no compiler runs
        return False


def describe(device) -> str:
    """The device as torch reports it, for messages: "CPU (AVX2)", "CUDA GPU of compute capability 7.0"."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA GPU of compute capability {major}.{minor}"
    if device.type == "cpu":
        return f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    return f"{device.type} device"


def refusal(feature: str, device) -> str:
    """One line saying that `device` lacks `feature` and which hardware has it."""
    needs = {"bf16": "native bf16 (a CUDA GPU of compute capability 8 or later, or a CPU with AVX512-BF16 or AMX)",
             "onednn_linear": "oneDNN's native bf16 kernels (a CPU with AVX512-BF16 or AMX)",
             "flex": "compiled flex attention (a CUDA GPU of compute capability 8 or later)",
             "compile": "torch.compile (a CUDA GPU of compute capability 7 or later, or a CPU with a C++ compiler)"}
    forced = f" ({FORCE_NO_NATIVE} is set)" if os.environ.get(FORCE_NO_NATIVE, "") not in ("", "0") else ""
    return f"this {describe(device)} lacks {needs[feature]}{forced}"


def _fall_back(feature: str, device) -> bool:
    """True (after a warning naming what is missing) where `device` lacks `feature`."""
    if supports(feature, device):
        return False
    warnings.warn(f"{refusal(feature, device)}: running the plain PyTorch path", stacklevel=3)
    return True


# ----------------------------------------------------------------------------------------------------------
# The fused oneDNN Linear for CPU bf16 inference
# ----------------------------------------------------------------------------------------------------------

# Linear -> {parameter name: (key, bf16 copy)}, outside the modules: a reordered weight is an opaque oneDNN tensor
# that copy.deepcopy and pickling cannot copy.
_ONEDNN_COPIES = weakref.WeakKeyDictionary()


class FusedCPULinear(nn.Linear):
    """nn.Linear (same parameters) that runs CPU bf16 inference as one oneDNN kernel, with the MLP's tanh GELU
    fused in when `activation` is "gelu_tanh".

    Under CPU bf16 autocast a plain Linear is an addmm that first copies the bias into its output, and the GELU
    after it is one more pass over the tensor. The oneDNN kernel adds the bias and applies the activation to the
    float32 accumulator before its one rounding to bf16, from a bf16 weight kept in oneDNN's blocked layout.
    Anywhere else (float32, gradients on, torch.compile) it is nn.Linear followed by the activation.
    """

    activation = None

    def forward(self, x):
        if not self._fused(x):
            out = super().forward(x)
            return nn.functional.gelu(out, approximate="tanh") if self.activation == "gelu_tanh" else out
        attr, algorithm = ("gelu", "tanh") if self.activation == "gelu_tanh" else ("none", "")
        bias = None if self.bias is None else self._onednn("bias")
        return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self._onednn("weight"), bias, attr, [],
                                                  algorithm)

    @staticmethod
    def _fused(x) -> bool:
        return (x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and x.dtype in (torch.float32, torch.bfloat16)  # what autocast would cast to bf16
                and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    def _onednn(self, name: str):
        """The parameter `name` in bf16 (the weight in oneDNN's layout), remade when the parameter changes (moved,
        loaded or updated in place: its storage or version differs), where autocast would cast it at every call."""
        param = getattr(self, name)
        key = (param.data_ptr(), 0 if param.is_inference() else param._version)
        copies = _ONEDNN_COPIES.setdefault(self, {})
        if name not in copies or copies[name][0] != key:
            copy = param.detach().to(torch.bfloat16)
            copies[name] = (key, torch.ops.mkldnn._reorder_linear_weight(copy) if name == "weight" else copy)
        return copies[name][1]


def enable_fast_paths(model: nn.Module, device) -> list[str]:
    """Switch on in `model` the fast paths that `device` runs natively; returns their names (empty elsewhere).

    Today that is the fused oneDNN Linear for CPU bf16 inference: every nn.Linear becomes a FusedCPULinear (the
    same parameters and state-dict keys), and each MLP's GELU moves into its first Linear."""
    if torch.device(device).type != "cpu" or not supports("onednn_linear", device):
        return []
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FusedCPULinear
        if isinstance(module, Mlp) and isinstance(module.act, nn.GELU):
            module.fc1.activation, module.act = "gelu_tanh", nn.Identity()
    return ["onednn_linear"]


# ----------------------------------------------------------------------------------------------------------
# Compiled paths
# ----------------------------------------------------------------------------------------------------------

class FlexAttention(Attention):
    """Attention whose scores take the position bias and the AMM's logarithm inside one flex_attention kernel.

    The AMM's weights are not renormalised (as released), so the modulated output is rescaled by
    exp(lse(s + log M) - lse(s)), the modulated weights' sum per query, from a second pass for lse(s). The score
    modification reads the bias from its table (table[pair_index[q, k], h]), so a compiled graph captures the
    table and the index, never a (heads, N, N) tensor computed inside it. Attention capture takes the explicit
    path."""

    def attend(self, q, k, v, keep_ids, amm):
        if self.capture is not None:
            return super().attend(q, k, v, keep_ids, amm)
        shape, dtype = (*q.shape[:2], q.shape[2], k.shape[2]), q.dtype
        add_bias = self._score_bias(keep_ids, shape, dtype)
        if amm is None:
            return flex_attention(q, k, v, score_mod=add_bias)
        amm = amm.expand(shape) if amm.ndim == 4 else amm

        def add_bias_and_log_amm(score, b, h, q_index, k_index):  # log 0 = -inf: those keys drop out
            weight = amm[b, h, q_index, k_index] if amm.ndim == 4 else amm[q_index, k_index]
            return add_bias(score, b, h, q_index, k_index) + torch.log(weight)

        out, lse_modulated = flex_attention(q, k, v, score_mod=add_bias_and_log_amm, return_lse=True)
        _, lse = flex_attention(q, k, v, score_mod=add_bias, return_lse=True)
        return (out * (lse_modulated - lse).exp().unsqueeze(-1)).to(dtype)  # (B, heads, N, head_dim)

    def _score_bias(self, keep_ids, shape, dtype):
        """The score modification adding the relative position bias (none without one; the kept pairs' bias in an
        MDT masked pass, broadcast to (B, heads, N, N) as a view)."""
        if not hasattr(self, "rel_pos_bias"):
            return lambda score, b, h, q_index, k_index: score
        if keep_ids is None:
            table, pairs = self.rel_pos_bias.relative_position_bias_table, self.rel_pos_bias.pair_index
            return lambda score, b, h, q_index, k_index: score + table[pairs[q_index, k_index], h].to(dtype)
        bias = self.rel_pos_bias(keep_ids, dtype).expand(shape)
        return lambda score, b, h, q_index, k_index: score + bias[b, h, q_index, k_index]


def use_flex_attention(model: nn.Module, device, force: bool = False) -> bool:
    """Every attention of `model` through flex_attention (for torch.compile), where `device` compiles it; returns
    whether it did. force=True skips the check (an uncompiled flex_attention runs anywhere, slowly: for tests)."""
    if not force and _fall_back("flex", device):
        return False
    for module in model.modules():
        if isinstance(module, Attention):
            module.__class__ = FlexAttention
    return True


def compile_blocks(model: nn.Module, device, **compile_kwargs) -> bool:
    """torch.compile every transformer block of `model` in place, where `device` can compile; returns whether it
    did. Blocks of one shape share their compiled code, which takes seconds where the whole model takes minutes.
    It costs start-up time and changes the rounding; state-dict keys are unchanged."""
    if compile_kwargs.get("backend", "inductor") == "inductor" and _fall_back("compile", device):
        return False
    for block in model.blocks:
        block.compile(**compile_kwargs)
    return True
