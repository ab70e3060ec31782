"""The trainer (`edt-lab train`): EDT's masking training (spec sections 5-6) with accelerate, and exact resume.

A run is a folder:
    config.json                        the full arguments
    log.jsonl                          one JSON object per logged step
    checkpoints/step_XXXXXXX.pt        the newest few checkpoints (model, EMA, optimiser, every RNG state, ...)
    samples/step_XXXXXXX.png           EMA previews (one sample per class, DDIM-25)

Every random number comes from a checkpointed torch generator (or the checkpointed global RNG, which the label
dropout uses), and the data order is a per-epoch permutation seeded by (seed, epoch), so a killed run resumed
from its last checkpoint repeats the losses of an uninterrupted run.
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from pytorch_optimizer import Adan
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from .checkpoints import load_checkpoint, model_config, safe_torch_load
from .cli import make_parent_folder
from .data import make_dataset
from .diffusion import TIMESTEP_SAMPLERS, make_timestep_sampler, make_training_scheduler, q_sample, training_losses
from .masking import MASKING_STRATEGIES, default_masking, draw_masks, with_unmasked_first_half
from .models import MODEL_NAMES, TokenMasks, create_model
from .pipeline import EDTPipeline, image_generators, load_vae, make_scheduler
from .precision import NATIVE_BF16_HARDWARE, enable_tf32, native_bf16

CHECKPOINT_KEYS = ("model", "ema", "opt", "lr_scheduler", "step", "data", "rng", "timestep_sampler", "log_sums", "args",
                   "config")
RNG_STREAMS = ("noise", "timesteps", "masks")  # one generator each, per process
RUN_ENTRIES = ("config.json", "log.jsonl", "checkpoints", "samples")  # all that a run writes in its folder
PREVIEW_STEPS = 25
DEFAULT_LR = 1e-3
RELEASED_LR = {"EDT-XL/2": 5e-4}  # the released launch script starts EDT-XL at a lower rate
NO_MASKING_LR_UPDATE_EVERY = 5000  # the released no-masking script moves the rate in steps of 5,000


#################################################################################
#                                  Command line                                 #
#################################################################################

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="EDT-T/2", help=f"one of {', '.join(MODEL_NAMES)} (default EDT-T/2)")
    parser.add_argument("--data", default="mnist", help="'mnist' (4,500 of the bundled digits; 500 are held out "
                        "for evaluation), 'images:DIR' (one sub-folder per class, pixel-space models) or "
                        "'features:DIR' (latents from extract-features)")
    parser.add_argument("--results-dir", required=True, help="the run folder: a new or empty one (created), or an "
                        "earlier run's to continue with --resume")
    parser.add_argument("--max-steps", type=int, required=True, help="train until this many optimiser steps")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per optimiser step over all processes")
    parser.add_argument("--ckpt-every", type=int, default=1000, help="checkpoint every K steps (and at the end)")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="how many newest checkpoints to keep")
    parser.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint")
    parser.add_argument("--init-weights", default=None,
                        help="start a new run from these weights (any file or folder `load_checkpoint` reads, of the "
                        "same model) instead of a fresh initialisation, which leaves the recipe; the EMA starts from "
                        "them too")
    parser.add_argument("--masking", choices=MASKING_STRATEGIES, default=None,
                        help="masked pass: edt (default for EDT), mdt (token removal, default for MDTv2), input-zero "
                        "(MDT's counts zeroed at the input, EDT or DiT) or none (default for DiT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=("adan", "adamw"), default="adan", help="no weight decay either way")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"initial learning rate (default: as released, {RELEASED_LR['EDT-XL/2']:g} for EDT-XL/2, "
                        f"{DEFAULT_LR:g} otherwise)")
    parser.add_argument("--lr-final", type=float, default=5e-5, help="learning rate after the linear decay")
    parser.add_argument("--lr-decay-steps", type=int, default=400_000, help="steps of the linear decay, then flat")
    parser.add_argument("--lr-update-every", type=int, default=None,
                        help="set the decayed rate only every K steps (default: as released, 1 with a masked pass, "
                        f"{NO_MASKING_LR_UPDATE_EVERY} with --masking none, the schedule of the no-masking script)")
    parser.add_argument("--ema-decay", type=float, default=0.9999)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--timestep-sampler", choices=sorted(TIMESTEP_SAMPLERS), default="loss-second-moment",
                        help="loss-second-moment (as released: t drawn by its recent losses) or uniform (leaves the "
                        "recipe)")
    parser.add_argument("--log-every", type=int, default=100, help="write a log.jsonl line every N steps")
    parser.add_argument("--sample-every", type=int, default=0, help="write an EMA preview every N steps (0: never)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                        help="bf16 autocast; needs native bf16 hardware (a GPU of compute capability 8 or later, "
                             "or a CPU with avx512_bf16 or amx_bf16)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--vae", default=None, help="diffusers AutoencoderKL folder of features data: decodes the "
                        "previews and is kept with the run for export")


def run(args: argparse.Namespace) -> None:
    train(args)


def fill_released_defaults(args: argparse.Namespace, model) -> argparse.Namespace:
    """The arguments with each unset choice (None) replaced by what the released scripts use for this model."""
    masking = args.masking or default_masking(model)
    lr = args.lr if args.lr is not None else RELEASED_LR.get(args.model, DEFAULT_LR)
    update_every = args.lr_update_every
    if update_every is None:
        update_every = NO_MASKING_LR_UPDATE_EVERY if masking == "none" else 1
    return argparse.Namespace(**{**vars(args), "masking": masking, "lr": lr, "lr_update_every": update_every})


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError for argument values no run can use (after `fill_released_defaults`; the seed is checked
    before the model is built)."""
    positive = ("max_steps", "batch_size", "ckpt_every", "keep_checkpoints", "lr_decay_steps", "grad_accum",
                "log_every", "lr_update_every")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("sample_every", "num_workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if not args.lr > 0 or not args.lr_final >= 0:
        raise ValueError(f"--lr must be positive and --lr-final non-negative, got {args.lr} and {args.lr_final}")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"--ema-decay must lie in [0, 1], got {args.ema_decay}")
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where accelerate will train
    if args.mixed_precision == "bf16" and not native_bf16(device):
        raise ValueError(f"--mixed-precision bf16 needs native bf16 hardware ({NATIVE_BF16_HARDWARE}), which "
                         f"this {device} lacks: use --mixed-precision no")


