"""EDT, DiT and MDTv2 as released: pure nn.Module code, no I/O."""

from .attention import Attention, capture_attention, set_attention_path
from .dit import DiT
from .edt import EDT, TokenMasks
from .layers import randomize_weights
from .mdt import MDTv2, TokenRemoval
from .registry import MODEL_CONFIGS, MODEL_NAMES, create_model

__all__ = ["EDT", "DiT", "MDTv2", "TokenMasks", "TokenRemoval", "Attention", "capture_attention", "set_attention_path",
           "create_model", "randomize_weights", "MODEL_CONFIGS", "MODEL_NAMES"]
