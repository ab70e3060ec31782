"""EDTPipeline: class-conditional sampling with EDT, DiT or MDTv2, guidance, AMM per call, previews and attention maps.

Data flow: a model (`edt_lab.checkpoints.load_checkpoint`) + a diffusers scheduler (+ a VAE for latent models)
-> `pipe(class_labels, ...)` -> images in [0, 1]. Samplers are swappable: `pipe.scheduler = make_scheduler("dpm")`.
"""

import inspect
import json
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DEISMultistepScheduler, DiffusionPipeline,
                       DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .amm import AMM_PRESETS, preset_for
from .assets import asset_dir
from .checkpoints import load_checkpoint
from .checks import available_device, finite_number, read_json_object, whole_number
from .cli import make_weights_readable
from .data import LATENT_SCALE
from .diffusion import make_training_scheduler
from .models import capture_attention
from .models.base import CFG_SCHEDULES
from .precision import autocast, resolve_precision

SAMPLERS = ("ddpm", "ddim", "dpm", "dpm-karras", "dpm3-karras", "dpm-sde-karras", "unipc-karras", "deis-karras",
            "euler-karras", "euler-ancestral")
OUTPUT_TYPES = ("pil", "np", "pt")
DEFAULT_MODEL_DIR = asset_dir("edt_t2_digits")
# Written into every saved pipeline folder: diffusers' generic loader imports the pipeline class and the
# transformer's class from modules in the folder, and these only re-export edt_lab's (which must be installed).
LOADER_MODULES = {
    "pipeline.py": (
        '"""Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)."""\n\n'
        "from edt_lab.pipeline import EDTPipeline  # noqa: F401\n"),
    "transformer/edt_lab_models.py": (
        '"""The transformer classes a pipeline folder may hold, for diffusers\' loader."""\n\n'
        "from edt_lab.models import DiT, EDT, MDTv2  # noqa: F401\n"),
}


