"""EDTPipeline: schedulers, ADM-faithful respaced DDPM, guidance, AMM per call, previews, attention, save/load."""

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
from edt_lab.models import create_model
from edt_lab.pipeline import SAMPLERS, EDTPipeline, image_generators, load_default, make_scheduler

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
    assert 0 <= out.images.min() and out.images.max() <= 1 and out.previews is None and out.attention is None
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
    try:
        out = pixel_pipe([3, 8], generator=image_generators(0, [0, 1]), num_inference_steps=5, output_type="pt",
                         return_previews=True, precision="fp32")
    finally:
        pixel_pipe.scheduler = kept
    scheduler, model, y = make_scheduler(sampler), pixel_pipe.transformer, torch.tensor([3, 8])
    scheduler.set_timesteps(5)
    generators = image_generators(0, [0, 1])  # drawn from in the pipeline's order: the start, then each step
    x = randn_tensor(out.images.shape, generator=generators) * scheduler.init_noise_sigma
    assert len(out.previews) == 5
    with torch.no_grad():
        for t, preview in zip(scheduler.timesteps, out.previews):
            eps = model(scheduler.scale_model_input(x, t), t.expand(2), y)[:, :1]
            step = scheduler.step(eps, t, x, generator=generators)
            expected = pixel_pipe._to_images(step.pred_original_sample, "pt")
            torch.testing.assert_close(preview, expected, atol=1e-5, rtol=0)
            x = step.prev_sample


def test_bad_calls_raise_value_error(latent_pipe):
    pipe_without_vae = EDTPipeline(latent_pipe.transformer, make_scheduler("ddim"))
    cases = [
        (latent_pipe, dict(num_inference_steps=0), "sampling steps must be at least 1"),
        (latent_pipe, dict(guidance_scale=0.5), "guidance_scale must be at least 1"),
        (latent_pipe, dict(output_type="jpg"), "unknown output_type"),
        (latent_pipe, dict(amm_blocks="nearby"), "unknown AMM setting 'nearby'"),
        (latent_pipe, dict(amm_blocks=[12]), "AMM block index 12 is out of range"),
        (latent_pipe, dict(amm_radius=2.0), "need amm_blocks"),
        (latent_pipe, dict(attention_blocks=[0], attention_step=5), "attention_step must lie in 0..1"),
        (latent_pipe, dict(guided_channels=0), r"guided_channels must lie in \[1, 4\], got 0"),  # also unguided
        (pipe_without_vae, {}, "needs a VAE"),
        # Numbers that would be truncated, skip the guidance unnoticed (NaN) or ruin every image (inf).
        (latent_pipe, dict(num_inference_steps=2.0), "num_inference_steps must be a whole number, got 2.0"),
        (latent_pipe, dict(guidance_scale=float("nan")), "guidance_scale must be a finite number, got nan"),
        (latent_pipe, dict(guidance_scale=float("inf")), "guidance_scale must be a finite number, got inf"),
        (latent_pipe, dict(guidance_scale="2"), "guidance_scale must be a finite number, got '2'"),
        (latent_pipe, dict(amm_blocks=[7], amm_scale=float("nan")), "AMM scale must be a finite number, got nan"),
        (latent_pipe, dict(amm_blocks=[7], amm_radius=float("nan")), "AMM radius must be a finite number, got nan"),
        (latent_pipe, dict(amm_blocks=7), "AMM blocks must be a list of block indices, got 7"),
        (latent_pipe, dict(generator=0), "generator must be a torch.Generator or a list of them, one per image, "
                                         "got int"),
        (latent_pipe, dict(callback_on_step_end="print"), "callback_on_step_end must be a function, got str"),
        (latent_pipe, dict(callback_on_step_end=lambda *args: 1), "callback_on_step_end must return a dict or None"),
    ]
    for pipe, kwargs, message in cases:
        with pytest.raises(ValueError, match=message if message.startswith("guided_channels") else re.escape(message)):
            pipe([0], **{"num_inference_steps": 2, **kwargs})
    assert latent_pipe.transformer.amm_blocks == ()
    # A refused AMM leaves the model's own AMM as it was.
    latent_pipe.transformer.set_amm([0, 1])
    for kwargs in (dict(amm_blocks=[7], amm_radius=-1.0), dict(amm_blocks=[7], amm_scale="x")):
        with pytest.raises(ValueError, match="AMM"):
            latent_pipe([0], num_inference_steps=1, **kwargs)
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


