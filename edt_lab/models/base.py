"""What EDT, DiT and MDTv2 share: input checks, classifier-free guidance (and its schedules) and the AMM switch."""

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin

from ..amm import check_blocks, modulation_matrix
from ..guidance import guidance_scales
from ..checks import finite_number, whole_number

def check_config(mlp_ratio, class_dropout_prob, **sizes) -> None:
    """Refuse a configuration that torch would fail on deep inside a layer, or build wrong without a word: every
    size a positive whole number (a tuple of them for EDT's five stages), mlp_ratio > 0, class_dropout_prob in
    [0, 1)."""
    for name, value in sizes.items():
        for each in value if isinstance(value, (tuple, list)) else (value,):
            if whole_number(each, name) < 1:
                raise ValueError(f"{name} must be positive, got {value!r}")
    if not finite_number(mlp_ratio, "mlp_ratio") > 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio!r}")
    if not 0 <= finite_number(class_dropout_prob, "class_dropout_prob") < 1:
        raise ValueError(f"class_dropout_prob must lie in [0, 1), got {class_dropout_prob!r}")


class ClassConditionalTransformer(ModelMixin, ConfigMixin):
    """Base of EDT, DiT and MDTv2: subclasses define `blocks`, `block_info()` and `forward(x, t, y, masks=None)`."""

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def amm_blocks(self) -> tuple[int, ...]:
        """Indices of the blocks whose attention is modulated (in eval mode)."""
        return tuple(i for i, block in enumerate(self.blocks) if block.attn.amm is not None)

    def block_info(self) -> list[dict]:
        """One dict per block: index, stage, grid (tokens per side), phase, width, heads."""
        raise NotImplementedError

    def set_amm(self, blocks, radius: float | None = None, scale: float = 0.5, form: str = "exp") -> None:
        """Modulate the attention of `blocks` (indices over all blocks; [] turns AMM off).

        radius None takes the released radius of each block's own grid; scale is k; form "exp" or "cos" (512px).
        """
        blocks = check_blocks(blocks, self.num_blocks)
        info = self.block_info()
        # Every matrix first: a refused radius, scale or form leaves the AMM as it was.
        matrices = [modulation_matrix(info[i]["grid"], radius, scale, form) if i in blocks else None
                    for i in range(len(self.blocks))]
        for block, matrix in zip(self.blocks, matrices):
            block.attn.amm = matrix

    def check_inputs(self, x, t, y):
        """Raise ValueError unless x is (B, in_channels, input_size, input_size) with matching t (B,), y (B,), all
        tensors, and y within the label embedding's rows."""
        for name, value in (("input", x), ("timesteps", t), ("labels", y)):
            if not torch.is_tensor(value):
                raise ValueError(f"expected {name} as a tensor, got {type(value).__name__} {value!r:.40}")
        size, channels = self.config.input_size, self.config.in_channels
        if x.ndim != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(f"expected input of shape (B, {channels}, {size}, {size}), got {tuple(x.shape)}")
        for name, value in (("timesteps", t), ("labels", y)):
            if value.shape != (x.shape[0],):
                raise ValueError(f"expected {name} of shape ({x.shape[0]},), got {tuple(value.shape)}")
        if torch.compiler.is_compiling():  # the label range needs host values: a graph break per step
            return
        top = self.y_embedder.embedding_table.num_embeddings - 1  # num_classes is the null label, if the model has one
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > top):
            null = f"{top} is the null label" if top == self.config.num_classes else "this model has no null label"
            raise ValueError(f"labels must lie in [0, {top}] ({null}), got {int(y.min())}..{int(y.max())}")

    def forward_with_cfg(self, x, t, y, guidance_scale: float, guided_channels: int | None = None,
                         guidance_schedule: str = "constant"):
        """Classifier-free guidance: the first half of the batch is conditional, the second carries null labels.

        x (2B, C, H, W): only x[:B] is used and duplicated. guided_channels None guides all noise channels;
        3 reproduces the released scripts (a DiT legacy for 4-channel latents). guidance_schedule "constant" or
        "power-cos" (MDTv2's released sampling, with guided_channels 3; see `edt_lab.guidance.guidance_scales`).
        """
        channels = self.config.in_channels if guided_channels is None else guided_channels
        if not 1 <= channels <= self.config.in_channels:
            raise ValueError(f"guided_channels must lie in [1, {self.config.in_channels}], got {channels}")
        half = x[: len(x) // 2]
        scale = guidance_scales(t[: len(half)], guidance_scale, guidance_schedule).float().view(-1, 1, 1, 1)
        # float32: under bf16 autocast the difference of the two predictions would keep only bf16's 8 bits
        out = self.forward(torch.cat([half, half], dim=0), t, y).float()
        eps, rest = out[:, :channels], out[:, channels:]
        cond_eps, uncond_eps = eps.chunk(2, dim=0)
        guided = uncond_eps + scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([guided, guided], dim=0), rest], dim=1)
