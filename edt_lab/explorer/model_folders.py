"""The explorer's models: the shipped digits model (or an untrained stand-in) and the entries of a models folder.

The browser only ever sees entry names; the paths stay here, on the server.
"""

import json
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from safetensors import safe_open

from ..accel import enable_fast_paths
from ..checkpoints import load_checkpoint
from ..checks import whole_number
from ..devices import available_device
from ..models import create_model, randomize_weights
from ..pipeline import DEFAULT_MODEL_DIR, EDTPipeline, load_default, load_vae, make_scheduler
from ..settings import read_recommended

DEFAULT_NAME = "digits (default)"
DEMO_NOTE = "untrained demo model (random weights)"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
DIGIT_NAMES = {i: str(i) for i in range(10)}


def imagenet_class_names() -> dict[int, str]:
    """The 1000 ImageNet-1k class names in the standard index order (0 tench ... 999 toilet tissue)."""
    text = resources.files("edt_lab").joinpath("resources/imagenet_classes.txt").read_text(encoding="utf-8")
    return dict(enumerate(text.splitlines()))


def class_names_for(num_classes: int) -> dict[int, str]:
    """Names for a model without its own: digits for 10 classes, ImageNet's for 1000, else none."""
    return {10: DIGIT_NAMES, 1000: imagenet_class_names()}.get(num_classes, {})


# ----------------------------------------------------------------------------------------------------------
# Finding models
# ----------------------------------------------------------------------------------------------------------

@dataclass
class ModelEntry:
    """One model the app offers: `name` is all the browser sees; `error` is set when it cannot be used."""

    name: str
    kind: str  # "default", "pipeline" (a save_pretrained pipeline folder, ours or diffusers' DiT) or "checkpoint"
    path: Path | None = None
    error: str | None = None


def _check_entry(path: Path) -> None:
    """Cheap structural check of a models-folder entry (no weights read); ValueError when it is broken."""
    if path.is_dir():
        try:
            json.loads((path / "model_index.json").read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"model_index.json is not valid JSON ({error})") from None
        if not (path / "transformer" / "config.json").is_file():
            raise ValueError("pipeline folder without transformer/config.json")
    elif path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as file:
                keys = list(file.keys())
        except Exception as error:  # safetensors raises its own error types for every kind of damage
            raise ValueError(f"not a readable safetensors file ({str(error).splitlines()[0]})") from None
        if not keys:
            raise ValueError("the safetensors file holds no tensors")
    elif not zipfile.is_zipfile(path):
        raise ValueError("not a PyTorch checkpoint (torch.save writes a zip archive)")


def scan_models(models_dir) -> list[ModelEntry]:
    """Pipeline folders and .pt/.pth/.safetensors files directly inside `models_dir`, sorted by name.

    A broken entry comes back with `error` set instead of raising, so one bad file never stops the app.
    A weights file of a latent model needs a VAE folder `vae/` beside it (loaded when the model is chosen).
    """
    folder = Path(models_dir)
    if not folder.is_dir():
        raise ValueError(f"models folder {folder} does not exist or is not a folder")
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path / "model_index.json").exists():
            kind = "pipeline"
        elif path.is_file() and path.suffix in CHECKPOINT_SUFFIXES:
            kind = "checkpoint"
        else:
            continue  # vae/, notes and anything else are not models
        entry = ModelEntry(path.name, kind, path)
        try:
            _check_entry(path)
        except (ValueError, OSError) as error:
            entry.error = str(error)
        entries.append(entry)
    return entries


# ----------------------------------------------------------------------------------------------------------
# Loading models
# ----------------------------------------------------------------------------------------------------------

def demo_pipeline(device="cpu", seed: int = 0) -> EDTPipeline:
    """An untrained EDT-T/2 with random weights for digits: the app works before a trained model exists."""
    model = randomize_weights(create_model("EDT-T/2"), seed)
    return EDTPipeline(model, make_scheduler("ddim"), None, DIGIT_NAMES).to(device)


@dataclass
class LoadedModel:
    """A ready pipeline with what the page says about it and the settings its folder recommends."""

    name: str
    pipe: EDTPipeline
    note: str
    recommended: dict = field(default_factory=dict)
    is_demo: bool = False