#################################################################################
#                          Schedules, EMA and random streams                    #
#################################################################################

def lr_factor(step: int, lr: float, lr_final: float, decay_steps: int, update_every: int = 1) -> float:
    """Learning rate at `step` relative to lr: linear from lr to lr_final over decay_steps steps, then flat.

    update_every K > 1 holds the rate of the last multiple of K (a staircase that follows the line).
    """
    step -= step % update_every
    progress = min(step, decay_steps) / decay_steps
    return (lr + (lr_final - lr) * progress) / lr


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, parameter by parameter (as released: a constant decay)."""
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.mul_(decay).add_(param.detach(), alpha=1.0 - decay)


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by integer keys (e.g. process rank, stream index), mixed by SeedSequence."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def rng_state(generators: dict) -> dict:
    """This process's random state: the global CPU (and CUDA) RNG and every named generator, as byte tensors."""
    state = {"torch": torch.get_rng_state(), **{name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict, generators: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])
    for name, generator in generators.items():
        generator.set_state(state[name])


#################################################################################
#                                   Data order                                  #
#################################################################################

def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch, (num_samples,), the same in every process and every resume."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))


def next_position(epoch: int, position: int, batch_size: int, num_samples: int) -> tuple[int, int]:
    """Where the data stands after one step of batch_size samples; an epoch's incomplete last batch is skipped."""
    if position + batch_size > num_samples:
        epoch, position = epoch + 1, 0
    return epoch, position + batch_size