def make_scheduler(name: str, num_train_timesteps: int = 1000) -> SchedulerMixin:
    """A sampler on the released schedule: "ddpm" (learned variance), "ddim" (eta 0), "dpm" (DPM-Solver++, order 2),
    "dpm-karras" (the same solver on Karras et al.'s noise levels, spaced evenly in sigma^(1/7): smaller steps at
    low noise, where the fine detail is drawn), or on those levels "dpm3-karras" (DPM-Solver++ of order 3),
    "dpm-sde-karras" (DPM-Solver++ 2M SDE: each step adds fresh noise, drawn from the pipeline's generators),
    "unipc-karras" (UniPC, order 2, Zhao et al. 2023), "deis-karras" (DEIS, order 2, Zhang and Chen 2023) or
    "euler-karras" (Karras et al.'s Euler steps); or "euler-ancestral" (Euler with fresh noise at each step, on evenly
    spaced timesteps). The Euler samplers work on x0 + sigma * eps, between the training timesteps."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    if not 2 <= whole_number(num_train_timesteps, "num_train_timesteps") <= 100_000:
        raise ValueError(f"num_train_timesteps must lie in 2..100000 (the released 1000), got {num_train_timesteps}")
    training = make_training_scheduler(num_train_timesteps)
    if name == "ddpm":
        # ADM's respacing ("250" of 1000) keeps round(linspace(0, 999, S)), so the chain ends at t = 999 like
        # the released evaluation; diffusers' default "leading" spacing would start at 996.
        return DDPMScheduler.from_config(training.config, timestep_spacing="linspace")
    schedule = {key: training.config[key] for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    if name == "ddim":
        return DDIMScheduler(**schedule, clip_sample=False, prediction_type="epsilon")
    karras = name.endswith("-karras")
    if name == "unipc-karras":
        return UniPCMultistepScheduler(**schedule, solver_order=2, prediction_type="epsilon", use_karras_sigmas=karras)
    if name == "deis-karras":
        return DEISMultistepScheduler(**schedule, solver_order=2, prediction_type="epsilon", use_karras_sigmas=karras)
    if name == "euler-karras":
        return EulerDiscreteScheduler(**schedule, prediction_type="epsilon", use_karras_sigmas=karras)
    if name == "euler-ancestral":
        return EulerAncestralDiscreteScheduler(**schedule, prediction_type="epsilon")
    # No variance_type here: DPM-Solver would then keep only the first 3 channels; the pipeline passes eps alone.
    order = 3 if name == "dpm3-karras" else 2
    algorithm = "sde-dpmsolver++" if name == "dpm-sde-karras" else "dpmsolver++"
    return DPMSolverMultistepScheduler(**schedule, algorithm_type=algorithm, solver_order=order,
                                       prediction_type="epsilon", use_karras_sigmas=karras)


def image_generators(seed: int, indices) -> list[torch.Generator]:
    """One CPU generator per image index, seeded from (seed, index): an image never depends on its batch."""
    if whole_number(seed, "seed") < 0:
        raise ValueError(f"seed must not be negative, got {seed}")
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, int(i)]).generate_state(1)[0]))
            for i in indices]


@dataclass
class EDTPipelineOutput(BaseOutput):
    """Images (list of PIL, (B, H, W, C) array or (B, C, H, W) tensor in [0, 1]) and, when asked, previews and
    attention maps: previews[s] holds the predicted clean images after step s; attention[block] holds
    "attention" and "modulated" (N, N) arrays (the latter None for a block without AMM)."""

    images: list | np.ndarray | torch.Tensor
    previews: list | None = None
    attention: dict | None = None


class EDTPipeline(DiffusionPipeline):
    """Class-conditional sampling with an EDT, DiT or MDTv2 `transformer`, a diffusers `scheduler`, an optional `vae`.

    `vae` is an AutoencoderKL for latent models (4-channel latents scaled by 0.18215) and None for pixel-space
    models; `id2label` maps class index -> name (comma-separated synonyms allowed, as ImageNet's).
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer, scheduler, vae: AutoencoderKL | None = None, id2label: dict | None = None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        id2label = {int(k): str(v) for k, v in (id2label or {}).items()}  # JSON stores the keys as strings
        self.register_to_config(id2label=id2label)
        self.id2label = id2label
        self.labels = dict(sorted((name.strip(), i) for i, names in id2label.items() for name in names.split(",")))

    @classmethod
    def from_pretrained(cls, folder, device="cpu") -> "EDTPipeline":
        """Load a folder written by `save_pretrained` or diffusers' `DiTPipeline.save_pretrained`, offline; the
        transformer goes through `load_checkpoint`. Reading the few parts directly needs no trust_remote_code."""
        device = available_device(device)
        folder = Path(folder)
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise ValueError(f"{folder}: no model_index.json (expected an EDTPipeline.save_pretrained folder)")
        index = read_json_object(index_file)
        scheduler_class = getattr(diffusers, str(index.get("scheduler", [None, None])[1]), None)
        if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
            raise ValueError(f"{index_file}: scheduler {index.get('scheduler')} is not a diffusers scheduler")
        scheduler = scheduler_class.from_pretrained(folder / "scheduler")
        vae = load_vae(folder / "vae") if (index.get("vae") or [None])[0] else None
        return cls(load_checkpoint(folder), scheduler, vae, index.get("id2label")).to(device)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' save_pretrained, plus what lets diffusers' own loader read the folder (offline, with edt-lab
        installed): `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.

        model_index.json names the folder's `pipeline.py` for the pipeline class and `transformer/edt_lab_models.py`
        for the transformer's; diffusers 0.42 imports modules that a folder names only with trust_remote_code.
        The weights get the mode of any new file, not safetensors' 0600.
        """
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        for name, text in LOADER_MODULES.items():
            (folder / name).write_text(text)
        index_file = folder / "model_index.json"
        index = read_json_object(index_file)
        index["_class_name"] = ["pipeline", "EDTPipeline"]
        index["transformer"] = ["edt_lab_models", type(self.transformer).__name__]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        make_weights_readable(folder)

    # ------------------------------------------------------------------------------------------------------
    # Labels
    # ------------------------------------------------------------------------------------------------------

    def get_label_ids(self, names) -> list[int]:
        """Class indices of class names (a name or a list of names)."""
        names = [names] if isinstance(names, str) else list(names)
        for name in names:
            if name in self.labels:
                continue
            if not self.labels:
                raise ValueError(f"unknown class name {name!r}: this model has no class names, pass class indices "
                                 f"0..{self.transformer.config.num_classes - 1}")
            known = ", ".join(repr(n) for n in list(self.labels)[:10])
            more = f", ... ({len(self.labels)} names in all)" if len(self.labels) > 10 else ""
            raise ValueError(f"unknown class name {name!r}: expected one of {known}{more}, or a class index "
                             f"0..{self.transformer.config.num_classes - 1}")
        return [self.labels[name] for name in names]

    def class_ids(self, class_labels) -> list[int]:
        """Class indices (checked against the model's range) of ints, names or a mix; one label or a list."""
        single = isinstance(class_labels, (int, str, np.integer))
        if single or (isinstance(class_labels, (torch.Tensor, np.ndarray)) and class_labels.ndim == 0):
            class_labels = [class_labels]
        if isinstance(class_labels, (str, bytes)) or not hasattr(class_labels, "__iter__"):
            raise ValueError(f"class labels must be class indices or names, one or a list, got {class_labels!r}")
        ids = [self.get_label_ids(c)[0] if isinstance(c, str) else whole_number(c, "a class label")
               for c in class_labels]
        num_classes = self.transformer.config.num_classes
        if not ids:
            raise ValueError("no class labels given: expected at least one class")
        for i in ids:
            if not 0 <= i < num_classes:
                raise ValueError(f"class {i} is out of range: this model has classes 0..{num_classes - 1}")
        return ids

    # ------------------------------------------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------------------------------------------

    @contextmanager
    def _sampling_state(self, amm_blocks, amm_radius, amm_scale, guidance_scale):
        """Eval mode and this call's AMM; the previous AMM and training flag are restored afterwards."""
        model = self.transformer
        previous_amm = [block.attn.amm for block in model.blocks]
        was_training = model.training
        if amm_blocks is not None:
            form, scale = "exp", amm_scale
            if isinstance(amm_blocks, str):
                name = preset_for(model, guidance_scale) if amm_blocks == "preset" else amm_blocks
                if name not in AMM_PRESETS:
                    raise ValueError(f"unknown AMM setting {amm_blocks!r}: expected 'preset', a preset name "
                                     f"({', '.join(AMM_PRESETS)}) or a list of block indices")
                preset = AMM_PRESETS[name]
                amm_blocks, form, scale = preset.blocks, preset.form, preset.scale if scale is None else scale
            model.set_amm(amm_blocks, amm_radius, 0.5 if scale is None else scale, form)
        elif amm_radius is not None or amm_scale is not None:
            raise ValueError("amm_radius and amm_scale need amm_blocks (a list of blocks, 'preset' or a preset name)")
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)
            for block, amm in zip(model.blocks, previous_amm):
                block.attn.amm = amm

    def _scheduler_takes_variance(self) -> bool:
        """True when the scheduler reads the learned variance channels (DDPM with learned variance)."""
        return isinstance(self.scheduler, DDPMScheduler) and self.scheduler.config.variance_type in (
            "learned", "learned_range")

    def _alpha_bar(self, t) -> torch.Tensor:
        """The signal share ᾱ of the model's input at the current step (at timestep t): the training schedule's at
        t (for the Karras samplers, whose t is a rounded noise level, within 1 % of theirs), or for a sampler working
        on x0 + sigma * eps (Euler; its timesteps fall between the integers) 1 / (1 + sigma²) of the step's sigma, by
        which it scales the model's input."""
        # Told apart by the starting noise: the multistep solvers set step_index only inside step(), too late here.
        if float(self.scheduler.init_noise_sigma) == 1.0:
            return self.scheduler.alphas_cumprod.to(t.device)[t]
        sigma = self.scheduler.sigmas[self.scheduler.step_index].to(t.device)
        return 1 / (1 + sigma**2)

    def _to_images(self, x, output_type: str):
        """Model-space samples (B, C, h, w) -> images in [0, 1] as PIL list, (B, H, W, C) array or (B, C, H, W);
        the VAE decodes in its own dtype whatever the transformer's precision."""
        if self.vae is not None:
            with torch.autocast(x.device.type, enabled=False):
                x = self.vae.decode(x.to(self.vae.dtype) / LATENT_SCALE).sample
        images = (x.float() / 2 + 0.5).clamp(0, 1).cpu()  # [-1, 1] -> [0, 1]
        if output_type == "pt":
            return images
        images = images.permute(0, 2, 3, 1).numpy()
        return self.numpy_to_pil(images) if output_type == "pil" else images

    def _check_call(self, num_inference_steps, guidance_scale, output_type, generator, batch_size, cfg_schedule,
                    guidance_interval, guided_channels, callback_on_step_end):
        config = self.transformer.config
        whole_number(num_inference_steps, "num_inference_steps")
        finite_number(guidance_scale, "guidance_scale")  # NaN would skip the guidance unnoticed, inf ruin every image
        if num_inference_steps < 1:
            raise ValueError(f"the number of sampling steps must be at least 1, got {num_inference_steps}")
        if num_inference_steps > self.scheduler.config.num_train_timesteps:
            raise ValueError(f"the number of sampling steps must be at most "
                             f"{self.scheduler.config.num_train_timesteps}, got {num_inference_steps}")
        if guidance_scale < 1:
            raise ValueError(f"guidance_scale must be at least 1 (1 = no guidance), got {guidance_scale}")
        if cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"unknown cfg_schedule {cfg_schedule!r}: expected one of {', '.join(CFG_SCHEDULES)}")
        if guidance_interval is not None:
            try:
                low, high = (int(t) for t in guidance_interval)
            except (TypeError, ValueError):
                low, high = -1, -1  # not a pair of timesteps: the message below says what is expected
            if not 0 <= low <= high < self.scheduler.config.num_train_timesteps:
                raise ValueError(f"guidance_interval must be (low, high) with 0 <= low <= high < "
                                 f"{self.scheduler.config.num_train_timesteps}, got {guidance_interval!r}")
        channels = config.in_channels
        if guided_channels is not None and not 1 <= whole_number(guided_channels, "guided_channels") <= channels:
            raise ValueError(f"guided_channels must lie in [1, {channels}], got {guided_channels}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}: expected one of {', '.join(OUTPUT_TYPES)}")
        if self.vae is None and config.in_channels == 4:
            raise ValueError("this model works on 4-channel latents and needs a VAE (an AutoencoderKL folder, "
                             "e.g. sd-vae-ft-ema)")
        if self._scheduler_takes_variance() and not config.learn_sigma:
            raise ValueError("the scheduler expects a learned variance but the model predicts only the noise; "
                             "use a fixed-variance scheduler")
        if self.vae is not None and self.vae.config.latent_channels != config.in_channels:
            raise ValueError(f"the VAE encodes {self.vae.config.latent_channels}-channel latents, but this model works "
                             f"on {config.in_channels} channels")
        generators = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"generator must be a torch.Generator or a list of them, one per image, got "
                             f"{type(generator).__name__}")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"expected one generator per image ({batch_size}), got {len(generator)}")
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(f"callback_on_step_end must be a function, got {type(callback_on_step_end).__name__}")

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 250,
        output_type: str = "pil",
        amm_blocks=None,
        amm_radius: float | None = None,
        amm_scale: float | None = None,
        guided_channels: int | None = None,
        cfg_schedule: str = "constant",
        guidance_interval: tuple[int, int] | None = None,
        callback_on_step_end=None,
        return_previews: bool = False,
        attention_blocks=None,
        attention_step: int | None = None,
        precision: str = "fp32",
    ) -> EDTPipelineOutput:
        """Generate one image per class label.

        class_labels: class indices or names (see `labels`). guidance_scale: classifier-free guidance, 1 = none.
        generator: a torch.Generator, or one per image (see `image_generators`) so each image is reproducible
            whatever the batch; noise is drawn where the generator lives (CPU) and then moved.
        num_inference_steps: scheduler steps (the paper evaluates DDPM with 250).
        output_type: "pil" (list of images), "np" ((B, H, W, C) float in [0, 1]) or "pt" ((B, C, H, W) tensor).
        amm_blocks: None keeps the model's AMM as set; a list of block indices ([] = off), "preset" (the released
            arrangement for this model and guidance, `edt_lab.amm.preset_for`) or a preset name sets it for this
            call only. amm_radius: None = released radius per grid. amm_scale: k, None = 0.5 (or the preset's).
        guided_channels: channels guided by CFG, None = all noise channels, 3 = as the released scripts.
        cfg_schedule: "constant" (guidance_scale at every step) or "power-cos" (MDTv2's released schedule: the scale
            rises from about 1 at the noisiest step to guidance_scale at t = 0; see `edt_lab.models.base`).
        guidance_interval: (low, high) training timesteps, both included: guide only the steps with t in it and
            run the conditional model alone at the others (None = guide every step). Guidance at the low-noise
            steps adds little to which class is drawn but thickens and sharpens strokes, as Kynkaanniemi et al.
            (2024, "Applying guidance in a limited interval improves sample and distribution quality") found on
            ImageNet; e.g. (300, 999) leaves the last 30 % of the noise levels unguided.
        callback_on_step_end: f(pipe, step_index, timestep, {"latents": x}) -> dict; a returned "latents" replaces x.
        return_previews: also return the predicted clean images x0 after every step (decoded for latent models).
        attention_blocks: blocks whose attention (head mean, first image, conditional half) is returned, plain
            softmax and AMM-modulated, recorded at step index attention_step (default: the middle step).
        precision: "fp32", "bf16" (the transformer's forwards under bf16 autocast: its weights, the sampler and the
            VAE stay float32; needs hardware with native bf16, see `edt_lab.precision`) or "auto" (bf16 where the
            hardware has it, else fp32).
        """
        labels = self.class_ids(class_labels)
        batch_size = len(labels)
        self._check_call(num_inference_steps, guidance_scale, output_type, generator, batch_size, cfg_schedule,
                         guidance_interval, guided_channels, callback_on_step_end)
        model, device = self.transformer, self._execution_device
        dtype = resolve_precision(precision, device)
        channels, size = model.config.in_channels, model.config.input_size

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        attention_blocks = list(attention_blocks or [])
        attention_step = len(timesteps) // 2 if attention_step is None else attention_step
        if attention_blocks and not 0 <= attention_step < len(timesteps):
            raise ValueError(f"attention_step must lie in 0..{len(timesteps) - 1}, got {attention_step}")
        bad_blocks = [b for b in attention_blocks if not 0 <= b < model.num_blocks]
        if bad_blocks:
            raise ValueError(f"attention block {bad_blocks[0]} is out of range: expected 0..{model.num_blocks - 1}")

        y = torch.tensor(labels, device=device)
        guided = guidance_scale > 1
        # Which steps are guided, decided once from the timesteps (no per-step device sync in the loop).
        low, high = (0, math.inf) if guidance_interval is None else map(int, guidance_interval)
        guided_steps = [guided and low <= t <= high for t in timesteps.tolist()]
        if guided:
            y = torch.cat([y, torch.full_like(y, model.config.num_classes)])  # second half: the null label
        x = randn_tensor((batch_size, channels, size, size), generator=generator, device=device, dtype=model.dtype)
        x = x * self.scheduler.init_noise_sigma
        # A stochastic sampler draws its step noise from the generator; a deterministic one may not take it (UniPC).
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_noise = {"generator": generator} if takes_generator else {}
        previews, attention = [], None

        # One autocast region for the whole loop, so each weight is cast to bf16 once per call rather than per step
        # (autocast caches the casts of weights that require grad, outside torch.inference_mode).
        with self._sampling_state(amm_blocks, amm_radius, amm_scale, guidance_scale), autocast(device, dtype):
            for i, (t, guide_now) in enumerate(zip(self.progress_bar(timesteps), guided_steps)):
                capture = i == attention_step and attention_blocks
                with capture_attention(model, attention_blocks) if capture else nullcontext() as captured:
                    x_in = self.scheduler.scale_model_input(x, t)
                    t_batch = t.reshape(1).to(device).expand(len(y) if guide_now else batch_size)
                    if guide_now:  # (2B, ...) in, the guided prediction in both halves out
                        out = model.forward_with_cfg(torch.cat([x_in, x_in]), t_batch, y, guidance_scale,
                                                     guided_channels, cfg_schedule)[:batch_size]
                    else:
                        out = model(x_in, t_batch, y[:batch_size])
                out = out.float()  # the sampler works in float32 at any precision
                if capture:
                    attention = {block: {name: None if maps is None else maps[0].float().mean(0).cpu().numpy()
                                         for name, maps in captured[block].items()} for block in attention_blocks}
                eps = out[:, :channels]
                if return_previews:
                    abar = self._alpha_bar(t)
                    x0 = (x_in - (1 - abar).sqrt() * eps) / abar.sqrt()
                    previews.append(self._to_images(x0, output_type))
                step_output = out if self._scheduler_takes_variance() else eps
                x = self.scheduler.step(step_output, t, x, **step_noise).prev_sample
                if callback_on_step_end is not None:
                    returned = callback_on_step_end(self, i, t, {"latents": x})
                    if returned is not None and not isinstance(returned, dict):
                        raise ValueError(f"callback_on_step_end must return a dict or None, got "
                                         f"{type(returned).__name__}")
                    x = (returned or {}).get("latents", x)

        images = self._to_images(x, output_type)
        self.maybe_free_model_hooks()
        return EDTPipelineOutput(images=images, previews=previews if return_previews else None, attention=attention)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------

def load_vae(folder) -> AutoencoderKL:
    """An AutoencoderKL from a local `save_pretrained` folder (e.g. sd-vae-ft-ema), offline."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: no config.json (expected an AutoencoderKL folder such as sd-vae-ft-ema)")
    try:
        return AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"{folder}: unreadable VAE folder ({str(error).strip().splitlines()[0]})") from None


def load_default(device="cpu") -> EDTPipeline:
    """The shipped EDT-T/2 digits pipeline (assets/edt_t2_digits; package data in a wheel)."""
    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        raise ValueError("the default model is not in assets/edt_t2_digits; train and export the digits model "
                         "there first, or load another model with --ckpt / EDTPipeline.from_pretrained")
    return EDTPipeline.from_pretrained(DEFAULT_MODEL_DIR, device=device)
