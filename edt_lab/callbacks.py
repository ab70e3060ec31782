"""Step callbacks for `EDTPipeline`'s `callback_on_step_end`: previews, attention maps, several at once.

A callback is f(pipe, step_index, timestep, tensors) -> dict or None, called after every sampling step with the
tensors it asks for (`callback_on_step_end_tensor_inputs`, or its own `tensor_inputs`); a returned "latents"
replaces the sample. The classes here keep what they record as attributes, to read after the call.
"""

from contextlib import ExitStack

from .checks import whole_number
from .models import capture_attention


class StepCallbacks:
    """Several callbacks as one, called in order (as diffusers' MultiPipelineCallbacks); a "latents" that one
    returns is what the next one receives."""

    def __init__(self, callbacks):
        self.callbacks = [c for c in callbacks if c is not None]
        for callback in self.callbacks:
            if not callable(callback):
                raise ValueError(f"a step callback must be a function, got {type(callback).__name__}")

    @property
    def tensor_inputs(self) -> list[str]:
        names = [n for c in self.callbacks for n in getattr(c, "tensor_inputs", ["latents"])]
        return list(dict.fromkeys(["latents", *names]))

    def __call__(self, pipe, step_index, timestep, tensors):
        returned = {}
        for callback in self.callbacks:
            out = callback(pipe, step_index, timestep, tensors) or {}
            tensors, returned = {**tensors, **out}, {**returned, **out}
        return returned


class PreviewCallback:
    """The predicted clean images x0 after every step: `images[s]`, decoded as the pipeline's `output_type` would
    ("np" (B, H, W, C), "pt" (B, C, H, W) in [0, 1], or "pil"). A latent model decodes each through its VAE."""

    tensor_inputs = ["pred_original_sample"]

    def __init__(self, output_type: str = "np"):
        self.output_type = output_type
        self.images = []

    def __call__(self, pipe, step_index, timestep, tensors):
        self.images.append(pipe.to_images(tensors["pred_original_sample"], self.output_type))
        return {}


class AttentionCapture:
    """The attention of `blocks` at sampling step index `step`: `maps[block]` holds "attention" (N, N), the
    softmax, and "modulated" (N, N), that times the AMM (None in a block without AMM), each the mean over heads of
    the first image's conditional pass. Recording takes the explicit attention path, at that step only.

        with AttentionCapture(pipe.transformer, [7, 10], step=12) as capture:
            pipe(labels, callback_on_step_end=capture)
        capture.maps
    """

    tensor_inputs = []

    def __init__(self, model, blocks, step: int):
        self.model, self.blocks, self.step = model, list(blocks), whole_number(step, "the attention step")
        bad = [b for b in self.blocks if not 0 <= whole_number(b, "an attention block") < model.num_blocks]
        if bad:
            raise ValueError(f"attention block {bad[0]} is out of range: expected 0..{model.num_blocks - 1}")
        if self.step < 0:
            raise ValueError(f"the attention step must not be negative, got {step}")
        self.maps = None
        self._stack, self._captured = None, None

    def __enter__(self):
        self._stack, self.maps = ExitStack(), None
        if self.step == 0:  # the first forward runs before any callback
            self._arm()
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self._stack = None

    def _arm(self):
        self._captured = self._stack.enter_context(capture_attention(self.model, self.blocks))

    def __call__(self, pipe, step_index, timestep, tensors):
        if self._stack is None:
            raise ValueError("AttentionCapture records only inside its with statement")
        if step_index == self.step:
            self.maps = {block: {name: None if maps is None else maps[0].float().mean(0).cpu().numpy()
                                 for name, maps in self._captured[block].items()} for block in self.blocks}
            self._stack.close()
        elif step_index + 1 == self.step:
            self._arm()
        last = len(pipe.scheduler.timesteps) - 1
        if step_index == last and self.maps is None:
            raise ValueError(f"the attention step must lie in 0..{last}, got {self.step}")
        return {}