class StepBatches(Sampler):
    """Endless micro-batches of indices for one process, starting at (epoch, position).

    Each step takes the next batch_size samples of the epoch's permutation; process `rank` takes every
    num_processes-th of them, split into grad_accum micro-batches.
    """

    def __init__(self, num_samples, batch_size, seed, epoch, position, rank=0, num_processes=1, grad_accum=1):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.epoch, self.position = epoch, position
        self.rank, self.num_processes, self.grad_accum = rank, num_processes, grad_accum

    def __iter__(self):
        epoch, position, order_epoch, order = self.epoch, self.position, None, None
        while True:
            epoch, end = next_position(epoch, position, self.batch_size, self.num_samples)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_permutation(self.num_samples, self.seed, epoch)
            shard = order[end - self.batch_size:end][self.rank::self.num_processes]
            yield from (micro.tolist() for micro in shard.chunk(self.grad_accum))
            position = end


#################################################################################
#                              Checkpoints and logs                             #
#################################################################################

def checkpoint_path(run_dir, step: int) -> Path:
    """Where the run's checkpoint of `step` lives."""
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def list_checkpoints(run_dir) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def save_atomic(state: dict, path: Path) -> None:
    """torch.save that never leaves a partial file under `path`: temp file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def prune_checkpoints(run_dir, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for path in list_checkpoints(run_dir)[:-keep]:
        path.unlink()


def load_latest_checkpoint(run_dir) -> tuple[Path, dict]:
    """The newest readable checkpoint; a partial or corrupt newer one is reported on stderr in one line and skipped."""
    paths = list_checkpoints(run_dir)
    if not paths:
        raise ValueError(f"{run_dir} has no checkpoint (expected checkpoints/step_XXXXXXX.pt from edt-lab train)")
    for path in reversed(paths):
        try:
            state = safe_torch_load(path)
            missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
            if missing:
                raise ValueError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
            return path, state
        except ValueError as error:
            print(f"warning: skipping {path.name}: {error}", file=sys.stderr)
    raise ValueError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'}")


def is_run_config(path: Path) -> bool:
    """Whether `path` is the config.json of a training run (the run's arguments), not, say, a model's config."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and {"model", "results_dir", "max_steps"} <= set(config)


def check_results_dir(run_dir: Path, resume: bool) -> None:
    """Raise ValueError, before any work, unless run_dir can take this run without losing a file.

    A new run needs a new folder (its parent is created now), an empty one, or the folder of a run that was stopped
    before its first checkpoint (only what a run writes, which it rewrites); a folder with checkpoints needs
    --resume, and anything else in the folder, such as a saved model, is refused. --resume keeps the run's own
    files (it rewrites config.json, truncates log.jsonl after the checkpoint) and needs a checkpoint, checked later.
    """
    make_parent_folder(run_dir, "--results-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--results-dir {run_dir}: exists and is not a folder")
    if not run_dir.exists():
        if not os.access(run_dir.parent, os.W_OK | os.X_OK):
            raise ValueError(f"--results-dir {run_dir}: cannot create the folder (no permission in {run_dir.parent})")
        return
    if resume:
        return
    if list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints: add --resume or choose another --results-dir")
    # Without a run's config.json nothing shows that the files are a run's: then every one of them is foreign.
    is_run = is_run_config(run_dir / "config.json")
    foreign = [path.name for path in sorted(run_dir.iterdir()) if not (is_run and path.name in RUN_ENTRIES)]
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ValueError(f"--results-dir {run_dir} already holds files that are not a training run's ({shown}): "
                         "choose a new or empty folder")


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= step (a half-written last line goes too), so no step is logged twice."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


# What --resume may change: how far the run goes, how it reports, and nothing it learns from. The error names the
# first group; the second holds how the run is started and run.
RESUME_MAY_CHANGE = ("max_steps", "ckpt_every", "keep_checkpoints", "log_every", "sample_every", "num_workers")
CHANGEABLE_ON_RESUME = RESUME_MAY_CHANGE + ("compile", "resume", "results_dir", "init_weights")


def check_resumed_recipe(run: dict, now: dict) -> None:
    """ValueError, before any work, when the options of a --resume differ from the run's (its checkpoint's
    arguments, defaults filled in) in anything but CHANGEABLE_ON_RESUME: a resumed run continues the run's recipe,
    which options left at their defaults would otherwise silently replace."""
    changed = [key for key in run if key not in CHANGEABLE_ON_RESUME and key in now and now[key] != run[key]]
    if changed:
        given = " ".join(f"--{key.replace('_', '-')} {now[key]}" for key in changed)
        wanted = " ".join(f"--{key.replace('_', '-')} {run[key]}" for key in changed)
        raise ValueError(f"--resume: this run was trained with {wanted}, not {given}: pass the run's options to "
                         f"continue it (only {', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)}"
                         f" may change)")


def plain_args(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments without the command's function, so they pickle as plain values."""
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if not callable(v)})