def load_entry(entry: ModelEntry, device="cpu", demo: bool = False) -> LoadedModel:
    """Load one entry; the default entry falls back to the demo model until the trained one exists."""
    if entry.error:
        raise ValueError(f"{entry.name}: {entry.error}")
    if entry.kind == "default":
        if demo or not default_model_available():
            return LoadedModel(entry.name, demo_pipeline(device), DEMO_NOTE, is_demo=True)
        pipe = load_default(device)
        return LoadedModel(entry.name, pipe, "trained EDT-T/2 digits model", read_recommended(DEFAULT_MODEL_DIR))
    if entry.kind == "pipeline":  # ours, or diffusers' DiTPipeline folder (whose save_pretrained drops class names)
        pipe = EDTPipeline.from_pretrained(entry.path, device)
        if not pipe.id2label:
            pipe = EDTPipeline(pipe.transformer, pipe.scheduler, pipe.vae,
                               class_names_for(pipe.transformer.config.num_classes))
        return LoadedModel(entry.name, pipe, f"pipeline {entry.name}", read_recommended(entry.path))
    model = load_checkpoint(entry.path, device)
    vae_dir = entry.path.parent / "vae"
    vae = load_vae(vae_dir).to(device) if vae_dir.is_dir() else None
    if vae is None and model.config.in_channels == 4:
        raise ValueError("a latent model needs its VAE: put an AutoencoderKL folder (e.g. sd-vae-ft-ema) named vae/ "
                         "beside the file")
    pipe = EDTPipeline(model, make_scheduler("ddpm"), vae, class_names_for(model.config.num_classes))
    return LoadedModel(entry.name, pipe, f"checkpoint {entry.name}" + (" with the VAE beside it" if vae else ""))


def default_model_available() -> bool:
    """True once the trained digits model has been exported to its place in the project."""
    return (DEFAULT_MODEL_DIR / "model_index.json").is_file()


class ModelStore:
    """The entries the app offers and the loaded pipelines (loaded once, the last two kept)."""

    def __init__(self, models_dir=None, device="cpu", demo: bool = False, keep: int = 2):
        if whole_number(keep, "keep") < 1:
            raise ValueError(f"keep must be at least 1 (the model in use), got {keep}")
        self.device = available_device(device)
        self.demo = demo  # serve the demo model as the default even when the trained one exists (tests)
        self.models_dir = Path(models_dir).resolve() if models_dir is not None else None
        entries = [ModelEntry(DEFAULT_NAME, "default")]
        entries += scan_models(self.models_dir) if self.models_dir is not None else []
        self.entries = {entry.name: entry for entry in entries}
        self.keep = keep
        self._loaded: dict[str, LoadedModel] = {}

    def names(self) -> list[str]:
        """Names of the usable entries, the default first."""
        return [name for name, entry in self.entries.items() if entry.error is None]

    def problems(self) -> list[str]:
        """One line per entry that cannot be used."""
        return [f"{name}: {entry.error}" for name, entry in self.entries.items() if entry.error is not None]

    def get(self, name: str) -> LoadedModel:
        """The loaded model of entry `name` (loading it on first use); ValueError for unknown or broken entries."""
        if name not in self.entries:
            raise ValueError(f"unknown model {name!r}: expected one of {', '.join(self.names())}")
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.is_demo and not self.demo and default_model_available():
            loaded = None  # the trained default has appeared since: switch to it
        if loaded is None:
            entry = self.entries[name]
            try:
                loaded = load_entry(entry, self.device, self.demo)
            except Exception as error:  # a damaged file fails in many ways (KeyError, RuntimeError...): all unusable
                reason = (str(error) if isinstance(error, ValueError)
                          else f"cannot be loaded ({type(error).__name__}: {error})")
                entry.error = self._redact(reason).removeprefix(f"{entry.name}: ")
                raise ValueError(f"{entry.name}: {entry.error}") from None
            self._loaded.pop(name, None)
            while len(self._loaded) >= self.keep:
                self._loaded.pop(next(iter(self._loaded)))  # the least recently loaded goes first
            loaded.pipe.set_progress_bar_config(disable=True)
            enable_fast_paths(loaded.pipe.transformer, self.device)  # what this hardware runs natively, if anything
            self._loaded[name] = loaded
        return loaded

    def _redact(self, message: str) -> str:
        """The message without the server's folder names: the page names entries, never paths."""
        if self.models_dir is not None:
            message = message.replace(f"{self.models_dir}/", "").replace(str(self.models_dir), "models folder")
        return message.replace(f"{DEFAULT_MODEL_DIR.parent.parent}/", "")
