"""Cost accounting as the field reports it: multiply-accumulates (MACs) of one sample's forward pass.

DiT, MDT and EDT papers call this number "GFLOPs"; like the released `get_flops`, it counts only matrix
products (linear layers, the patch convolution and the two attention products), not norms, softmax or
activations. `torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-accumulate, so its
total is twice ours. Everything here is analytic: it reads the model's config and works on meta-device models.
"""

from dataclasses import dataclass

from .models import DiT, EDT, MDTv2

def attention_macs(tokens: int, width: int) -> int:
    """The two attention products of one block, QK^T and (softmax) V: the only part that grows as N^2."""
    return 2 * tokens**2 * width


def block_macs(tokens: int, width: int, cond_dim: int, mlp_ratio: float = 4.0) -> int:
    """One adaLN-Zero block: adaLN, qkv, the two attention products, proj, MLP."""
    hidden = int(width * mlp_ratio)
    return (6 * cond_dim * width + 3 * tokens * width**2 + attention_macs(tokens, width) + tokens * width**2
            + 2 * tokens * width * hidden)


def down_macs(tokens: int, width: int, out_width: int, cond_dim: int) -> int:
    """Token merge: adaLN (8C) and the 4C -> C' reduction on N/4 tokens."""
    return 8 * cond_dim * width + (tokens // 4) * 4 * width * out_width


def up_macs(tokens: int, width: int, out_width: int) -> int:
    """Token expansion: C -> 4C' on N tokens."""
    return tokens * width * 4 * out_width


def concat_macs(tokens: int, width: int, cond_dim: int) -> int:
    """Long-skip fusion: adaLN (4C) and the 2C -> C projection."""
    return 4 * cond_dim * width + 2 * tokens * width**2


def skip_macs(tokens: int, width: int) -> int:
    """MDTv2's long-skip fusion `skip_linear`: [x, skip] 2D -> D on N tokens."""
    return 2 * tokens * width**2


def embed_macs(tokens: int, patch: int, in_channels: int, width: int) -> int:
    """Patch embedding plus the timestep MLP (256 -> D -> D); the label lookup costs nothing."""
    return tokens * patch**2 * in_channels * width + 256 * width + width**2


def final_macs(tokens: int, patch: int, out_channels: int, width: int) -> int:
    """Final adaLN (D -> 2D) and the projection to patches."""
    return 2 * width**2 + tokens * width * patch**2 * out_channels


@dataclass
class CostItem:
    """The MACs of one module of one sample's forward."""

    module: str  # state-dict prefix, e.g. "blocks.3", "down_blocks.0", "de_blocks.1", "embed", "final_layer"
    stage: str  # "embed", "stage 0" .. "stage 4" (EDT), "blocks" (DiT), "encoder in" .. "decoder" (MDTv2), "final"
    macs: int
    tokens: int
    width: int
    attention: int = 0  # of macs, the attention products (QK^T and AV) of a transformer block


@dataclass
class CostReport:
    """Per-module MACs of one sample's forward, with totals by stage."""

    items: list

    @property
    def total(self) -> int:
        return sum(item.macs for item in self.items)

    @property
    def gflops(self) -> float:
        """The field's "GFLOPs": giga multiply-accumulates."""
        return self.total / 1e9

    @property
    def attention_total(self) -> int:
        return sum(item.attention for item in self.items)

    def by_stage(self) -> dict:
        stages = {}
        for item in self.items:
            stages[item.stage] = stages.get(item.stage, 0) + item.macs
        return stages


def count_macs(model) -> CostReport:
    """Analytic MACs of one sample's forward (sampling: no masked pass) for an EDT, DiT or MDTv2 (meta-device models
    work). An MDTv2 block behind a long skip counts its `skip_linear` in the block's own item; the side-interpolator,
    which only the masked training pass runs, is listed at 0."""
    if not isinstance(model, (EDT, DiT, MDTv2)):  # checked first: a model name has no .config
        raise ValueError(f"count_macs expects an EDT, DiT or MDTv2 model (for a registered name, "
                         f"count_macs(create_model(name))), got {type(model).__name__}")
    cfg = model.config
    patch, in_ch = cfg.patch_size, cfg.in_channels
    if isinstance(model, EDT):
        d0, dims = cfg.dims[0], cfg.dims
        tokens = [g * g for g in model.stage_grids]
        items = [CostItem("embed", "embed", embed_macs(tokens[0], patch, in_ch, d0), tokens[0], d0)]
        index = 0
        for s, depth in enumerate(cfg.stages_depth):
            stage = f"stage {s}"
            if s >= 3:
                j = s - 3
                items.append(CostItem(f"up_blocks.{j}", stage, up_macs(tokens[s - 1], dims[s - 1], dims[s]),
                                      tokens[s - 1], dims[s - 1]))
                items.append(CostItem(f"concat_blocks.{j}", stage, concat_macs(tokens[s], dims[s], d0),
                                      tokens[s], dims[s]))
            for _ in range(depth):
                items.append(CostItem(f"blocks.{index}", stage, block_macs(tokens[s], dims[s], d0, cfg.mlp_ratio),
                                      tokens[s], dims[s], attention_macs(tokens[s], dims[s])))
                index += 1
            if s < 2:
                items.append(CostItem(f"down_blocks.{s}", stage, down_macs(tokens[s], dims[s], dims[s + 1], d0),
                                      tokens[s], dims[s]))
        width, n_tokens = d0, tokens[0]
    elif isinstance(model, DiT):
        width, n_tokens = cfg.hidden_size, model.grid_size**2
        items = [CostItem("embed", "embed", embed_macs(n_tokens, patch, in_ch, width), n_tokens, width)]
        items += [CostItem(f"blocks.{i}", "blocks", block_macs(n_tokens, width, width, cfg.mlp_ratio), n_tokens, width,
                           attention_macs(n_tokens, width)) for i in range(cfg.depth)]
    elif isinstance(model, MDTv2):
        width, n_tokens = cfg.hidden_size, model.grid_size**2
        items = [CostItem("embed", "embed", embed_macs(n_tokens, patch, in_ch, width), n_tokens, width)]
        block = block_macs(n_tokens, width, width, cfg.mlp_ratio)
        for prefix, stage, skip in (("en_inblocks", "encoder in", 0), ("en_outblocks", "encoder out", 1),
                                    ("de_blocks", "decoder", 1)):
            items += [CostItem(f"{prefix}.{i}", stage, block + skip * skip_macs(n_tokens, width), n_tokens, width,
                               attention_macs(n_tokens, width)) for i in range(len(getattr(model, prefix)))]
        items.append(CostItem("sideblocks.0", "side (training only)", 0, n_tokens, width))
    items.append(CostItem("final_layer", "final", final_macs(n_tokens, patch, model.out_channels, width),
                          n_tokens, width))
    return CostReport(items)


def count_params(model) -> dict:
    """Parameter counts: `trainable` (as papers report) and `total` (with the fixed sin-cos tables)."""
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


def format_report(name: str, model) -> str:
    """A text table of a model's cost by stage and module."""
    report, params = count_macs(model), count_params(model)
    stage_width = 2 + max(len(item.stage) for item in report.items)
    lines = [f"{name}: {report.gflops:.3f} GFLOPs (multiply-accumulates, one sample, matrix products only), "
             f"{params['trainable']:,} trainable parameters",
             f"{'stage':<{stage_width}}{'module':<18}{'tokens':>7}{'width':>7}{'GMACs':>10}{'share':>8}"]
    for item in report.items:
        lines.append(f"{item.stage:<{stage_width}}{item.module:<18}{item.tokens:>7}{item.width:>7}"
                     f"{item.macs / 1e9:>10.4f}{item.macs / report.total:>8.1%}")
    lines.append("by stage: " + ", ".join(f"{s} {m / 1e9:.3f}" for s, m in report.by_stage().items()))
    lines.append(f"attention products (QK^T and AV): {report.attention_total / 1e9:.3f} GMACs, "
                 f"{report.attention_total / report.total:.1%} of the total")
    return "\n".join(lines)

