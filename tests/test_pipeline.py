"""EDTPipeline: schedulers, ADM-faithful respaced DDPM, guidance, the AMM set on the model, step callbacks (previews,
attention), save/load."""

import contextlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler)
from diffusers.utils.torch_utils import randn_tensor

import edt_lab
from edt_lab.amm import amm_applied, apply_amm
from edt_lab.callbacks import AttentionCapture, PreviewCallback, StepCallbacks
from edt_lab.guidance import Guidance
from edt_lab.models import create_model
from edt_lab.pipeline import EDTPipeline, image_generators, load_default, make_scheduler
from edt_lab.settings import SAMPLERS

DIGITS = {i: name for i, name in enumerate("zero one two three four five six seven eight nine".split())}


def randomize(model, seed: int = 0):
    """Small random weights everywhere: the zero-initialised adaLN gates would hide every block (and the AMM)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def tiny_edt(in_channels: int = 4, input_size: int = 16, seed: int = 0):
    """A random EDT with the S/B block layout (12 blocks, stage grids 8, 4, 2, 4, 8) and 10 classes."""
    model = create_model("EDT-T/2", dims=(16, 24, 32, 24, 16), num_heads=(1, 1, 1, 1, 1), in_channels=in_channels,
                         input_size=input_size)
    return randomize(model, seed)


def tiny_vae(seed: int = 0):
    """A random AutoencoderKL with 4 latent channels and 8x down-sampling, like the SD VAE but tiny."""
    torch.manual_seed(seed)
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                         sample_size=128).eval()


@pytest.fixture(scope="module")
def latent_pipe():
    pipe = EDTPipeline(tiny_edt(), make_scheduler("ddpm"), tiny_vae(), DIGITS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pixel_pipe():
    pipe = EDTPipeline(tiny_edt(in_channels=1), make_scheduler("ddim"), None, DIGITS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------------------
# Schedulers
# ----------------------------------------------------------------------------------------------------------

def adm_respaced_timesteps(num_timesteps: int, count: int) -> list[int]:
    """ADM's space_timesteps(T, str(count)) for one section, written out independently."""
    stride, current, taken = (num_timesteps - 1) / (count - 1), 0.0, []
    for _ in range(count):
        taken.append(round(current))
        current += stride
    return sorted(set(taken))


def test_make_scheduler_kinds_and_shared_betas():
    kinds = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler,
             "dpm-karras": DPMSolverMultistepScheduler, "dpm3-karras": DPMSolverMultistepScheduler,
             "dpm-sde-karras": DPMSolverMultistepScheduler, "unipc-karras": UniPCMultistepScheduler,
             "deis-karras": DEISMultistepScheduler, "euler-karras": EulerDiscreteScheduler,
             "euler-ancestral": EulerAncestralDiscreteScheduler}
    assert set(kinds) == set(SAMPLERS)
    schedulers = {name: make_scheduler(name) for name in kinds}
    for name, scheduler in schedulers.items():
        assert isinstance(scheduler, kinds[name])
        torch.testing.assert_close(scheduler.betas, torch.linspace(1e-4, 0.02, 1000), atol=1e-9, rtol=0)
    assert schedulers["ddpm"].config.variance_type == "learned_range"
    assert not schedulers["ddpm"].config.clip_sample and not schedulers["ddim"].config.clip_sample
    assert schedulers["dpm"].config.algorithm_type == "dpmsolver++" and schedulers["dpm"].config.solver_order == 2
    assert schedulers["dpm"].config.variance_type is None  # else diffusers keeps only 3 eps channels
    karras = schedulers["dpm-karras"]
    assert karras.config.use_karras_sigmas and not schedulers["dpm"].config.use_karras_sigmas
    assert karras.config.algorithm_type == "dpmsolver++" and karras.config.solver_order == 2
    for scheduler in (schedulers["dpm"], karras):
        scheduler.set_timesteps(25)
    # Karras's noise levels put more of the 25 steps at low noise: more timesteps below 200
    assert (karras.timesteps < 200).sum() > (schedulers["dpm"].timesteps < 200).sum()
    assert schedulers["dpm3-karras"].config.solver_order == 3
    assert schedulers["dpm3-karras"].config.algorithm_type == "dpmsolver++"
    assert schedulers["dpm-sde-karras"].config.algorithm_type == "sde-dpmsolver++"
    assert schedulers["dpm-sde-karras"].config.solver_order == 2
    for name in ("dpm3-karras", "dpm-sde-karras", "unipc-karras", "deis-karras"):
        scheduler = schedulers[name]
        assert scheduler.config.use_karras_sigmas and scheduler.config.prediction_type == "epsilon"
        scheduler.set_timesteps(25)
        assert scheduler.timesteps.tolist() == karras.timesteps.tolist()  # the same 25 noise levels
    assert schedulers["unipc-karras"].config.solver_order == 2 and schedulers["deis-karras"].config.solver_order == 2
    assert schedulers["euler-karras"].config.use_karras_sigmas
    assert schedulers["euler-karras"].config.prediction_type == schedulers["euler-ancestral"].config.prediction_type \
        == "epsilon"
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        make_scheduler("euler")
    for steps in (10.5, "1000", None, 10**9):
        with pytest.raises(ValueError, match="num_train_timesteps must"):
            make_scheduler("ddim", num_train_timesteps=steps)
    for seed, message in ((None, "seed must be a whole number, got None"), (-1, "seed must not be negative")):
        with pytest.raises(ValueError, match=message):
            image_generators(seed, [0])


