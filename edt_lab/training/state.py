"""The train state: model, EMA, optimiser, LR schedule, timestep sampler, data position and random streams, with
`state_dict` / `load_state_dict`, so that a checkpoint holds all that an exact resume needs."""

import copy
import sys
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler
from pytorch_optimizer import Adan

from ..diffusion import UniformSampler, make_timestep_sampler, make_training_scheduler

RNG_STREAMS = ("noise", "timesteps", "masks")  # one generator each, per process


def lr_factor(step: int, lr: float, lr_final: float, decay_steps: int, update_every: int = 1) -> float:
    """Learning rate at `step` relative to lr: linear from lr to lr_final over decay_steps steps, then flat.

    update_every K > 1 holds the rate of the last multiple of K (a staircase that follows the line).
    """
    step -= step % update_every
    progress = min(step, decay_steps) / decay_steps
    return (lr + (lr_final - lr) * progress) / lr


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, over all parameters in two foreach ops (as released: a constant
    decay); the same arithmetic as a per-parameter mul_ and add_."""
    ema_params = list(ema.parameters())
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, list(model.parameters()), alpha=1.0 - decay)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """Adan (as released) or AdamW, without weight decay; both update all parameters in foreach ops."""
    if name == "adan":
        return Adan(params, lr=lr, weight_decay=0.0, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}: expected adan or adamw")


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream named by integer keys (e.g. process rank, stream index), mixed by SeedSequence."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def make_generators(seed: int, rank: int, device) -> dict:
    """The named random streams of process `rank` (RNG_STREAMS), on the training device, so that timesteps, noise
    and masks are drawn where they are used."""
    return {name: torch.Generator(device).manual_seed(derived_seed(seed, rank, i + 1))
            for i, name in enumerate(RNG_STREAMS)}


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


@dataclass
class TrainState:
    """Everything a training step changes. `model` is the plain module (what checkpoints hold); `forward` is what
    the step calls: the same module as accelerate prepared it, compiled with --compile."""

    model: torch.nn.Module
    forward: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    timestep_sampler: UniformSampler
    diffusion: DDPMScheduler
    generators: dict
    masking: str = "none"
    ema_decay: float = 0.9999
    step: int = 0
    epoch: int = 0
    position: int = 0  # samples of the epoch's permutation used so far
    samples_seen: int = 0

    @classmethod
    def create(cls, model: torch.nn.Module, device, masking: str, seed: int = 0, rank: int = 0,
               optimizer: str = "adan", lr: float = 1e-3, lr_lambda=None, ema_decay: float = 0.9999,
               timestep_sampler: str = "loss-second-moment") -> "TrainState":
        """A fresh state for `model` (already on `device`) at step 0: EMA copy, optimiser, LR schedule (lr times
        lr_lambda(step), constant without one), timestep sampler and the random streams of process `rank`, whose
        global RNG (the label dropout's) is seeded too."""
        generators = make_generators(seed, rank, device)
        torch.manual_seed(derived_seed(seed, rank, 0))  # label dropout: a different stream per process
        opt = make_optimizer(optimizer, model.parameters(), lr)
        return cls(model=model, forward=model, ema=copy.deepcopy(model).requires_grad_(False).eval(), optimizer=opt,
                   lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda or (lambda step: 1.0)),
                   timestep_sampler=make_timestep_sampler(timestep_sampler, 1000).to(device),
                   diffusion=make_training_scheduler(), generators=generators, masking=masking, ema_decay=ema_decay)

    def state_dict(self) -> dict:
        """The checkpoint's training part; "rng" holds this process's streams (the trainer gathers every
        process's into it before saving)."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(), "step": self.step,
            "data": {"epoch": self.epoch, "position": self.position, "samples_seen": self.samples_seen},
            "rng": [rng_state(self.generators)], "timestep_sampler": self.timestep_sampler.state_dict(),
        }

    def load_state_dict(self, state: dict, rank: int = 0, num_processes: int = 1) -> None:
        """Restore what `state_dict` (with every process's "rng") returned. Random states saved by another number
        of processes leave fresh streams, with a warning from the main process."""
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["opt"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.timestep_sampler.load_state_dict(state["timestep_sampler"])
        self.step = state["step"]
        self.epoch, self.position = state["data"]["epoch"], state["data"]["position"]
        self.samples_seen = state["data"]["samples_seen"]
        if len(state["rng"]) == num_processes:
            set_rng_state(state["rng"][rank], self.generators)
        elif rank == 0:
            print(f"warning: the checkpoint's random states are for {len(state['rng'])} process(es), not "
                  f"{num_processes}: the run continues with fresh streams", file=sys.stderr)
