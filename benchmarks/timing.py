"""The timing loop every benchmark shares: warm-up calls, timed calls with queued GPU work included, peak memory."""

import time

import torch


def synchronize(device) -> None:
    """Wait for queued GPU work, so a call's time includes it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(call, device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `call()` after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def reset_peak_memory(device) -> None:
    """Start a new peak-memory count (GPU only), so each model's peak is its own."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device) -> float | None:
    """Peak GPU memory allocated by tensors since the last reset, in MiB; None on a CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return None