def test_respaced_ddpm_matches_adm_learned_range_steps():
    """The paper's DDPM-250: ADM's timesteps, and each step's mean and learned-range variance on the respaced chain."""
    scheduler = make_scheduler("ddpm")
    scheduler.set_timesteps(250)
    used = adm_respaced_timesteps(1000, 250)
    assert scheduler.timesteps.tolist() == used[::-1]

    abar = scheduler.alphas_cumprod.double()[used]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1 - abar / abar_prev  # ADM rebuilds the betas of the respaced chain
    posterior_variance = betas * (1 - abar_prev) / (1 - abar)
    log_variance_clipped = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
    torch.manual_seed(0)
    for k in (249, 200, 124, 1, 0):
        x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        v = torch.rand(2, 4, 8, 8) * 2 - 1
        stepped = scheduler.step(torch.cat([eps, v], 1), scheduler.timesteps[249 - k], x,
                                 generator=torch.Generator().manual_seed(5)).prev_sample
        x0 = (x - (1 - abar[k]).sqrt() * eps) / abar[k].sqrt()
        mean = (betas[k] * abar_prev[k].sqrt() * x0 + (1 - abar_prev[k]) * (1 - betas[k]).sqrt() * x) / (1 - abar[k])
        frac = (v + 1) / 2
        log_variance = frac * torch.log(betas[k]) + (1 - frac) * log_variance_clipped[k]
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        expected = mean + (k > 0) * torch.exp(0.5 * log_variance) * noise  # no noise on the last step
        torch.testing.assert_close(stepped.double(), expected.double(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------

def test_output_types_labels_and_determinism(latent_pipe, pixel_pipe):
    out = latent_pipe(["three", 1], generator=image_generators(0, [0, 1]), num_inference_steps=3, output_type="np")
    assert out.images.shape == (2, 128, 128, 3) and out.images.dtype == np.float32
    assert 0 <= out.images.min() and out.images.max() <= 1 and list(out.keys()) == ["images"]
    again = latent_pipe([3, 1], generator=image_generators(0, [0, 1]), num_inference_steps=3, output_type="pt")
    np.testing.assert_array_equal(again.images.permute(0, 2, 3, 1).numpy(), out.images)
    # Per-image generators: an image does not depend on the rest of its batch (up to the kernels' rounding,
    # which differs by batch shape).
    alone = latent_pipe([1], generator=image_generators(0, [1]), num_inference_steps=3, output_type="np")
    np.testing.assert_allclose(alone.images[0], out.images[1], atol=1e-4)
    other_seed = latent_pipe([3], generator=image_generators(1, [0]), num_inference_steps=3, output_type="np")
    assert np.abs(other_seed.images[0] - out.images[0]).max() > 1e-3

    images = pixel_pipe("seven", generator=torch.Generator().manual_seed(0), num_inference_steps=2).images
    assert len(images) == 1 and images[0].size == (16, 16) and images[0].mode == "L"
    assert latent_pipe.get_label_ids(["zero", "nine"]) == [0, 9]
    with pytest.raises(ValueError, match=r"unknown class name 'ten': expected one of 'eight', .*'zero', or a "
                                         r"class index 0..9$"):
        latent_pipe.get_label_ids("ten")
    with pytest.raises(ValueError, match="class 10 is out of range: this model has classes 0..9"):
        latent_pipe([10], num_inference_steps=1)


ODE_OF = {"ddpm": lambda: DDIMScheduler.from_config(make_scheduler("ddpm").config),  # DDPM's timesteps, no noise
          "dpm-sde-karras": lambda: make_scheduler("dpm-karras"),
          "euler-ancestral": lambda: EulerDiscreteScheduler.from_config(make_scheduler("euler-ancestral").config)}


@pytest.mark.parametrize("sampler", sorted(ODE_OF))
def test_stochastic_samplers_draw_each_images_step_noise_from_its_generator(pixel_pipe, sampler):
    """Reproducible from the seed, an image's step noise does not depend on its batch, and there is step noise (the
    images differ from those of the same noise levels without it)."""
    kept = pixel_pipe.scheduler
    pixel_pipe.scheduler = make_scheduler(sampler)
    try:
        def draw(seed, indices):
            return pixel_pipe([7] * len(indices), generator=image_generators(seed, indices), num_inference_steps=4,
                              output_type="np").images
        pair = draw(0, [0, 1])
        np.testing.assert_array_equal(draw(0, [0, 1]), pair)
        np.testing.assert_allclose(draw(0, [1])[0], pair[1], atol=1e-4)
        pixel_pipe.scheduler = ODE_OF[sampler]()
        assert np.abs(draw(0, [0, 1]) - pair).max() > 1e-2
    finally:
        pixel_pipe.scheduler = kept


@pytest.mark.parametrize("sampler", ["euler-karras", "euler-ancestral"])
def test_previews_of_samplers_between_the_training_timesteps(pixel_pipe, sampler):
    """Euler scales its state by sqrt(1 + sigma²) and steps between the integer timesteps: each preview is the clean
    image the sampler itself predicts at that step (diffusers' pred_original_sample, x - sigma * eps)."""
    kept = pixel_pipe.scheduler
    pixel_pipe.scheduler = make_scheduler(sampler)
    previews = PreviewCallback("pt")
    try:
        out = pixel_pipe([3, 8], generator=image_generators(0, [0, 1]), num_inference_steps=5, output_type="pt",
                         callback_on_step_end=previews, precision="fp32")
    finally:
        pixel_pipe.scheduler = kept
    scheduler, model, y = make_scheduler(sampler), pixel_pipe.transformer, torch.tensor([3, 8])
    scheduler.set_timesteps(5)
    generators = image_generators(0, [0, 1])  # drawn from in the pipeline's order: the start, then each step
    x = randn_tensor(out.images.shape, generator=generators) * scheduler.init_noise_sigma
    assert len(previews.images) == 5
    with torch.no_grad():
        for t, preview in zip(scheduler.timesteps, previews.images):
            eps = model(scheduler.scale_model_input(x, t), t.expand(2), y)[:, :1]
            step = scheduler.step(eps, t, x, generator=generators)
            expected = pixel_pipe.to_images(step.pred_original_sample, "pt")
            torch.testing.assert_close(preview, expected, atol=1e-5, rtol=0)
            x = step.prev_sample


def test_bad_calls_raise_value_error(latent_pipe):
    pipe_without_vae = EDTPipeline(latent_pipe.transformer, make_scheduler("ddim"))
    cases = [
        (latent_pipe, dict(num_inference_steps=0), "num_inference_steps must lie in 1..1000, got 0"),
        (latent_pipe, dict(guidance_scale=0.5), "guidance_scale must be at least 1"),
        (latent_pipe, dict(output_type="jpg"), "unknown output_type"),
        (latent_pipe, dict(guidance=Guidance(channels=5)), r"guided_channels must lie in \[1, 4\], got 5"),  # unguided
        (pipe_without_vae, {}, "needs a VAE"),
        # Numbers that would be truncated, skip the guidance unnoticed (NaN) or ruin every image (inf).
        (latent_pipe, dict(num_inference_steps=2.0), "num_inference_steps must be a whole number, got 2.0"),
        (latent_pipe, dict(guidance_scale=float("nan")), "guidance_scale must be a finite number, got nan"),
        (latent_pipe, dict(guidance_scale=float("inf")), "guidance_scale must be a finite number, got inf"),
        (latent_pipe, dict(guidance_scale="2"), "guidance_scale must be a finite number, got '2'"),
        (latent_pipe, dict(generator=0), "generator must be a torch.Generator or a list of them, one per image, "
                                         "got int"),
        (latent_pipe, dict(callback_on_step_end="print"), "callback_on_step_end must be a function, got str"),
        (latent_pipe, dict(callback_on_step_end=lambda *args: 1), "callback_on_step_end must return a dict or None"),
    ]
    for pipe, kwargs, message in cases:
        with pytest.raises(ValueError, match=message if message.startswith("guided_channels") else re.escape(message)):
            pipe([0], **{"num_inference_steps": 2, **kwargs})
    model = latent_pipe.transformer
    amm_cases = [
        (dict(blocks="nearby"), "unknown AMM setting 'nearby'"),
        (dict(blocks=[12]), "AMM block index 12 is out of range"),
        (dict(blocks=[7], scale=float("nan")), "AMM scale must be a finite number, got nan"),
        (dict(blocks=[7], radius=float("nan")), "AMM radius must be a finite number, got nan"),
        (dict(blocks=7), "AMM blocks must be a list of block indices, got 7"),
    ]
    for kwargs, message in amm_cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            apply_amm(model, **kwargs)
    assert latent_pipe.transformer.amm_blocks == ()
    # A refused AMM leaves the model's own AMM as it was.
    latent_pipe.transformer.set_amm([0, 1])
    for kwargs in (dict(blocks=[7], radius=-1.0), dict(blocks=[7], scale="x")):
        with pytest.raises(ValueError, match="AMM"):
            apply_amm(model, **kwargs)
    with pytest.raises(ValueError, match="AMM form must be 'exp' or 'cos'"):
        latent_pipe.transformer.set_amm([7], form="sin")
    assert latent_pipe.transformer.amm_blocks == (0, 1)
    latent_pipe.transformer.set_amm([])
    # A VAE whose latents have other channels than the model's: refused before sampling, not at the decoding.
    pixel = EDTPipeline(tiny_edt(in_channels=1, input_size=16), make_scheduler("ddim"), latent_pipe.vae)
    with pytest.raises(ValueError, match="the VAE encodes 4-channel latents, but this model works on 1 channels"):
        pixel([0], num_inference_steps=1)


@pytest.mark.parametrize("labels, message", [
    (3.0, "class labels must be class indices or names, one or a list, got 3.0"),
    (None, "class labels must be class indices or names, one or a list, got None"),
    (b"1", "class labels must be class indices or names, one or a list, got b'1'"),
    ([3.5], "a class label must be a whole number, got 3.5"),
    ([True], "a class label must be a whole number, got True"),
    ([[1, 2]], "a class label must be a whole number, got [1, 2]"),
    (torch.tensor([1.5]), "a class label must be a whole number, got 1.5"),
])
def test_class_labels_that_are_not_classes_are_refused_not_truncated(latent_pipe, labels, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        latent_pipe(labels, num_inference_steps=1)


def test_integer_class_labels_of_numpy_and_torch_are_classes(latent_pipe):
    for labels in (np.array(3), np.int64(3), torch.tensor(3), torch.tensor([3]), np.array([3])):
        assert latent_pipe.class_ids(labels) == [3], labels


def test_amm_set_on_the_model_changes_images_and_amm_applied_restores_it():
    pipe = EDTPipeline(tiny_edt(in_channels=1), make_scheduler("ddim"))
    pipe.set_progress_bar_config(disable=True)
    model = pipe.transformer
    model.set_amm([8])
    model.train()

    def sample(amm_blocks=None):
        """The final sample before clamping to images (a random model's images are mostly 0 or 1)."""
        steps = []
        with amm_applied(model, amm_blocks) if amm_blocks is not None else contextlib.nullcontext():
            pipe([2], generator=image_generators(0, [0]), num_inference_steps=3, output_type="np",
                 callback_on_step_end=lambda pipe, i, t, tensors: steps.append(tensors["latents"]))
        return steps[-1].numpy()

    off, on = sample(amm_blocks=[]), sample(amm_blocks=[7, 10])
    assert np.abs(on - off).max() > 1e-3
    assert model.amm_blocks == (8,) and model.training  # the model's own setting and mode come back
    np.testing.assert_array_equal(sample(amm_blocks="preset"), on)  # guidance 1, 12-block EDT: blocks 7 and 10
    kept = sample()  # None: the model's own AMM (block 8)
    assert np.abs(kept - on).max() > 1e-3 and np.abs(kept - off).max() > 1e-3


def test_amm_never_changes_a_training_forward():
    model = tiny_edt()
    model.train()
    x, t, y = torch.randn(3, 4, 16, 16), torch.tensor([10, 500, 900]), torch.tensor([1, 2, 10])
    torch.manual_seed(1)  # the label embedder's dropout draws from the global generator
    plain = model(x, t, y)
    model.set_amm([7, 10])
    torch.manual_seed(1)
    torch.testing.assert_close(model(x, t, y), plain, atol=0, rtol=0)
    model.eval()
    assert (model(x, t, y) - plain).abs().max() > 1e-4  # eval mode: AMM (and no label dropout) acts


def test_guidance_equals_forward_with_cfg_at_a_step(latent_pipe):
    """The first step's predicted clean image comes from forward_with_cfg(..., guided_channels=3)."""
    model, scheduler = latent_pipe.transformer, latent_pipe.scheduler
    labels = [4, 6]
    previews = PreviewCallback("pt")
    out = latent_pipe(labels, guidance=Guidance(4.0, channels=3), generator=image_generators(0, [0, 1]),
                      num_inference_steps=2, output_type="pt", callback_on_step_end=previews)
    x = randn_tensor((2, 4, 16, 16), generator=image_generators(0, [0, 1]), dtype=torch.float32)
    t = scheduler.timesteps[0]
    y = torch.tensor(labels + [10, 10])
    with torch.no_grad():
        eps = model.forward_with_cfg(torch.cat([x, x]), t.expand(4), y, 4.0, guided_channels=3)[:2, :4]
        abar = scheduler.alphas_cumprod[t]
        x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        expected = (latent_pipe.vae.decode(x0 / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    assert out.images.shape == (2, 3, 128, 128)
    torch.testing.assert_close(previews.images[0], expected, atol=1e-5, rtol=0)
    all_channels = PreviewCallback("pt")
    latent_pipe(labels, guidance_scale=4.0, generator=image_generators(0, [0, 1]), num_inference_steps=2,
                output_type="pt", callback_on_step_end=all_channels)
    assert (all_channels.images[0] - previews.images[0]).abs().max() > 1e-4



def test_guidance_interval_guides_only_the_steps_inside_it(pixel_pipe):
    """Each step's prediction is guided inside the interval and plain conditional outside it, step by step."""
    labels, steps = [4, 6], 4
    timesteps = make_scheduler("ddim")
    timesteps.set_timesteps(steps)
    ts = [int(t) for t in timesteps.timesteps]
    low, high = ts[2], ts[0]  # the first three steps guided, the last one not
    common = dict(num_inference_steps=steps, output_type="pt")

    def run(interval=None):
        previews = PreviewCallback("pt")
        pixel_pipe(labels, generator=image_generators(0, [0, 1]), guidance=Guidance(4.0, interval), **common,
                   callback_on_step_end=previews)
        return previews.images

    guided, interval = run(), run((low, high))
    for i in range(3):
        torch.testing.assert_close(interval[i], guided[i], atol=0, rtol=0)
    # The last step: the conditional model alone on the same x, so the preview differs from the guided run's.
    x = randn_tensor((2, 1, 16, 16), generator=image_generators(0, [0, 1]), dtype=torch.float32)
    scheduler = make_scheduler("ddim")
    scheduler.set_timesteps(steps)
    model, y = pixel_pipe.transformer, torch.tensor(labels)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            if i < 3:
                eps = model.forward_with_cfg(torch.cat([x, x]), t.expand(4), torch.cat([y, y.new_full((2,), 10)]),
                                             4.0)[:2, :1]
            else:
                eps = model(x, t.expand(2), y)[:, :1]
                abar = scheduler.alphas_cumprod[t]
                expected = (((x - (1 - abar).sqrt() * eps) / abar.sqrt()) / 2 + 0.5).clamp(0, 1)
            x = scheduler.step(eps, t, x).prev_sample
    torch.testing.assert_close(interval[3], expected, atol=1e-5, rtol=0)
    assert (interval[3] - guided[3]).abs().max() > 1e-4
    # No step inside the interval: the same images as no guidance.
    no_step = pixel_pipe(labels, generator=image_generators(0, [0, 1]), guidance=Guidance(4.0, (ts[0] + 1, 999)),
                         num_inference_steps=steps, output_type="pt").images
    plain = pixel_pipe(labels, generator=image_generators(0, [0, 1]), num_inference_steps=steps, output_type="pt")
    torch.testing.assert_close(no_step, plain.images, atol=1e-6, rtol=0)
    for bad in [(-1, 999), (500, 400), (0, 1000), "all", (1, 2, 3)]:
        with pytest.raises(ValueError, match="guidance_interval must be"):
            pixel_pipe(labels, guidance=Guidance(4.0, bad), **common)


def test_previews_and_attention_maps(pixel_pipe):
    previews = PreviewCallback("np")
    with amm_applied(pixel_pipe.transformer, [7, 10]), \
            AttentionCapture(pixel_pipe.transformer, [0, 7, 10], step=2) as capture:
        out = pixel_pipe([1, 2], generator=image_generators(0, [0, 1]), num_inference_steps=4, output_type="np",
                         callback_on_step_end=StepCallbacks([previews, capture]), guidance_scale=2.0)
    assert len(previews.images) == 4
    assert all(p.shape == out.images.shape == (2, 16, 16, 1) for p in previews.images)
    # A DDIM step ending at t = 0 lands on the last predicted clean image.
    np.testing.assert_allclose(previews.images[-1], out.images, atol=1e-5)
    grids = {0: 8, 7: 4, 10: 8}  # the tokens of each block's stage grid
    for block, maps in capture.maps.items():
        n = grids[block] ** 2
        assert maps["attention"].shape == (n, n)
        np.testing.assert_allclose(maps["attention"].sum(-1), np.ones(n), atol=1e-5)  # softmax rows
    assert capture.maps[0]["modulated"] is None
    for block in (7, 10):
        assert capture.maps[block]["modulated"].shape == capture.maps[block]["attention"].shape
        assert np.abs(capture.maps[block]["modulated"] - capture.maps[block]["attention"]).max() > 1e-3


def test_dit_in_the_pipeline_with_its_amm_preset():
    model = randomize(create_model("DiT-T/2", hidden_size=16, num_heads=1, input_size=16))
    pipe = EDTPipeline(model, make_scheduler("dpm"))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(generator=image_generators(0, [0]), num_inference_steps=3, output_type="np")
    off = pipe([5], **kwargs).images
    with amm_applied(model, "preset") as blocks:
        preset = pipe([5], **kwargs).images
    assert blocks == (8, 10)  # DiT-S's released arrangement
    assert off.shape == (1, 16, 16, 1) and np.abs(off - preset).max() > 1e-3


# ----------------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------------

LOAD_AND_SAMPLE = """
import sys
import numpy as np
import edt_lab.pipeline
pipe = edt_lab.pipeline.EDTPipeline.from_pretrained(sys.argv[1])
out = pipe(["three", "five"], generator=edt_lab.pipeline.image_generators(0, [0, 1]), num_inference_steps=3,
           output_type="np")
print(type(pipe.scheduler).__name__, pipe.id2label[3], pipe.vae is not None, pipe.transformer.training)
np.save(sys.argv[2], out.images)
"""


@pytest.mark.slow
def test_save_and_load_in_a_fresh_process(latent_pipe, tmp_path):
    latent_pipe.scheduler = make_scheduler("ddim")
    latent_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["id2label"]["3"] == "three" and index["vae"] == ["diffusers", "AutoencoderKL"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", LOAD_AND_SAMPLE, str(tmp_path / "pipe"), str(tmp_path / "x.npy")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DDIMScheduler", "three", "True", "False"]
    expected = latent_pipe([3, 5], generator=image_generators(0, [0, 1]), num_inference_steps=3,
                           output_type="np").images
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), expected, atol=1e-6)
    latent_pipe.scheduler = make_scheduler("ddpm")


def test_pixel_pipeline_round_trip_without_vae(pixel_pipe, tmp_path):
    pixel_pipe.save_pretrained(tmp_path)
    loaded = EDTPipeline.from_pretrained(tmp_path)
    assert loaded.vae is None and loaded.labels["nine"] == 9 and isinstance(loaded.scheduler, DDIMScheduler)
    with pytest.raises(ValueError, match="no model_index.json"):
        EDTPipeline.from_pretrained(tmp_path / "scheduler")


def test_load_default_says_where_the_model_belongs(monkeypatch, tmp_path):
    monkeypatch.setattr("edt_lab.pipeline.DEFAULT_MODEL_DIR", tmp_path / "missing")
    for load in (load_default, edt_lab.load_default):
        with pytest.raises(ValueError, match="the default model is not in assets/edt_t2_digits"):
            load()


def test_bf16_precision_autocasts_the_transformer_only(pixel_pipe, monkeypatch):
    def run(precision):
        with amm_applied(pixel_pipe.transformer, "preset", guidance_scale=2.0):
            return pixel_pipe([1, 2], guidance_scale=2.0, generator=image_generators(0, range(2)),
                              num_inference_steps=3, output_type="pt", precision=precision).images

    matmul_dtypes = []
    hook = pixel_pipe.transformer.blocks[0].mlp.fc1.register_forward_hook(
        lambda module, args, out: matmul_dtypes.append(out.dtype))
    try:
        monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: False)
        fp32 = run("fp32")
        assert torch.equal(run("auto"), fp32) and set(matmul_dtypes) == {torch.float32}
        with pytest.raises(ValueError, match="precision bf16: this .* lacks native bf16"):
            run("bf16")
        monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: True)  # emulated where the CPU lacks it
        matmul_dtypes.clear()
        bf16 = run("bf16")
    finally:
        hook.remove()
    assert set(matmul_dtypes) == {torch.bfloat16} and bf16.dtype == torch.float32
    assert 0 < (bf16 - fp32).abs().max() < 0.05  # bf16 rounding, not another computation
    assert torch.equal(run("fp32"), fp32)  # the weights were not touched


def test_guidance_is_computed_in_float32_under_autocast(latent_pipe):
    model = latent_pipe.transformer
    half = torch.randn(2, 4, 16, 16)
    x, t, y = torch.cat([half, half]), torch.full((4,), 500), torch.tensor([1, 2, 10, 10])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        guided = model.forward_with_cfg(x, t, y, 4.0)
        cond, uncond = model(x, t, y).float().chunk(2)
    assert guided.dtype == torch.float32
    torch.testing.assert_close(guided[:2, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))


# ----------------------------------------------------------------------------------------------------------
# Guidance, the AMM setter and step callbacks
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=0.5), "guidance_scale must be at least 1 (1 = no guidance), got 0.5"),
    (dict(scale=float("nan")), "guidance_scale must be a finite number, got nan"),
    (dict(scale="2"), "guidance_scale must be a finite number, got '2'"),
    (dict(schedule="cos"), "guidance_schedule must be one of constant, power-cos, got 'cos'"),
    (dict(interval=(500, 400)), "guidance_interval must be None or (low, high) timesteps with 0 <= low <= high"),
    (dict(interval=(-1, 5)), "guidance_interval must be None or (low, high)"),
    (dict(interval=(1.5, 5)), "guidance_interval must be None or (low, high)"),
    (dict(interval="all"), "guidance_interval must be None or (low, high)"),
    (dict(channels=0), "guided_channels must be at least 1 (or None for all), got 0"),
    (dict(channels=2.0), "guided_channels must be a whole number, got 2.0"),
])
def test_guidance_refuses_each_bad_value_where_it_is_made(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Guidance(**kwargs)


def test_guidance_normalises_its_values_and_knows_its_steps():
    guidance = Guidance(np.float32(3), [300, np.int64(999)], "power-cos", torch.tensor(3))
    assert guidance == Guidance(3.0, (300, 999), "power-cos", 3) and isinstance(guidance.interval, tuple)
    assert guidance.active and not Guidance().active
    assert guidance.guided_steps([999, 500, 299, 0]) == [True, True, False, False]
    assert Guidance(1.0, (0, 999)).guided_steps([999, 0]) == [False, False]  # scale 1 guides nothing
    assert Guidance(2.0).guided_steps([999, 0]) == [True, True]
    message = "guidance_interval must be (low, high) with 0 <= low <= high < 500"
    with pytest.raises(ValueError, match=re.escape(message)):
        Guidance(2.0, (0, 500)).check_fits(500, 4)
    Guidance(2.0, (0, 499), channels=4).check_fits(500, 4)
    with pytest.raises(Exception):
        guidance.scale = 1.0  # frozen: checked once, never changed afterwards


def test_guidance_scale_float_or_guidance_object(pixel_pipe):
    common = dict(num_inference_steps=2, output_type="np")
    plain = pixel_pipe([1, 2], guidance_scale=3.0, generator=image_generators(0, [0, 1]), **common).images
    same = pixel_pipe([1, 2], guidance=Guidance(3.0), generator=image_generators(0, [0, 1]), **common).images
    np.testing.assert_array_equal(plain, same)
    unguided = pixel_pipe([1, 2], generator=image_generators(0, [0, 1]), **common).images
    assert np.abs(unguided - plain).max() > 1e-3
    with pytest.raises(ValueError, match="give guidance_scale or guidance"):
        pixel_pipe([1], guidance_scale=3.0, guidance=Guidance(3.0), **common)
    with pytest.raises(ValueError, match="guidance must be an edt_lab.guidance.Guidance, got float"):
        pixel_pipe([1], guidance=3.0, **common)


def test_apply_amm_resolves_presets_by_model_and_guidance():
    model = tiny_edt()
    assert apply_amm(model, "preset") == (7, 10)  # the 12-block EDT below guidance 2
    assert apply_amm(model, "preset", guidance_scale=2.5) == (8,)
    assert apply_amm(model, "edt-s-512") == (10,)
    grid = model.block_info()[10]["grid"]
    released = edt_lab.amm.modulation_matrix(grid, None, 1.3, "cos")  # the 512 preset's form and scale
    torch.testing.assert_close(model.blocks[10].attn.amm, released, atol=0, rtol=0)
    apply_amm(model, [3], scale=0.8)
    scaled = edt_lab.amm.modulation_matrix(model.block_info()[3]["grid"], None, 0.8)  # exp form, k = 0.8
    torch.testing.assert_close(model.blocks[3].attn.amm, scaled, atol=0, rtol=0)
    assert apply_amm(model, []) == () and model.amm_blocks == ()
    model.set_amm([8])
    with pytest.raises(RuntimeError, match="inside"):
        with amm_applied(model, [7, 10]) as blocks:
            assert blocks == (7, 10) and model.amm_blocks == (7, 10)
            raise RuntimeError("inside")
    assert model.amm_blocks == (8,)  # restored even when the body fails


def test_callback_tensor_inputs_and_returned_latents(pixel_pipe):
    seen = {}

    def record(pipe, i, t, tensors):
        seen[i] = {name: tuple(value.shape) for name, value in tensors.items()}

    common = dict(generator=image_generators(0, [0, 1]), num_inference_steps=2, output_type="np")
    names = ["latents", "latent_model_input", "noise_pred", "pred_original_sample"]
    pixel_pipe([1, 2], guidance_scale=2.0, callback_on_step_end=record, callback_on_step_end_tensor_inputs=names,
               **common)
    assert seen == {i: {name: (2, 1, 16, 16) for name in names} for i in (0, 1)}
    seen.clear()
    pixel_pipe([1, 2], callback_on_step_end=record, **common)
    assert seen[0] == {"latents": (2, 1, 16, 16)}  # the default
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs: unknown tensor 'prompt_embeds'"):
        pixel_pipe([1], callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"],
                   num_inference_steps=1)

    def zero(pipe, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])}

    images = pixel_pipe([1, 2], callback_on_step_end=zero, **common).images
    np.testing.assert_array_equal(images, np.full((2, 16, 16, 1), 0.5, np.float32))  # x = 0 -> grey
    latents = []
    StepCallbacks([zero, lambda pipe, i, t, tensors: latents.append(tensors["latents"])])(pixel_pipe, 0, 999, {
        "latents": torch.ones(1)})
    assert latents[0].tolist() == [0.0]  # the next callback receives the latents the one before returned
    (tuple_images,) = pixel_pipe([1, 2], return_dict=False, **{**common, "generator": image_generators(0, [0, 1])})
    plain = pixel_pipe([1, 2], **{**common, "generator": image_generators(0, [0, 1])}).images
    np.testing.assert_array_equal(tuple_images, plain)
    with pytest.raises(ValueError, match="a step callback must be a function, got int"):
        StepCallbacks([zero, 3])