#################################################################################
#                                    Previews                                   #
#################################################################################

def save_preview(pipe, path: Path, seed: int) -> None:
    """One DDIM-25 sample per class (up to 10, no guidance) in a row, from the seeded per-image noise of `seed`."""
    n = min(10, pipe.transformer.config.num_classes)
    images = pipe(list(range(n)), num_inference_steps=PREVIEW_STEPS, generator=image_generators(seed, range(n)),
                  output_type="np").images  # (n, H, W, C) in [0, 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe.numpy_to_pil(np.concatenate(list(images), axis=1)[None])[0].save(path)


#################################################################################
#                                   Training                                    #
#################################################################################

def build_dataset(spec: str, model):
    """The training data for `model`, checked to fit its input (C, H, W)."""
    cfg = model.config
    image_size = cfg.input_size * 8 if str(spec).startswith("features:") else cfg.input_size
    dataset = make_dataset(spec, image_size=image_size, num_classes=cfg.num_classes)
    x, _ = dataset[0]
    expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
    if tuple(x.shape) != expected:
        hint = " (encode images with `edt-lab extract-features`, train on features:DIR)" if cfg.in_channels == 4 else ""
        raise ValueError(f"{spec} gives samples of shape {tuple(x.shape)} but the model expects {expected}{hint}")
    return dataset


def pass_losses(model, raw_model, x0, y, t, scheduler, generators, masking):
    """Per-sample losses (B,) of the full pass and of the masked pass (None without masking), at the same timesteps
    t with fresh noise each, as released. A masked pass that keeps the token count (EDT's masking, input-zero) runs
    in one forward with the full pass, on a batch of 2B whose first half keeps every token: the same arithmetic per
    image in half the kernel launches. MDT's token removal changes the count, so its pass runs on its own."""
    noise = torch.randn(x0.shape, generator=generators["noise"], device=x0.device)
    x_t = q_sample(scheduler, x0, t, noise)
    masks = draw_masks(masking, raw_model, len(x0), generators["masks"], x0.device)
    if masks is None:
        return training_losses(model(x_t, t, y).float(), x0, x_t, t, noise, scheduler)["loss"], None
    masked_noise = torch.randn(x0.shape, generator=generators["noise"], device=x0.device)
    masked_x_t = q_sample(scheduler, x0, t, masked_noise)
    if isinstance(masks, TokenMasks):
        both = model(torch.cat([x_t, masked_x_t]), torch.cat([t, t]), torch.cat([y, y]),
                     masks=with_unmasked_first_half(masks))
        output, masked_output = both.float().chunk(2)
    else:
        output, masked_output = model(x_t, t, y).float(), model(masked_x_t, t, y, masks=masks).float()
    full = training_losses(output, x0, x_t, t, noise, scheduler)["loss"]
    return full, training_losses(masked_output, x0, masked_x_t, t, masked_noise, scheduler)["loss"]


