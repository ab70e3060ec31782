"""The trainer's loop (`edt-lab train`): EDT's masking training with accelerate, logs, previews, checkpoints and
exact resume.

Every random number comes from a checkpointed torch generator (or the checkpointed global RNG, which the label
dropout uses), and the data order is a per-epoch permutation seeded by (seed, epoch), so a killed run resumed
from its last checkpoint repeats the losses of an uninterrupted run.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm

from ..checkpoints import load_checkpoint, model_config
from ..data import make_dataset
from ..masking import default_masking, draw_masks
from ..models import create_model
from ..pipeline import EDTPipeline, image_generators, load_vae, make_scheduler
from ..precision import enable_tf32, resolve_precision
from .batches import StepBatches, batches, next_position
from .recipe import DEFAULT_LR, NO_MASKING_LR_UPDATE_EVERY, RELEASED_LR
from .run_folder import (check_resumed_recipe, check_results_dir, checkpoint_path, load_latest_checkpoint,
                         plain_args, prune_checkpoints, save_atomic, truncate_log)
from .state import TrainState, lr_factor
from .step import train_step

PREVIEW_STEPS = 25


def fill_released_defaults(args: argparse.Namespace, model) -> argparse.Namespace:
    """The arguments with each unset choice (None) replaced by what the released scripts use for this model."""
    masking = args.masking or default_masking(model)
    lr = args.lr if args.lr is not None else RELEASED_LR.get(args.model, DEFAULT_LR)
    update_every = args.lr_update_every
    if update_every is None:
        update_every = NO_MASKING_LR_UPDATE_EVERY if masking == "none" else 1
    return argparse.Namespace(**{**vars(args), "masking": masking, "lr": lr, "lr_update_every": update_every})


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError for argument values no run can use (after `fill_released_defaults`; the seed and
    --mixed-precision are checked before the model is built)."""
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


def check_mixed_precision(mixed_precision: str) -> None:
    """Refuse bf16 where the training device lacks it (the one check, resolve_precision), before the model is built."""
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where accelerate will train
    if mixed_precision == "bf16":
        try:
            resolve_precision("bf16", device)
        except ValueError as error:
            raise ValueError(f"--mixed-precision bf16: {error}") from None


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


def save_preview(pipe, path: Path, seed: int) -> None:
    """One DDIM-25 sample per class (up to 10, no guidance) in a row, from the seeded per-image noise of `seed`."""
    n = min(10, pipe.transformer.config.num_classes)
    images = pipe(list(range(n)), num_inference_steps=PREVIEW_STEPS, generator=image_generators(seed, range(n)),
                  output_type="np").images  # (n, H, W, C) in [0, 1]
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe.numpy_to_pil(np.concatenate(list(images), axis=1)[None])[0].save(path)


#################################################################################
#                           Checking and building a run                         #
#################################################################################

