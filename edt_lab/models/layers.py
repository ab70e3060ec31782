"""Layers shared by EDT and DiT: embeddings, the MLP, adaLN modulation and the final layer (DiT's recipe)."""

import math

import torch
import torch.nn as nn


def modulate(x, shift, scale):
    """adaLN: x (B, N, C) scaled and shifted per sample by (B, C) vectors, x * (1 + scale) + shift, in one pass
    over x (addcmul) rather than two."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x, gate, update):
    """x + gate * update for x, update (B, N, C) and a per-sample gate (B, C), in one pass (addcmul)."""
    return torch.addcmul(x, gate.unsqueeze(1), update)


def adaln_modulation(cond_dim: int, out_dim: int) -> nn.Sequential:
    """SiLU then Linear(cond_dim, out_dim): keys `adaLN_modulation.1.*` as released."""
    return nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, out_dim))


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos features (M, dim) of positions (M,): [sin(p w_i), cos(p w_i)], w_i = 1 / 10000^(i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D position embedding (1, n*n, dim): first half encodes the column, second half the row."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    return emb.float().unsqueeze(0)


def fixed_pos_embed(dim: int, grid_size: int) -> nn.Parameter:
    """A sin-cos table stored as a frozen parameter, so released state dicts (which hold it) load as they are."""
    return nn.Parameter(sincos_2d(dim, grid_size), requires_grad=False)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) -> tokens (B, N, D) with a patch x patch convolution (`x_embedder.proj`)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        # contiguous: a transposed view would carry a channels-first layout through every residual add, and each
        # LayerNorm and Linear would then copy it
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (B, N, D)


class TimestepEmbedder(nn.Module):
    """Diffusion timesteps (B,) -> (B, D): 256 sinusoidal features ([cos, sin]) then a two-layer MLP.

    The frequencies are 1 / 10000^(i / (128 - frequency_shift)), i = 0 .. 127: shift 0 is DiT's and EDT's,
    1 is what diffusers' DiTTransformer2DModel computes.
    """

    frequency_dim = 256

    def __init__(self, dim: int, frequency_shift: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(self.frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.frequency_shift = frequency_shift

    @staticmethod
    def timestep_features(t, dim: int, max_period: float = 10000.0, frequency_shift: int = 0):
        half = dim // 2
        arange = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(max_period) * arange / (half - frequency_shift))
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)

    def forward(self, t):
        return self.mlp(self.timestep_features(t, self.frequency_dim, frequency_shift=self.frequency_shift))


class LabelEmbedder(nn.Module):
    """Class labels (B,) -> (B, D); row `num_classes` is the null label that classifier-free guidance uses."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), dim)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels):
        if self.training and self.dropout_prob > 0:  # drop labels so the model also learns p(x)
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class Mlp(nn.Module):
    """C -> hidden -> C with tanh-approximated GELU (`mlp.fc1`, `mlp.fc2`)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class FinalLayer(nn.Module):
    """adaLN LayerNorm then Linear(D, p*p*out_channels): tokens (B, N, D) -> patches (B, N, p*p*out)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = adaln_modulation(dim, 2 * dim)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def unpatchify(x, patch_size: int, channels: int):
    """Patches (B, N, p*p*C) -> image (B, C, H, W), row-major tokens."""
    n = int(math.isqrt(x.shape[1]))
    x = x.reshape(x.shape[0], n, n, patch_size, patch_size, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], channels, n * patch_size, n * patch_size)


def init_transformer_weights(model: nn.Module) -> None:
    """DiT's initialisation of an EDT or DiT: xavier Linear weights and zero biases, the patch conv like a Linear,
    N(0, 0.02) embeddings, and zero adaLN in every block and in the final layer (adaLN-Zero), zero final linear.
    EDT's down-sampling and skip adaLN layers keep their xavier weights, as released."""

    def basic_init(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)

    model.apply(basic_init)
    weight = model.x_embedder.proj.weight
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
    nn.init.constant_(model.x_embedder.proj.bias, 0)
    nn.init.normal_(model.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(model.t_embedder.mlp[2].weight, std=0.02)
    zero = [block.adaLN_modulation[-1] for block in model.blocks]
    zero += [model.final_layer.adaLN_modulation[-1], model.final_layer.linear]
    for module in zero:
        for param in module.parameters():
            nn.init.constant_(param, 0)


def randomize_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (1/sqrt(fan-in) for matrices), in eval mode: an untrained stand-in whose every
    part acts, for demos and numerical checks, since adaLN-Zero's zero gates would hide every block."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the fixed sin-cos position tables stay as they are
                std = 1 / math.sqrt(p[0].numel()) if p.ndim >= 2 else 0.02
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()
