"""DiT in diffusers' format: exact conversion both ways, and the AMM as a diffusers attention processor.

diffusers' `DiTTransformer2DModel` holds the same weights as DiT under other names, with two differences:
- every block carries its own copy of the timestep and class embedder (`transformer_blocks.{i}.norm1.emb`);
  the final layer reads block 0's. Converted DiT files hold equal copies; a model trained in diffusers may not,
  and then it has no single-embedder DiT equivalent.
- its timestep features use the frequencies 1 / 10000^(i / 127) where DiT uses 1 / 10000^(i / 128), and the
  LayerNorm before each MLP uses the config's `norm_eps` (1e-5 by default) where DiT uses 1e-6. edt_lab's DiT
  reproduces both through `timestep_freq_shift=1` and `mlp_norm_eps`.
The learned-sigma output layout ((B, 2C, H, W): noise, then variance), the timesteps (0..999) and the class
labels (index num_classes = null label) are the same in both.
"""

import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel
from diffusers.models.attention_processor import AttnProcessor2_0

from .amm import check_blocks, modulation_matrix
from .files import make_weights_readable
from .models import DiT
from .models.attention import attention_probs

# "Transformer2DModel" is the class name in older DiT folders (e.g. DiT-XL-2-256); diffusers maps it to DiT's.
DIFFUSERS_DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")
EMBEDDER = "norm1.emb"  # each diffusers block's copy of the timestep and class embedder
FIRST_EMBEDDER = f"transformer_blocks.0.{EMBEDDER}."  # block 0's copy, the one the final layer reads

# edt_lab name -> diffusers name of the modules that map one to one (weight and bias).
TOP_MODULES = {"x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
               "final_layer.linear": "proj_out_2"}
EMBEDDER_MODULES = {"t_embedder.mlp.0": "timestep_embedder.linear_1", "t_embedder.mlp.2": "timestep_embedder.linear_2"}
BLOCK_MODULES = {"adaLN_modulation.1": "norm1.linear", "attn.proj": "attn1.to_out.0", "mlp.fc1": "ff.net.0.proj",
                 "mlp.fc2": "ff.net.2"}
LABEL_TABLE = ("y_embedder.embedding_table.weight", "class_embedder.embedding_table.weight")


# ----------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------

def dit_config(diffusers_config: dict) -> dict:
    """edt_lab's DiT config (with `_class_name`) of a DiTTransformer2DModel config; ValueError if DiT cannot hold it."""
    defaults = {name: p.default for name, p in inspect.signature(DiTTransformer2DModel.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    config = {**defaults, **diffusers_config}
    required = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "attention_bias": True,
                "norm_elementwise_affine": False, "cross_attention_dim": None, "num_vector_embeds": None}
    for key, value in required.items():
        if config.get(key, value) != value:
            raise ValueError(f"not a DiT-style transformer: {key} is {config[key]!r}, DiT needs {value!r}")
    if config["num_embeds_ada_norm"] is None:
        raise ValueError("not a class-conditional DiT: num_embeds_ada_norm (the number of classes) is null")
    in_channels = config["in_channels"]
    out_channels = config["out_channels"] or in_channels
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"out_channels {out_channels} is neither in_channels ({in_channels}) nor twice it "
                         "(learned sigma)")
    heads = config["num_attention_heads"]
    return {"_class_name": "DiT", "input_size": config["sample_size"], "patch_size": config["patch_size"],
            "in_channels": in_channels, "hidden_size": heads * config["attention_head_dim"],
            "depth": config["num_layers"], "num_heads": heads, "num_classes": config["num_embeds_ada_norm"],
            "learn_sigma": out_channels == 2 * in_channels, "class_dropout_prob": 0.1, "mlp_ratio": 4.0,
            "timestep_freq_shift": 1, "mlp_norm_eps": config["norm_eps"]}