def prepare_run(args: argparse.Namespace):
    """Every check a run needs before any work: (args with released defaults, model, dataset, VAE or None,
    checkpoint to resume or None); ValueError for anything a run cannot use."""
    run_dir = Path(args.results_dir)
    if not 0 <= args.seed < 2 ** 31:
        raise ValueError(f"--seed must lie in [0, 2**31), got {args.seed}")
    check_results_dir(run_dir, args.resume)
    check_mixed_precision(args.mixed_precision)
    torch.manual_seed(args.seed)  # the initial weights, identical in every process
    model = create_model(args.model)
    args = fill_released_defaults(args, model)
    check_args(args)
    draw_masks(args.masking, model, 1, torch.Generator(), "cpu")  # fail now if the strategy does not fit the model
    dataset = build_dataset(args.data, model)
    if args.vae is not None and not args.data.startswith("features:"):  # export would ship it with a pixel model
        raise ValueError(f"--vae {args.vae}: has no effect with --data {args.data}, whose images are pixels; a VAE "
                         f"decodes latents (--data features:DIR)")
    vae = load_vae(args.vae) if args.vae is not None else None  # for previews; export finds it via the args
    if vae is None and args.sample_every and model.config.in_channels == 4:
        raise ValueError("--sample-every on latents needs --vae (the AutoencoderKL folder that encoded them)")
    if args.batch_size > len(dataset):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the data ({len(dataset)} samples)")
    if args.init_weights is not None:
        if args.resume:
            raise ValueError("--init-weights starts a new run: it cannot be combined with --resume")
        start = load_checkpoint(args.init_weights)
        if model_config(start) != model_config(model):
            raise ValueError(f"--init-weights {args.init_weights} holds a different model than --model {args.model}")
        model.load_state_dict(start.state_dict())
    checkpoint = None
    if args.resume:
        checkpoint_file, checkpoint = load_latest_checkpoint(run_dir)
        if checkpoint["config"] != model_config(model):
            raise ValueError(f"{checkpoint_file} holds a different model than --model {args.model}")
        check_resumed_recipe(vars(checkpoint["args"]), vars(args))
    return args, model, dataset, vae, checkpoint


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model compiled for training: forward and backward (AOTAutograd), of every pass, with CUDA graphs on a
    GPU (the masks are inputs of fixed shape, so each pass replays one graph)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def build_state(args, model, accelerator: Accelerator, checkpoint: dict | None) -> TrainState:
    """The train state on accelerate's device, from scratch or from `checkpoint`; the optimiser and the model that
    the step calls are prepared by accelerate (and compiled with --compile)."""
    device = accelerator.device
    state = TrainState.create(
        model, device, args.masking, args.seed, accelerator.process_index, args.optimizer, args.lr,
        lambda step: lr_factor(step, args.lr, args.lr_final, args.lr_decay_steps, args.lr_update_every),
        args.ema_decay, args.timestep_sampler)
    if checkpoint is not None:
        state.load_state_dict(checkpoint, accelerator.process_index, accelerator.num_processes)
    forward = compile_model(model, device) if args.compile else model
    state.forward, state.optimizer = accelerator.prepare(forward, state.optimizer)
    state.ema.to(device)
    state.forward.train()
    return state


#################################################################################
#                                 Logs and files                                #
#################################################################################

class LossLog:
    """The step losses since the last log line, summed on the device (float64, as a checkpoint stores them): a
    step adds to them without waiting for the device; a log line or a checkpoint reads them."""

    def __init__(self, device, sums: dict | None = None):
        sums = sums or {"loss_full": 0.0, "loss_masked": 0.0, "steps": 0}
        self.sums = torch.tensor([sums["loss_full"], sums["loss_masked"]], dtype=torch.float64, device=device)
        self.steps = sums["steps"]

    def add(self, losses: torch.Tensor) -> None:
        self.sums += losses.double()
        self.steps += 1

    def state_dict(self) -> dict:
        full, masked = self.sums.tolist()
        return {"loss_full": full, "loss_masked": masked, "steps": self.steps}

    def record(self, state: TrainState, lr: float, masking: str, since: tuple[float, int]) -> dict:
        """The log line of this step (means since the last one), and start a new sum; `since` is the (time, step)
        of the last line."""
        now = time.time()
        loss_full, loss_masked = (value / self.steps for value in self.sums.tolist())
        self.sums.zero_()
        self.steps = 0
        return {"step": state.step, "loss": loss_full + loss_masked, "loss_full": loss_full,
                "loss_masked": loss_masked if masking != "none" else None, "lr": lr, "epoch": state.epoch,
                "samples_seen": state.samples_seen, "time": now,
                "it_per_s": (state.step - since[1]) / max(now - since[0], 1e-9)}


