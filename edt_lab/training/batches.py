"""The data order of a run: a per-epoch permutation seeded by (seed, epoch), taken a step at a time from a stored
(epoch, position), so that a resumed run sees the batches an uninterrupted one would. In-memory data (the digits,
extracted latents) lives on the training device and its batches are indexed there."""

import torch
from torch.utils.data import DataLoader, Sampler

from ..data import in_memory_tensors
from .state import derived_seed

DEVICE_DATA_SHARE = 0.25  # data may take up to this share of a GPU's free memory to live there


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

    def index_batches(self):
        """The micro-batches as index tensors (b,), one step's grad_accum after another."""
        epoch, position, order_epoch, order = self.epoch, self.position, None, None
        while True:
            epoch, end = next_position(epoch, position, self.batch_size, self.num_samples)
            if epoch != order_epoch:
                order_epoch, order = epoch, epoch_permutation(self.num_samples, self.seed, epoch)
            yield from order[end - self.batch_size:end][self.rank::self.num_processes].chunk(self.grad_accum)
            position = end

    def __iter__(self):
        return (indices.tolist() for indices in self.index_batches())


def fits_on(tensors, device) -> bool:
    """Whether `tensors` may live on `device`: always on the CPU (they are there already), on a GPU when they take
    at most DEVICE_DATA_SHARE of its free memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= DEVICE_DATA_SHARE * free


def device_batches(tensors, batch_sampler: StepBatches, device):
    """Endless (x, y) micro-batches of in-memory data moved to `device` once and indexed there."""
    on_device = [t.to(device) for t in tensors]
    for indices in batch_sampler.index_batches():
        indices = indices.to(device, non_blocking=True)
        yield tuple(t[indices] for t in on_device)


def batches(dataset, batch_sampler: StepBatches, device, num_workers: int = 0):
    """Endless (x, y) micro-batches on `device` in batch_sampler's order: indexed on the device for in-memory data
    that fits there, read by a DataLoader (num_workers processes) otherwise."""
    tensors = in_memory_tensors(dataset)
    if tensors is not None and fits_on(tensors, device):
        return device_batches(tensors, batch_sampler, device)
    device = torch.device(device)
    loader = DataLoader(dataset, num_workers=num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator(),  # the loader's seed draw must not advance the global RNG
                        batch_sampler=batch_sampler)
    return (tuple(v.to(device, non_blocking=True) for v in batch) for batch in loader)