def test_attention_capture_records_its_step_only_inside_its_with(pixel_pipe):
    model = pixel_pipe.transformer
    common = dict(generator=image_generators(0, [0]), num_inference_steps=2, output_type="np")
    armed = []  # after each step: whether block 7 records the next forward

    def watch(pipe, i, t, tensors):
        armed.append(model.blocks[7].attn.capture is not None)

    first = AttentionCapture(model, [7], step=0)
    with first:  # step 0: armed before the first forward
        pixel_pipe([3], callback_on_step_end=StepCallbacks([first, watch]), **common)
    assert first.maps[7]["attention"].shape == (16, 16) and first.maps[7]["modulated"] is None
    assert armed == [False, False]  # recorded the first forward only
    assert all(block.attn.capture is None for block in model.blocks)  # nothing left recording
    later, armed[:] = AttentionCapture(model, [7], step=1), []
    with later:
        pixel_pipe([3], callback_on_step_end=StepCallbacks([later, watch]),
                   **{**common, "generator": image_generators(0, [0])})
    assert armed == [True, False]
    assert np.abs(later.maps[7]["attention"] - first.maps[7]["attention"]).max() > 1e-4  # another step's maps
    with pytest.raises(ValueError, match="AttentionCapture records only inside its with statement"):
        pixel_pipe([3], callback_on_step_end=AttentionCapture(model, [7], step=0), num_inference_steps=1)
    with pytest.raises(ValueError, match="the attention step must lie in 0..1, got 5"):
        with AttentionCapture(model, [7], step=5) as capture:
            pixel_pipe([3], callback_on_step_end=capture, num_inference_steps=2)
    assert all(block.attn.capture is None for block in model.blocks)
    with pytest.raises(ValueError, match="attention block 12 is out of range: expected 0..11"):
        AttentionCapture(model, [12], step=0)