def open_run_folder(run_dir: Path, args, resumed_step: int | None) -> None:
    """Write config.json; start log.jsonl afresh, or cut it back to the resumed step; remove stale temporary files."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(vars(plain_args(args)), indent=2) + "\n")
    if resumed_step is None:
        (run_dir / "log.jsonl").write_text("")
    else:
        truncate_log(run_dir / "log.jsonl", resumed_step)
    for stale in (run_dir / "checkpoints").glob(".*.tmp"):
        stale.unlink()  # a write cut short by a kill


def save_checkpoint(state: TrainState, log: LossLog, args, dataset, accelerator: Accelerator) -> None:
    """Write the step's checkpoint (every process's random streams, gathered) and keep the newest few."""
    checkpoint = state.state_dict()
    states = gather_object(checkpoint["rng"])  # every process's streams, in rank order
    if accelerator.is_main_process:
        save_atomic({**checkpoint, "rng": states, "log_sums": log.state_dict(), "args": plain_args(args),
                     "config": model_config(state.model), "classes": [str(c) for c in dataset.classes]},
                    checkpoint_path(args.results_dir, state.step))
        prune_checkpoints(args.results_dir, args.keep_checkpoints)
    accelerator.wait_for_everyone()


def make_preview(args, state: TrainState, vae, dataset, accelerator: Accelerator):
    """The EMA's pipeline for previews (main process, with --sample-every), or None."""
    if not (args.sample_every and accelerator.is_main_process):
        return None
    preview_vae = vae.to(accelerator.device) if vae is not None else None
    preview = EDTPipeline(state.ema, make_scheduler("ddim"), preview_vae, dict(enumerate(dataset.classes)))
    preview.set_progress_bar_config(disable=True)
    return preview


#################################################################################
#                                    Training                                   #
#################################################################################

def train(args: argparse.Namespace) -> Path:
    """Run (or resume) training as the command line describes; returns the run folder."""
    args, model, dataset, vae, checkpoint = prepare_run(args)
    run_dir = Path(args.results_dir)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.grad_accum)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if device.type == "cuda":
        enable_tf32()  # as the released training scripts
    if args.batch_size % (world * args.grad_accum):
        raise ValueError(f"--batch-size {args.batch_size} must split evenly over {world} process(es) x "
                         f"--grad-accum {args.grad_accum}")
    state = build_state(args, model, accelerator, checkpoint)
    log = LossLog(device, checkpoint["log_sums"] if checkpoint else None)
    if accelerator.is_main_process:
        open_run_folder(run_dir, args, state.step if checkpoint else None)
    preview = make_preview(args, state, vae, dataset, accelerator)
    data = batches(dataset, StepBatches(len(dataset), args.batch_size, args.seed, state.epoch, state.position, rank,
                                        world, args.grad_accum), device, args.num_workers)
    progress = tqdm(total=args.max_steps, initial=state.step, desc="train", dynamic_ncols=True,
                    disable=not accelerator.is_main_process)
    start_time, start_step, last_record = time.time(), state.step, None
    since = (start_time, start_step)
    while state.step < args.max_steps:
        lr = state.optimizer.param_groups[0]["lr"]  # the rate this step trains with
        log.add(train_step(state, [next(data) for _ in range(args.grad_accum)], accelerator))
        state.samples_seen += args.batch_size
        state.epoch, state.position = next_position(state.epoch, state.position, args.batch_size, len(dataset))
        progress.update(1)
        if state.step % args.log_every == 0 or state.step == args.max_steps:  # the final step is always logged
            last_record = log.record(state, lr, args.masking, since)
            since = (last_record["time"], state.step)
            if accelerator.is_main_process:
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(last_record) + "\n")
                progress.set_postfix({key: f"{last_record[key]:.4f}" for key in ("loss", "loss_full", "loss_masked")
                                      if last_record[key] is not None})
        if preview is not None and state.step % args.sample_every == 0:
            save_preview(preview, run_dir / "samples" / f"step_{state.step:07d}.png", args.seed)
        if state.step % args.ckpt_every == 0 or state.step == args.max_steps:
            save_checkpoint(state, log, args, dataset, accelerator)
    progress.close()
    if accelerator.is_main_process:
        loss = f"loss {last_record['loss']:.4f} at the end" if last_record else "already at --max-steps"
        print(f"trained {args.model} from step {start_step} to {state.step} in {time.time() - start_time:.0f} s; "
              f"{loss}; checkpoints and log.jsonl in {run_dir}")
    accelerator.end_training()
    return run_dir
