"""Which device a run uses: a device name checked against this machine before any work, so that a missing GPU is
one line rather than an error inside a move or a kernel launch."""

import torch


def available_device(device, what: str = "device") -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1" or a torch.device) as a torch.device; a CUDA device this machine lacks is
    refused here, where torch would fail later inside a move or a kernel launch."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{what} {device!r}: expected 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} {device}: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{what} {device}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    return device


def process_device(name: str, state=None) -> torch.device:
    """--device: "cpu", "cuda" or "auto" (a CUDA GPU when there is one, else the CPU); with an accelerate
    PartialState `state`, this process's GPU. ValueError for another name, or "cuda" on a machine without one."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        available_device(name, "--device")
    if state is not None:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
