"""Where a training step spends its ops and time: inside the model's forward and backward, or around them (noise,
masks, loss, timestep sampler, optimiser, EMA, data), by torch.profiler over the step's regions (step.py).

An op is a call of an aten operator that no other aten operator made (on a GPU, about one kernel launch); the ops
of the backward are those autograd runs, wherever the step calls it from.
"""

import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from .step import BACKWARD_REGION, FORWARD_REGION

BACKWARD_EVENT = "autograd::engine::evaluate_function"  # autograd's own region around each backward node
STEP_REGION = "profiled step"


def _inside(event) -> bool:
    name = event.name
    return name in (FORWARD_REGION, BACKWARD_REGION) or name.startswith(BACKWARD_EVENT)


def _place(event) -> str | None:
    """"inside" or "outside" the model's forward and backward for a top-level aten op, None for anything else."""
    if not event.name.startswith("aten::"):
        return None
    place, parent = "outside", event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return None  # called by another op: counted with it
        if _inside(parent):
            place = "inside"
        parent = parent.cpu_parent
    return place


def profile_steps(step, steps: int = 1) -> dict:
    """Run `step()` `steps` times under the profiler: ops a step ("ops_inside", "ops_outside", means over the
    steps), wall seconds a step ("seconds", the median) and the share of it outside the model's forward and
    backward ("outside_share", the median over the steps, so that one step slowed by other work on the machine
    does not decide it). On a GPU the times are those of the host, which waits for the device at the end of each
    step."""
    synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    synchronize()
    seconds = []
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            with record_function(STEP_REGION):
                start = time.perf_counter()
                step()
                synchronize()
                seconds.append(time.perf_counter() - start)
    counts = {"inside": 0, "outside": 0}
    inside_us = {}  # step region -> microseconds in the model's forward and backward
    for event in profiler.events():
        place = _place(event)
        if place is not None:
            counts[place] += 1
        if event.name in (FORWARD_REGION, BACKWARD_REGION):
            parent = event.cpu_parent
            while parent is not None and parent.name != STEP_REGION:
                parent = parent.cpu_parent
            inside_us[parent.id] = inside_us.get(parent.id, 0.0) + event.time_range.elapsed_us()
    steps_us = {event.id: event.time_range.elapsed_us() for event in profiler.events() if event.name == STEP_REGION}
    shares = [max(0.0, 1.0 - inside_us.get(id_, 0.0) / total) for id_, total in steps_us.items()]
    return {"ops_inside": counts["inside"] / steps, "ops_outside": counts["outside"] / steps,
            "seconds": statistics.median(seconds), "outside_share": statistics.median(shares)}