def diffusers_config(model, allow_timestep_change: bool = False) -> dict:
    """The DiTTransformer2DModel config of an edt_lab DiT; ValueError when diffusers' class cannot reproduce it."""
    if not isinstance(model, DiT):
        raise ValueError(f"only a DiT has a diffusers equivalent (DiTTransformer2DModel), got {type(model).__name__}; "
                         "share an EDT as a pipeline folder (edt-lab export)")
    cfg = model.config
    if cfg.mlp_ratio != 4.0:
        raise ValueError(f"DiTTransformer2DModel has MLPs of 4x the width, this DiT {cfg.mlp_ratio}x")
    if cfg.class_dropout_prob <= 0:
        raise ValueError("DiTTransformer2DModel always has a null-label row, this DiT (class_dropout_prob 0) has none")
    if cfg.timestep_freq_shift != 1 and not allow_timestep_change:
        raise ValueError(
            f"this DiT computes timestep features with the frequencies 1/10000^(i/{128 - cfg.timestep_freq_shift}), "
            "diffusers' DiTTransformer2DModel with 1/10000^(i/127), so in diffusers its outputs would differ; "
            "allow the change (--allow-timestep-change) to write it anyway")
    return {"num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.hidden_size // cfg.num_heads,
            "in_channels": cfg.in_channels, "out_channels": model.out_channels, "num_layers": cfg.depth,
            "sample_size": cfg.input_size, "patch_size": cfg.patch_size, "num_embeds_ada_norm": cfg.num_classes,
            "norm_eps": cfg.mlp_norm_eps}


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------

def _tensor_pairs(depth: int) -> dict[str, str]:
    """edt_lab tensor -> diffusers tensor for everything but qkv; the embedder maps to block 0's copy."""
    modules = dict(TOP_MODULES)
    modules.update({edt: f"{FIRST_EMBEDDER}{name}" for edt, name in EMBEDDER_MODULES.items()})
    for i in range(depth):
        modules.update({f"blocks.{i}.{edt}": f"transformer_blocks.{i}.{name}" for edt, name in BLOCK_MODULES.items()})
    pairs = {f"{edt}.{part}": f"{name}.{part}" for edt, name in modules.items() for part in ("weight", "bias")}
    pairs[LABEL_TABLE[0]] = f"{FIRST_EMBEDDER}{LABEL_TABLE[1]}"
    return pairs


def check_embedder_copies(state_dict: dict, depth: int) -> None:
    """Raise ValueError unless every block's copy of the timestep and class embedder equals block 0's."""
    for key in [k for k in state_dict if k.startswith(FIRST_EMBEDDER)]:
        name = key[len(FIRST_EMBEDDER):]
        for i in range(1, depth):
            copy = state_dict.get(f"transformer_blocks.{i}.{EMBEDDER}.{name}")
            if copy is None:
                raise ValueError(f"block {i} has no copy of the timestep/class embedder ({name})")
            if not torch.equal(copy, state_dict[key]):
                raise ValueError(
                    f"block {i}'s copy of the timestep/class embedder ({name}) differs from block 0's by up to "
                    f"{(copy.float() - state_dict[key].float()).abs().max():.3g}: DiT has one embedder for all "
                    "blocks, so this model (trained with separate copies) cannot be converted exactly")


def dit_state_dict(diffusers_state_dict: dict, depth: int) -> dict:
    """edt_lab DiT weights (without the fixed `pos_embed`, which diffusers does not store) of a
    DiTTransformer2DModel state dict; ValueError when the embedder copies disagree or keys are missing or left over."""
    check_embedder_copies(diffusers_state_dict, depth)
    source = dict(diffusers_state_dict)
    try:
        out = {edt: source.pop(name) for edt, name in _tensor_pairs(depth).items()}
        for i in range(depth):
            attn = f"transformer_blocks.{i}.attn1"
            for part in ("weight", "bias"):  # DiT's qkv is [q; k; v] stacked on the output dimension
                out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([source.pop(f"{attn}.to_{x}.{part}") for x in "qkv"])
    except KeyError as error:
        raise ValueError(f"not a DiTTransformer2DModel state dict: no {error.args[0]}") from None
    left = [k for k in source if not (k.startswith("transformer_blocks.") and f".{EMBEDDER}." in k)]
    if left:
        raise ValueError(f"DiTTransformer2DModel state dict with keys DiT has no place for: {left[:3]}")
    return out