def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training as the command line describes; returns the run folder."""
    run_dir = Path(args.results_dir)
    if not 0 <= args.seed < 2 ** 31:
        raise ValueError(f"--seed must lie in [0, 2**31), got {args.seed}")
    check_results_dir(run_dir, args.resume)
    torch.manual_seed(args.seed)  # the initial weights, identical in every process
    raw_model = create_model(args.model)
    args = fill_released_defaults(args, raw_model)
    check_args(args)
    masking = args.masking
    draw_masks(masking, raw_model, 1, torch.Generator(), "cpu")  # fail now if the strategy does not fit the model
    dataset = build_dataset(args.data, raw_model)
    if args.vae is not None and not args.data.startswith("features:"):  # export would ship it with a pixel model
        raise ValueError(f"--vae {args.vae}: has no effect with --data {args.data}, whose images are pixels; a VAE "
                         f"decodes latents (--data features:DIR)")
    vae = load_vae(args.vae) if args.vae is not None else None  # for previews; export finds it via the args
    if vae is None and args.sample_every and raw_model.config.in_channels == 4:
        raise ValueError("--sample-every on latents needs --vae (the AutoencoderKL folder that encoded them)")
    if args.batch_size > len(dataset):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the data ({len(dataset)} samples)")
    if args.init_weights is not None:
        if args.resume:
            raise ValueError("--init-weights starts a new run: it cannot be combined with --resume")
        start = load_checkpoint(args.init_weights)
        if model_config(start) != model_config(raw_model):
            raise ValueError(f"--init-weights {args.init_weights} holds a different model than --model {args.model}")
        raw_model.load_state_dict(start.state_dict())
    checkpoint = None
    if args.resume:
        checkpoint_file, checkpoint = load_latest_checkpoint(run_dir)
        if checkpoint["config"] != model_config(raw_model):
            raise ValueError(f"{checkpoint_file} holds a different model than --model {args.model}")
        check_resumed_recipe(vars(checkpoint["args"]), vars(args))

    accelerator = Accelerator(mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if device.type == "cuda":
        enable_tf32()  # as the released training scripts
    if args.batch_size % (world * args.grad_accum):
        raise ValueError(f"--batch-size {args.batch_size} must split evenly over {world} process(es) x "
                         f"--grad-accum {args.grad_accum}")
    generators = {name: torch.Generator(device if name == "noise" else "cpu").manual_seed(derived_seed(args.seed,
                  rank, i + 1)) for i, name in enumerate(RNG_STREAMS)}
    torch.manual_seed(derived_seed(args.seed, rank, 0))  # label dropout: a different stream per process

    ema = copy.deepcopy(raw_model).requires_grad_(False).eval()
    params = raw_model.parameters()
    if args.optimizer == "adan":
        optimizer = Adan(params, lr=args.lr, weight_decay=0.0)
    else:
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, args.lr, args.lr_final, args.lr_decay_steps, args.lr_update_every))
    sampler = make_timestep_sampler(args.timestep_sampler, 1000)
    diffusion = make_training_scheduler()
    step, epoch, position, samples_seen = 0, 0, 0, 0
    log_sums = {"loss_full": 0.0, "loss_masked": 0.0, "steps": 0}  # since the last log line

    if checkpoint is not None:
        raw_model.load_state_dict(checkpoint["model"])
        ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["opt"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        sampler.load_state_dict(checkpoint["timestep_sampler"])
        step = checkpoint["step"]
        epoch, position = checkpoint["data"]["epoch"], checkpoint["data"]["position"]
        samples_seen, log_sums = checkpoint["data"]["samples_seen"], dict(checkpoint["log_sums"])
        states = checkpoint["rng"]
        if len(states) == world:
            set_rng_state(states[rank], generators)
        elif accelerator.is_main_process:
            print(f"warning: the checkpoint's random states are for {len(states)} process(es), not {world}: "
                  "the run continues with fresh streams", file=sys.stderr)

    model = torch.compile(raw_model) if args.compile else raw_model
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(device)
    model.train()

    log_path = run_dir / "log.jsonl"
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(vars(plain_args(args)), indent=2) + "\n")
        if checkpoint is None:
            log_path.write_text("")
        else:
            truncate_log(log_path, step)
        for stale in (run_dir / "checkpoints").glob(".*.tmp"):
            stale.unlink()  # a write cut short by a kill
    preview = None
    if args.sample_every and accelerator.is_main_process:
        preview_vae = vae.to(device) if vae is not None else None
        preview = EDTPipeline(ema, make_scheduler("ddim"), preview_vae, dict(enumerate(dataset.classes)))
        preview.set_progress_bar_config(disable=True)

    batches = iter(DataLoader(
        dataset, num_workers=args.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # the loader's own seed draw must not advance the checkpointed global RNG
        batch_sampler=StepBatches(len(dataset), args.batch_size, args.seed, epoch, position, rank, world,
                                  args.grad_accum),
    ))
    progress = tqdm(total=args.max_steps, initial=step, desc="train", dynamic_ncols=True,
                    disable=not accelerator.is_main_process)
    last_log_time, last_log_step = time.time(), step
    start_time, start_step, last_record = last_log_time, step, None

    while step < args.max_steps:
        step_full, step_masked = torch.zeros((), device=device), torch.zeros((), device=device)
        for _ in range(args.grad_accum):
            x0, y = (v.to(device, non_blocking=True) for v in next(batches))
            with accelerator.accumulate(model):
                t, weights = sampler.sample(len(x0), device, generator=generators["timesteps"])
                full, masked = pass_losses(model, raw_model, x0, y, t, diffusion, generators, masking)
                loss_full = (full * weights).mean()
                loss_masked = (masked * weights).mean() if masked is not None else torch.zeros_like(loss_full)
                accelerator.backward(loss_full + loss_masked)
            # As released, the importance sampler learns each sample's full-pass plus masked-pass loss, from
            # every process.
            sampler_losses = full.detach() if masked is None else full.detach() + masked.detach()
            sampler.update(accelerator.gather(t), accelerator.gather(sampler_losses))
            step_full += loss_full.detach() / args.grad_accum
            step_masked += loss_masked.detach() / args.grad_accum
        lr = optimizer.param_groups[0]["lr"]  # the rate this step trained with
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr_scheduler.step()
        update_ema(ema, raw_model, args.ema_decay)
        step += 1
        samples_seen += args.batch_size
        epoch, position = next_position(epoch, position, args.batch_size, len(dataset))

        step_losses = accelerator.reduce(torch.stack([step_full, step_masked]), "mean").tolist()
        log_sums["loss_full"] += step_losses[0]
        log_sums["loss_masked"] += step_losses[1]
        log_sums["steps"] += 1
        progress.update(1)

        if step % args.log_every == 0 or step == args.max_steps:  # the final step is always logged
            now = time.time()
            n = log_sums["steps"]
            loss_full, loss_masked = log_sums["loss_full"] / n, log_sums["loss_masked"] / n
            record = {
                "step": step, "loss": loss_full + loss_masked, "loss_full": loss_full,
                "loss_masked": loss_masked if masking != "none" else None, "lr": lr,
                "epoch": epoch, "samples_seen": samples_seen, "time": now,
                "it_per_s": (step - last_log_step) / max(now - last_log_time, 1e-9),
            }
            if accelerator.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.set_postfix(loss=f"{record['loss']:.4f}", loss_full=f"{loss_full:.4f}",
                                     loss_masked=f"{loss_masked:.4f}")
            last_record = record
            log_sums = {"loss_full": 0.0, "loss_masked": 0.0, "steps": 0}
            last_log_time, last_log_step = now, step

        if preview is not None and step % args.sample_every == 0:
            save_preview(preview, run_dir / "samples" / f"step_{step:07d}.png", args.seed)

        if step % args.ckpt_every == 0 or step == args.max_steps:
            states = gather_object([rng_state(generators)])  # every process's streams, in rank order
            if accelerator.is_main_process:
                save_atomic({
                    "model": raw_model.state_dict(), "ema": ema.state_dict(), "opt": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict(), "step": step,
                    "data": {"epoch": epoch, "position": position, "samples_seen": samples_seen},
                    "rng": states, "timestep_sampler": sampler.state_dict(), "log_sums": log_sums,
                    "args": plain_args(args), "config": model_config(raw_model),
                    "classes": [str(c) for c in dataset.classes],
                }, checkpoint_path(run_dir, step))
                prune_checkpoints(run_dir, args.keep_checkpoints)
            accelerator.wait_for_everyone()

    progress.close()
    if accelerator.is_main_process:
        loss = f"loss {last_record['loss']:.4f} at the end" if last_record else "already at --max-steps"
        print(f"trained {args.model} from step {start_step} to {step} in {time.time() - start_time:.0f} s; {loss}; "
              f"checkpoints and log.jsonl in {run_dir}")
    accelerator.end_training()
    return run_dir
