"""One training step: the loss pass(es) of EDT's masking training (spec sections 5-6), backward, optimiser, EMA.

A step runs a fixed number of tensor ops around the model's forward and backward, whatever the batch size, and
never reads a value back to the host: its losses stay on the device until the trainer logs them.
"""

from contextlib import nullcontext

import torch
from torch.profiler import record_function

from ..diffusion import q_sample, training_losses
from ..masking import draw_masks, with_unmasked_first_half
from ..models import TokenMasks
from .state import TrainState, update_ema

# The profiler regions of the model's forward and backward: what a step runs outside them is the trainer's cost.
FORWARD_REGION, BACKWARD_REGION = "model forward", "model backward"


def pass_losses(model, raw_model, x0, y, t, scheduler, generators, masking):
    """Per-sample losses (B,) of the full pass and of the masked pass (None without masking), at the same timesteps
    t with fresh noise each, as released. A masked pass that keeps the token count (EDT's masking, input-zero) runs
    in one forward with the full pass, on a batch of 2B whose first half keeps every token: the same arithmetic per
    image in half the kernel launches. MDT's token removal changes the count, so its pass runs on its own. Both
    passes share one noising and one loss computation over the 2B samples."""
    noise = torch.randn(x0.shape, generator=generators["noise"], device=x0.device)
    masks = draw_masks(masking, raw_model, len(x0), generators["masks"], x0.device)
    if masks is None:
        x_t = q_sample(scheduler, x0, t, noise)
        with record_function(FORWARD_REGION):
            output = model(x_t, t, y).float()
        return training_losses(output, x0, x_t, t, noise, scheduler)["loss"], None
    masked_noise = torch.randn(x0.shape, generator=generators["noise"], device=x0.device)
    x0, t, noise = torch.cat([x0, x0]), torch.cat([t, t]), torch.cat([noise, masked_noise])  # (2B, ...)
    x_t = q_sample(scheduler, x0, t, noise)
    with record_function(FORWARD_REGION):
        if isinstance(masks, TokenMasks):
            output = model(x_t, t, torch.cat([y, y]), masks=with_unmasked_first_half(masks))
        else:
            full_x_t, masked_x_t = x_t.chunk(2)
            full_t, _ = t.chunk(2)
            output = torch.cat([model(full_x_t, full_t, y), model(masked_x_t, full_t, y, masks=masks)])
    losses = training_losses(output.float(), x0, x_t, t, noise, scheduler)["loss"]
    return losses.chunk(2)


def micro_step(state: TrainState, x0, y, accelerator) -> torch.Tensor:
    """Forward and backward of one micro-batch; returns its weighted losses (2,) [full, masked]."""
    sampler = state.timestep_sampler
    with accelerator.accumulate(state.forward) if accelerator else nullcontext():
        t, weights = sampler.sample(len(x0), x0.device, generator=state.generators["timesteps"])
        full, masked = pass_losses(state.forward, state.model, x0, y, t, state.diffusion, state.generators,
                                   state.masking)
        loss_full = (full * weights).mean()
        loss_masked = (masked * weights).mean() if masked is not None else torch.zeros_like(loss_full)
        with record_function(BACKWARD_REGION):
            if accelerator:
                accelerator.backward(loss_full + loss_masked)
            else:
                (loss_full + loss_masked).backward()
    # As released, the importance sampler learns each sample's full-pass plus masked-pass loss, from every process.
    sampler_losses = full.detach() if masked is None else full.detach() + masked.detach()
    gather = accelerator.gather if accelerator else (lambda x: x)
    sampler.update(gather(t), gather(sampler_losses))
    return torch.stack([loss_full, loss_masked]).detach()


def train_step(state: TrainState, batch, accelerator=None) -> torch.Tensor:
    """One optimiser step on `batch`, this process's micro-batches [(x0 (b, C, H, W), y (b,)), ...] on the device,
    then the LR schedule and the EMA: returns the step's losses (2,) [full, masked] (masked 0 without a masked
    pass), averaged over micro-batches and processes, on the device. Without an accelerator (benchmarks) the step
    runs in this process alone, at the precision of the caller's autocast."""
    losses = sum(micro_step(state, x0, y, accelerator) / len(batch) for x0, y in batch)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.lr_scheduler.step()
    update_ema(state.ema, state.model, state.ema_decay)
    state.step += 1
    return accelerator.reduce(losses, "mean") if accelerator else losses