def diffusers_state_dict(state_dict: dict, depth: int) -> dict:
    """The DiTTransformer2DModel state dict of edt_lab DiT weights: the embedder copied into every block."""
    out = {name: state_dict[edt] for edt, name in _tensor_pairs(depth).items()}
    for key in [k for k in out if k.startswith(FIRST_EMBEDDER)]:
        for i in range(1, depth):  # copies: safetensors refuses to save one tensor under several names
            out[f"transformer_blocks.{i}.{EMBEDDER}.{key[len(FIRST_EMBEDDER):]}"] = out[key].clone()
    for i in range(depth):
        for part in ("weight", "bias"):
            q, k, v = state_dict[f"blocks.{i}.attn.qkv.{part}"].chunk(3)
            out.update({f"transformer_blocks.{i}.attn1.to_{x}.{part}": w for x, w in zip("qkv", (q, k, v))})
    return out


def save_diffusers_dit(model, folder, allow_timestep_change: bool = False) -> Path:
    """Write an edt_lab DiT as a DiTTransformer2DModel folder (config.json + safetensors) that diffusers loads."""
    config = diffusers_config(model, allow_timestep_change)
    with torch.device("meta"):  # no random initialisation of weights that are replaced at once
        transformer = DiTTransformer2DModel(**config)
    transformer.load_state_dict(diffusers_state_dict(model.state_dict(), model.config.depth), strict=True,
                                assign=True)
    transformer.save_pretrained(folder)
    make_weights_readable(Path(folder))
    return Path(folder)


# ----------------------------------------------------------------------------------------------------------
# The AMM as a diffusers attention processor
# ----------------------------------------------------------------------------------------------------------

class AMMAttnProcessor:
    """Self-attention whose softmax is multiplied by the AMM `amm` (N, N), not renormalised, in eval mode only
    (a training forward is plain attention), as edt_lab's `set_amm`; for DiT-style attention (no mask, no
    cross-attention, no extra norms)."""

    def __init__(self, amm: torch.Tensor):
        self.amm = amm
        self._converted = {}  # (device, dtype) -> the AMM there, converted once rather than at every sampling step

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        extras = (attn.spatial_norm, attn.group_norm, attn.norm_q, attn.norm_k)
        if encoder_hidden_states is not None or attention_mask is not None or any(m is not None for m in extras) \
                or attn.residual_connection or hidden_states.ndim != 3:
            raise ValueError("the AMM processor handles plain self-attention on (B, N, C) tokens, as in DiT")
        B, N, C = hidden_states.shape
        if N != len(self.amm):
            raise ValueError(f"the AMM is for {len(self.amm)} tokens, this attention sees {N}")
        q, k, v = (proj(hidden_states).view(B, N, attn.heads, -1).transpose(1, 2)  # (B, heads, N, head_dim)
                   for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.training:
            out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        else:
            key = (q.device, q.dtype)
            if key not in self._converted:
                self._converted[key] = self.amm.to(device=q.device, dtype=q.dtype)
            out = (attention_probs(q, k, attn.scale) * self._converted[key]) @ v
        out = attn.to_out[0](out.transpose(1, 2).reshape(B, N, C))
        return attn.to_out[1](out) / attn.rescale_output_factor


def set_amm_processors(transformer, blocks, radius: float | None = None, scale: float = 0.5,
                       form: str = "exp") -> None:
    """Give the self-attention of `blocks` (indices of `transformer_blocks`) the AMM and every other block's
    diffusers' default processor (AttnProcessor2_0), through each attention's `set_processor`; radius, scale and
    form as in `set_amm` ([] turns the AMM off). diffusers 0.42's DiTTransformer2DModel has no `set_attn_processor`.
    """
    config = getattr(transformer, "config", {})
    if not hasattr(transformer, "transformer_blocks") or "sample_size" not in config or "patch_size" not in config:
        raise ValueError(f"expected a DiT-style diffusers transformer (transformer_blocks, sample_size, patch_size), "
                         f"got {type(transformer).__name__}")
    blocks = check_blocks(blocks, len(transformer.transformer_blocks))
    amm = modulation_matrix(config["sample_size"] // config["patch_size"], radius, scale, form) if blocks else None
    for i, block in enumerate(transformer.transformer_blocks):
        block.attn1.set_processor(AMMAttnProcessor(amm) if i in blocks else AttnProcessor2_0())

