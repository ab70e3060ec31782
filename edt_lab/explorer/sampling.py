"""Sampling for the explorer: one set of images, or AMM off and on from the same noise, with what the views need."""

import time
from dataclasses import dataclass

import numpy as np

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


def sample(pipe, request: Request, amm_blocks=None, progress=None, progress_range=(0.0, 1.0), label="",
           record_views: bool = True) -> Run:
    """Images of `request` with AMM at `amm_blocks` (None: the request's blocks); image i uses the noise of (seed, i).

    progress: optional f(fraction, text) called after every step, the fraction mapped into `progress_range`.
    record_views: also record what the page's views show: every block's attention at the middle step, and the
    per-step previews (pixel-space models only, as a latent model would decode every step through the VAE).
    """
    blocks = request.amm_blocks if amm_blocks is None else list(amm_blocks)
    pipe.scheduler = make_scheduler(request.sampler)
    low, high = progress_range

    def on_step(_pipe, step, _t, _tensors):
        if progress is not None:
            progress(low + (high - low) * (step + 1) / request.steps, f"{label}step {step + 1}/{request.steps}")
        return {}

    start = time.perf_counter()
    # The pipeline runs without gradients; torch.inference_mode here would stop bf16 autocast from caching the
    # weights' casts, so each step would cast them again.
    out = pipe([request.class_index] * request.num_images, guidance_scale=request.guidance,
               generator=image_generators(request.seed, range(request.num_images)),
               num_inference_steps=request.steps, output_type="np", amm_blocks=blocks,
               amm_radius=request.radius, amm_scale=request.scale, callback_on_step_end=on_step,
               return_previews=record_views and pipe.vae is None,
               attention_blocks=range(pipe.transformer.num_blocks) if record_views else None,
               precision=request.precision, cfg_schedule=request.cfg_schedule,
               guidance_interval=request.guidance_interval)
    return Run(out.images, out.previews or [], out.attention or {}, blocks, time.perf_counter() - start)


def compare(pipe, request: Request, progress=None, record_views: bool = True) -> tuple[Run, Run]:
    """The same request with AMM off and with AMM at the request's blocks, from the same noise."""
    if not request.amm_blocks:
        raise ValueError("AMM is off in every block: choose blocks (or a preset) to compare AMM off with AMM on")
    off = sample(pipe, request, [], progress, (0.0, 0.5), "AMM off: ", record_views)
    on = sample(pipe, request, None, progress, (0.5, 1.0), "AMM on: ", record_views)
    return off, on
