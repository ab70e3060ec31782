"""EDTPipeline: class-conditional sampling with EDT, DiT or MDTv2, in the shape of diffusers' DiTPipeline.

Data flow: a model (`edt_lab.checkpoints.load_checkpoint`) + a diffusers scheduler (+ a VAE for latent models)
-> `pipe(class_labels, guidance_scale=...)` -> images in [0, 1]. Samplers are swappable
(`pipe.scheduler = make_scheduler("dpm")`), guidance is a `Guidance` (edt_lab.guidance), the AMM is set on the model
(`edt_lab.amm.apply_amm`), and previews or attention maps come from step callbacks (`edt_lab.callbacks`).
"""

import inspect
import json
from contextlib import contextmanager
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

from .assets import asset_dir
from .checkpoints import load_checkpoint
from .checks import read_json_object, whole_number
from .devices import available_device
from .files import make_weights_readable
from .data import LATENT_SCALE
from .diffusion import make_training_scheduler
from .guidance import Guidance
from .precision import autocast, resolve_precision
from .settings import SAMPLERS
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
    """Images: a list of PIL images, a (B, H, W, C) array or a (B, C, H, W) tensor, in [0, 1]."""

    images: list | np.ndarray | torch.Tensor


class EDTPipeline(DiffusionPipeline):
    """Class-conditional sampling with an EDT, DiT or MDTv2 `transformer`, a diffusers `scheduler`, an optional `vae`.

    `vae` is an AutoencoderKL for latent models (4-channel latents scaled by 0.18215) and None for pixel-space
    models; `id2label` maps class index -> name (comma-separated synonyms allowed, as ImageNet's).
    """

    model_cpu_offload_seq = "transformer->vae"
    _callback_tensor_inputs = ["latents", "latent_model_input", "noise_pred", "pred_original_sample"]
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
    def _eval_mode(self):
        """The transformer in eval mode (the AMM acts in eval mode only); its training flag comes back afterwards."""
        was_training = self.transformer.training
        self.transformer.eval()
        try:
            yield
        finally:
            self.transformer.train(was_training)

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

    def to_images(self, latents, output_type: str = "np"):
        """Model-space samples (B, C, h, w) -> images in [0, 1] as PIL list, (B, H, W, C) array or (B, C, H, W);
        the VAE decodes in its own dtype whatever the transformer's precision."""
        if self.vae is not None:
            with torch.autocast(latents.device.type, enabled=False):
                latents = self.vae.decode(latents.to(self.vae.dtype) / LATENT_SCALE).sample
        images = (latents.float() / 2 + 0.5).clamp(0, 1).cpu()  # [-1, 1] -> [0, 1]
        if output_type == "pt":
            return images
        images = images.permute(0, 2, 3, 1).numpy()
        return self.numpy_to_pil(images) if output_type == "pil" else images

    def _guidance(self, guidance_scale, guidance) -> Guidance:
        """The call's Guidance: `guidance`, or one of `guidance_scale` alone (diffusers' float), checked to fit."""
        if guidance is not None and guidance_scale is not None:
            raise ValueError("give guidance_scale or guidance (a Guidance with its scale), not both")
        if guidance is None:
            guidance = Guidance(1.0 if guidance_scale is None else guidance_scale)
        elif not isinstance(guidance, Guidance):
            raise ValueError(f"guidance must be an edt_lab.guidance.Guidance, got {type(guidance).__name__}")
        guidance.check_fits(self.scheduler.config.num_train_timesteps, self.transformer.config.in_channels)
        return guidance

    def _check_call(self, num_inference_steps, output_type, generator, batch_size, callback, tensor_inputs):
        config = self.transformer.config
        most = self.scheduler.config.num_train_timesteps
        if not 1 <= whole_number(num_inference_steps, "num_inference_steps") <= most:
            raise ValueError(f"num_inference_steps must lie in 1..{most}, got {num_inference_steps}")
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
        if callback is not None and not callable(callback):
            raise ValueError(f"callback_on_step_end must be a function, got {type(callback).__name__}")
        unknown = [name for name in tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: unknown tensor {unknown[0]!r}, expected some of "
                             f"{', '.join(self._callback_tensor_inputs)}")

    def _predict(self, x_in, t, y, guidance: Guidance | None) -> torch.Tensor:
        """The model's prediction (B, C', h, w) in float32 at x_in (B, C, h, w), guided when `guidance` is given;
        y holds the labels (B,), followed by as many null labels when guided."""
        batch_size = len(x_in)
        t_batch = t.reshape(1).to(x_in.device).expand(len(y) if guidance else batch_size)
        if guidance:  # (2B, ...) in, the guided prediction in both halves out
            out = self.transformer.forward_with_cfg(torch.cat([x_in, x_in]), t_batch, y, guidance.scale,
                                                    guided_channels=guidance.channels,
                                                    guidance_schedule=guidance.schedule)[:batch_size]
        else:
            out = self.transformer(x_in, t_batch, y[:batch_size])
        return out.float()  # the sampler works in float32 at any precision

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        guidance_scale: float | None = None,
        guidance: Guidance | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int = 250,
        output_type: str = "pil",
        precision: str = "fp32",
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        return_dict: bool = True,
    ) -> EDTPipelineOutput | tuple:
        """Generate one image per class label, with the AMM as set on the model (`edt_lab.amm.apply_amm`).

        class_labels: class indices or names (see `labels`). guidance_scale: classifier-free guidance, 1 = none;
            or guidance: a `Guidance` (scale, guided timesteps, schedule, guided channels), not both.
        generator: a torch.Generator, or one per image (see `image_generators`) so each image is reproducible
            whatever the batch; noise is drawn where the generator lives (CPU) and then moved.
        num_inference_steps: scheduler steps (the paper evaluates DDPM with 250).
        output_type: "pil" (list of images), "np" ((B, H, W, C) float in [0, 1]) or "pt" ((B, C, H, W) tensor).
        precision: "fp32", "bf16" (the transformer under bf16 autocast; sampler and VAE stay float32) or "auto"
            (bf16 where the hardware computes it natively); see `edt_lab.precision`.
        callback_on_step_end: f(pipe, step_index, timestep, tensors) -> dict or None after each step; a returned
            "latents" replaces the sample. Previews and attention maps: `edt_lab.callbacks`.
        callback_on_step_end_tensor_inputs: the tensors passed, some of "latents", "latent_model_input",
            "noise_pred", "pred_original_sample" (default: the callback's `tensor_inputs`, else "latents").
        return_dict: an EDTPipelineOutput, else the tuple (images,).
        """
        labels = self.class_ids(class_labels)
        batch_size = len(labels)
        guidance = self._guidance(guidance_scale, guidance)
        tensor_inputs = list(callback_on_step_end_tensor_inputs or getattr(callback_on_step_end, "tensor_inputs",
                                                                           ["latents"]))
        self._check_call(num_inference_steps, output_type, generator, batch_size, callback_on_step_end, tensor_inputs)
        model, device = self.transformer, self._execution_device
        dtype = resolve_precision(precision, device)
        channels, size = model.config.in_channels, model.config.input_size

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        # Which steps are guided, decided once from the timesteps (no per-step device sync in the loop).
        guided_steps = guidance.guided_steps(timesteps.tolist())
        y = torch.tensor(labels, device=device)
        if guidance.active:
            y = torch.cat([y, torch.full_like(y, model.config.num_classes)])  # second half: the null label
        x = randn_tensor((batch_size, channels, size, size), generator=generator, device=device, dtype=model.dtype)
        x = x * self.scheduler.init_noise_sigma
        # A stochastic sampler draws its step noise from the generator; a deterministic one may not take it (UniPC).
        takes_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        step_noise = {"generator": generator} if takes_generator else {}

        # One autocast region for the whole loop, so each weight is cast to bf16 once per call rather than per step
        # (autocast caches the casts of weights that require grad, outside torch.inference_mode).
        with self._eval_mode(), autocast(device, dtype):
            for i, (t, guide_now) in enumerate(zip(self.progress_bar(timesteps), guided_steps)):
                latent_model_input = self.scheduler.scale_model_input(x, t)
                out = self._predict(latent_model_input, t, y, guidance if guide_now else None)
                noise_pred = out[:, :channels]
                x0 = None
                if "pred_original_sample" in tensor_inputs:
                    abar = self._alpha_bar(t)
                    x0 = (latent_model_input - (1 - abar).sqrt() * noise_pred) / abar.sqrt()
                step_output = out if self._scheduler_takes_variance() else noise_pred
                x = self.scheduler.step(step_output, t, x, **step_noise).prev_sample
                if callback_on_step_end is not None:
                    tensors = {"latents": x, "latent_model_input": latent_model_input, "noise_pred": noise_pred,
                               "pred_original_sample": x0}
                    x = self._run_callback(callback_on_step_end, i, t, {n: tensors[n] for n in tensor_inputs}, x)

        images = self.to_images(x, output_type)
        self.maybe_free_model_hooks()
        return EDTPipelineOutput(images=images) if return_dict else (images,)

    def _run_callback(self, callback, i, t, tensors, latents) -> torch.Tensor:
        """Call `callback` after step i; the latents it returns (or `latents`)."""
        returned = callback(self, i, t, tensors)
        if returned is not None and not isinstance(returned, dict):
            raise ValueError(f"callback_on_step_end must return a dict or None, got {type(returned).__name__}")
        return (returned or {}).get("latents", latents)


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
