"""Reading ADM-style .npz sample files (never unpickled) and the TorchScript Inception-v3 of StyleGAN2-ADA."""

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..assets import DEFAULT_INCEPTION_PATH, INCEPTION_FILE
from ..precision import autocast


def _first_line(error) -> str:
    """An exception's message as one line (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def inception_path(path=None) -> Path:
    """The Inception weights file: `path` (--inception) or, when None, the default one; ValueError when missing."""
    if path is None:
        if not DEFAULT_INCEPTION_PATH.is_file():
            raise ValueError(f"no Inception weights at {DEFAULT_INCEPTION_PATH}: put {INCEPTION_FILE} (TorchScript, "
                             f"from the StyleGAN2-ADA metrics) there or pass --inception PATH")
        return DEFAULT_INCEPTION_PATH
    path = Path(path)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"--inception {path} {state}: expected the TorchScript {INCEPTION_FILE} of the "
                         f"StyleGAN2-ADA metrics")
    return path


def load_inception(path=None):
    """The TorchScript Inception-v3 of the StyleGAN2-ADA metrics (default: assets/inception-2015-12-05.pt)."""
    path = inception_path(path)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a TorchScript Inception-v3 file ({_first_line(error)})") from None
    return model.eval()


@torch.no_grad()
def inception_outputs(model, images, return_features: bool, batch_size: int = 64, device="cpu", dtype=torch.float32):
    """Pool features (N, 2048) or class probabilities (N, 1008) of uint8 images (N, H, W, 1 or 3); dtype bf16 runs
    the network under bf16 autocast."""
    outputs = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device).permute(0, 3, 1, 2).float()  # (B, C, H, W), 0..255
        x = x.expand(-1, 3, -1, -1)  # grey -> RGB; a no-op for RGB
        # ADM's evaluator and StyleGAN2-ADA's IS both drop the output bias before the softmax.
        with autocast(device, dtype):
            output = model(x, return_features=True) if return_features else model(x, no_output_bias=True)
        outputs.append(output.double().cpu())
    return torch.cat(outputs).numpy()


NPZ_LAYOUT = "an ADM-style .npz (arr_0: uint8 N x H x W x 3 or x 1)"


def _npz_arrays(path: Path) -> dict:
    """The arrays of the .npz `path`, never unpickled (a file's pickles could run code); ValueError with the reason
    when it is not an archive of plain arrays."""
    def unreadable(reason):
        return ValueError(f"{path}: not a readable .npz of images ({reason})")

    try:
        with open(path, "rb") as file:
            # numpy tries what is not a zip (or an .npy) as a pickle, and its error suggests allow_pickle=True.
            if not zipfile.is_zipfile(file):
                raise unreadable("not a zip archive of .npy arrays")
        arrays = {}
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                try:
                    arrays[name] = data[name]
                except ValueError as error:
                    # Again numpy's message would suggest allow_pickle=True for an array of Python objects.
                    raise unreadable(f"{name} holds Python objects" if "allow_pickle" in str(error)
                                     else f"{name}: {_first_line(error)}") from None
                if not isinstance(arrays[name], np.ndarray):  # a zip member that is not an .npy
                    raise unreadable(f"{name} is not an .npy array")
    except OSError as error:
        raise unreadable(error.strerror or _first_line(error)) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # a damaged archive
        raise unreadable(_first_line(error)) from None
    return arrays


def read_npz(path, images_required: bool = True):
    """The arrays of an ADM-style .npz: `arr_0` uint8 (N, H, W, 1 or 3), optional `arr_1` labels, `mu`, `sigma`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: expected {NPZ_LAYOUT}")
    if not path.is_file():
        raise ValueError(f"{path} does not exist: expected {NPZ_LAYOUT}")
    arrays = _npz_arrays(path)
    images = arrays.get("arr_0")
    if images is None and (images_required or "mu" not in arrays or "sigma" not in arrays):
        needed = "arr_0" if images_required else "arr_0 or mu and sigma"
        raise ValueError(f"{path} holds {sorted(arrays)}; expected {needed}")
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3)):
        raise ValueError(f"{path}: arr_0 is {images.dtype} {images.shape}; expected uint8 (N, H, W, 3 or 1)")
    if images is not None and len(images) == 0:
        raise ValueError(f"{path}: arr_0 holds no images")
    if "arr_1" in arrays and (images is None or arrays["arr_1"].shape != (len(images),)):
        raise ValueError(f"{path}: arr_1 has shape {arrays['arr_1'].shape}; expected one label per image")
    return arrays

