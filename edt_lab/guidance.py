"""Classifier-free guidance as one small object: its scale, the timesteps it guides, its schedule, its channels.

`Guidance` checks itself once, where it is made; `EDTPipeline` then only asks whether it fits the model
(`check_fits`). Like diffusers' guiders, the object says how to guide, and the pipeline runs it. This module
imports no torch, so the command line can read its names before the heavy imports.
"""

import math
from dataclasses import dataclass

from .checks import finite_number, whole_number

GUIDANCE_SCHEDULES = ("constant", "power-cos")
NUM_TRAIN_TIMESTEPS = 1000  # the released schedule's length; a recommended.json's timesteps lie in 0..999


def guidance_scales(t, scale: float, schedule: str = "constant", num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                    power: float = 4.0):
    """The guidance scale at timesteps t (a tensor (B,)) as float32 (B,): `scale` throughout ("constant"), or
    MDTv2's released "power-cos" schedule 1 + (scale - 1) (1 - cos(pi (1 - t/T)^power)) / 2, which rises from
    about 1 at the first, noisiest step (t near T) to `scale` at t = 0."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r}: expected one of {', '.join(GUIDANCE_SCHEDULES)}")
    t = t.float()
    if schedule == "constant":
        return t.new_full(t.shape, scale)
    rise = (1 - (math.pi * (1 - t / num_train_timesteps) ** power).cos()) / 2
    return 1 + (scale - 1) * rise


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance: `scale` (1 = none), the `interval` (low, high) of timesteps guided, both included
    (None = every step; the unguided steps run the conditional model alone), the `schedule` ("constant", or
    MDTv2's "power-cos", see `guidance_scales`) and the guided `channels` (None = all noise channels, 3 = as the
    released scripts for 4-channel latents). Every value is checked here; a bad one raises a one-line ValueError.
    """

    scale: float = 1.0
    interval: tuple[int, int] | None = None
    schedule: str = "constant"
    channels: int | None = None

    def __post_init__(self):
        # NaN would skip the guidance unnoticed, inf ruin every image
        scale = finite_number(self.scale, "guidance_scale")
        if scale < 1:
            raise ValueError(f"guidance_scale must be at least 1 (1 = no guidance), got {self.scale}")
        if self.schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {', '.join(GUIDANCE_SCHEDULES)}, "
                             f"got {self.schedule!r}")
        channels = self.channels
        if channels is not None and whole_number(channels, "guided_channels") < 1:
            raise ValueError(f"guided_channels must be at least 1 (or None for all), got {channels}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "interval", _interval(self.interval))
        object.__setattr__(self, "channels", None if channels is None else int(channels))

    @property
    def active(self) -> bool:
        """True when some step is guided at all (scale above 1)."""
        return self.scale > 1

    def check_fits(self, num_train_timesteps: int, in_channels: int | None = None) -> None:
        """ValueError unless the interval lies inside the model's timesteps and the channels inside its own
        (`in_channels`; None skips that check)."""
        if self.interval is not None and self.interval[1] >= num_train_timesteps:
            raise ValueError(f"guidance_interval must be (low, high) with 0 <= low <= high < {num_train_timesteps}, "
                             f"got {self.interval!r}")
        if None not in (self.channels, in_channels) and self.channels > in_channels:
            raise ValueError(f"guided_channels must lie in [1, {in_channels}], got {self.channels}")

    def guided_steps(self, timesteps) -> list[bool]:
        """For each timestep of a sampling run (a list of numbers), whether that step is guided."""
        low, high = (0, math.inf) if self.interval is None else self.interval
        return [self.active and low <= t <= high for t in timesteps]


def _interval(value) -> tuple[int, int] | None:
    """A guidance interval (low, high) of training timesteps (a pair, e.g. a JSON list) as a tuple of ints."""
    if value is None:
        return None
    try:
        low, high = (whole_number(t, "a timestep") for t in value)
    except (TypeError, ValueError):
        low, high = -1, -1  # not a pair of timesteps: the message below says what is expected
    if not 0 <= low <= high:
        raise ValueError(f"guidance_interval must be None or (low, high) timesteps with 0 <= low <= high, "
                         f"got {value!r}")
    return low, high