def test_amm_per_call_changes_images_and_is_restored():
    pipe = EDTPipeline(tiny_edt(in_channels=1), make_scheduler("ddim"))
    pipe.set_progress_bar_config(disable=True)
    model = pipe.transformer
    model.set_amm([8])
    model.train()

    def sample(**kwargs):
        """The final sample before clamping to images (a random model's images are mostly 0 or 1)."""
        steps = []
        pipe([2], generator=image_generators(0, [0]), num_inference_steps=3, output_type="np",
             callback_on_step_end=lambda pipe, i, t, tensors: steps.append(tensors["latents"]), **kwargs)
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
    out = latent_pipe(labels, guidance_scale=4.0, guided_channels=3, generator=image_generators(0, [0, 1]),
                      num_inference_steps=2, output_type="pt", return_previews=True)
    x = randn_tensor((2, 4, 16, 16), generator=image_generators(0, [0, 1]), dtype=torch.float32)
    t = scheduler.timesteps[0]
    y = torch.tensor(labels + [10, 10])
    with torch.no_grad():
        eps = model.forward_with_cfg(torch.cat([x, x]), t.expand(4), y, 4.0, guided_channels=3)[:2, :4]
        abar = scheduler.alphas_cumprod[t]
        x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        expected = (latent_pipe.vae.decode(x0 / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(out.previews[0], expected, atol=1e-5, rtol=0)
    all_channels = latent_pipe(labels, guidance_scale=4.0, generator=image_generators(0, [0, 1]),
                               num_inference_steps=2, output_type="pt", return_previews=True)
    assert (all_channels.previews[0] - out.previews[0]).abs().max() > 1e-4



def test_guidance_interval_guides_only_the_steps_inside_it(pixel_pipe):
    """Each step's prediction is guided inside the interval and plain conditional outside it, step by step."""
    labels, steps = [4, 6], 4
    timesteps = make_scheduler("ddim")
    timesteps.set_timesteps(steps)
    ts = [int(t) for t in timesteps.timesteps]
    low, high = ts[2], ts[0]  # the first three steps guided, the last one not
    common = dict(guidance_scale=4.0, num_inference_steps=steps, output_type="pt", return_previews=True)

    def run(**kwargs):
        return pixel_pipe(labels, generator=image_generators(0, [0, 1]), **common, **kwargs).previews

    guided, interval = run(), run(guidance_interval=(low, high))
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
    no_step = pixel_pipe(labels, generator=image_generators(0, [0, 1]), guidance_scale=4.0, num_inference_steps=steps,
                         output_type="pt", guidance_interval=(ts[0] + 1, 999)).images
    plain = pixel_pipe(labels, generator=image_generators(0, [0, 1]), num_inference_steps=steps, output_type="pt")
    torch.testing.assert_close(no_step, plain.images, atol=1e-6, rtol=0)
    for bad in [(-1, 999), (500, 400), (0, 1000), "all", (1, 2, 3)]:
        with pytest.raises(ValueError, match="guidance_interval must be"):
            pixel_pipe(labels, guidance_interval=bad, **common)

def test_previews_and_attention_maps(pixel_pipe):
    out = pixel_pipe([1, 2], generator=image_generators(0, [0, 1]), num_inference_steps=4, output_type="np",
                     amm_blocks=[7, 10], return_previews=True, attention_blocks=[0, 7, 10], guidance_scale=2.0)
    assert len(out.previews) == 4 and all(p.shape == out.images.shape == (2, 16, 16, 1) for p in out.previews)
    # A DDIM step ending at t = 0 lands on the last predicted clean image.
    np.testing.assert_allclose(out.previews[-1], out.images, atol=1e-5)
    grids = {0: 8, 7: 4, 10: 8}  # the tokens of each block's stage grid
    for block, maps in out.attention.items():
        n = grids[block] ** 2
        assert maps["attention"].shape == (n, n)
        np.testing.assert_allclose(maps["attention"].sum(-1), np.ones(n), atol=1e-5)  # softmax rows
    assert out.attention[0]["modulated"] is None
    for block in (7, 10):
        assert out.attention[block]["modulated"].shape == out.attention[block]["attention"].shape
        assert np.abs(out.attention[block]["modulated"] - out.attention[block]["attention"]).max() > 1e-3


def test_dit_in_the_pipeline_with_its_amm_preset():
    model = randomize(create_model("DiT-T/2", hidden_size=16, num_heads=1, input_size=16))
    pipe = EDTPipeline(model, make_scheduler("dpm"))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(generator=image_generators(0, [0]), num_inference_steps=3, output_type="np")
    off, preset = pipe([5], **kwargs).images, pipe([5], amm_blocks="preset", **kwargs).images  # DiT-S: 8, 10
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
        return pixel_pipe([1, 2], guidance_scale=2.0, generator=image_generators(0, range(2)), num_inference_steps=3,
                          output_type="pt", amm_blocks="preset", precision=precision).images

    matmul_dtypes = []
    hook = pixel_pipe.transformer.blocks[0].mlp.fc1.register_forward_hook(
        lambda module, args, out: matmul_dtypes.append(out.dtype))
    try:
        monkeypatch.setattr("edt_lab.precision.native_bf16", lambda device: False)
        fp32 = run("fp32")
        assert torch.equal(run("auto"), fp32) and set(matmul_dtypes) == {torch.float32}
        with pytest.raises(ValueError, match="precision bf16 needs native bf16 hardware"):
            run("bf16")
        monkeypatch.setattr("edt_lab.precision.native_bf16", lambda device: True)  # emulated where the CPU lacks it
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
