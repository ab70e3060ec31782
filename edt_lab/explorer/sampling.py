"""Sampling for the explorer: one set of images, or AMM off and on from the same noise, with what the views need."""

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from ..amm import amm_applied
from ..callbacks import AttentionCapture, PreviewCallback, StepCallbacks
from ..pipeline import image_generators, make_scheduler
from .controls import Request


@dataclass
class Run:
    """One pipeline call: images (B, H, W, C) in [0, 1], previews per step, attention maps per block."""

    images: np.ndarray
    previews: list  # previews[s]: (B, H, W, C) predicted clean images after step s; [] for latent models
    attention: dict  # block -> {"attention": (N, N) softmax, "modulated": (N, N) softmax x AMM or None}
    amm_blocks: list
    seconds: float


class Progress:
    """A step callback reporting the fraction done, mapped into `span`, and a text to f(fraction, text)."""

    tensor_inputs = []

    def __init__(self, report, steps: int, span=(0.0, 1.0), label: str = ""):
        self.report, self.steps, self.span, self.label = report, steps, span, label

    def __call__(self, pipe, step_index, timestep, tensors):
        low, high = self.span
        done = step_index + 1
        self.report(low + (high - low) * done / self.steps, f"{self.label}step {done}/{self.steps}")
        return {}


def sample(pipe, request: Request, amm_blocks=None, progress=None, progress_range=(0.0, 1.0), label="",
           record_views: bool = True) -> Run:
    """Images of `request` with AMM at `amm_blocks` (None: the request's blocks); image i uses the noise of (seed, i).

    progress: optional f(fraction, text) called after every step, the fraction mapped into `progress_range`.
    record_views: also record what the page's views show: every block's attention at the middle step, and the
    per-step previews (pixel-space models only, as a latent model would decode every step through the VAE).
    """
    blocks = request.amm_blocks if amm_blocks is None else list(amm_blocks)
    pipe.scheduler = make_scheduler(request.sampler)
    model, steps = pipe.transformer, request.num_inference_steps
    previews = PreviewCallback("np") if record_views and pipe.vae is None else None
    capture = AttentionCapture(model, range(model.num_blocks), steps // 2) if record_views else None
    reporter = Progress(progress, steps, progress_range, label) if progress is not None else None
    start = time.perf_counter()
    # The pipeline runs without gradients; torch.inference_mode here would stop bf16 autocast from caching the
    # weights' casts, so each step would cast them again.
    with amm_applied(model, blocks, request.amm_radius, request.amm_scale), capture or nullcontext():
        images = pipe([request.class_index] * request.num_images, guidance=request.guidance,
                      generator=image_generators(request.seed, range(request.num_images)),
                      num_inference_steps=steps, output_type="np", precision=request.precision,
                      callback_on_step_end=StepCallbacks([previews, capture, reporter])).images
    return Run(images, previews.images if previews else [], capture.maps if capture else {}, blocks,
               time.perf_counter() - start)


def compare(pipe, request: Request, progress=None, record_views: bool = True) -> tuple[Run, Run]:
    """The same request with AMM off and with AMM at the request's blocks, from the same noise."""
    if not request.amm_blocks:
        raise ValueError("AMM is off in every block: choose blocks (or a preset) to compare AMM off with AMM on")
    off = sample(pipe, request, [], progress, (0.0, 0.5), "AMM off: ", record_views)
    on = sample(pipe, request, None, progress, (0.5, 1.0), "AMM on: ", record_views)
    return off, on
