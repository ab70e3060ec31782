"""A run's folder and its checkpoints:

    config.json                        the full arguments
    log.jsonl                          one JSON object per logged step
    checkpoints/step_XXXXXXX.pt        the newest few checkpoints (model, EMA, optimiser, every RNG state, ...)
    samples/step_XXXXXXX.png           EMA previews (one sample per class, DDIM-25)

Checkpoints are written atomically, so a killed run leaves at worst a stale temporary file, and a resume reads
the newest readable one.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ..checkpoints import safe_torch_load
from ..files import make_parent_folder

CHECKPOINT_KEYS = ("model", "ema", "opt", "lr_scheduler", "step", "data", "rng", "timestep_sampler", "log_sums", "args",
                   "config")
RUN_ENTRIES = ("config.json", "log.jsonl", "checkpoints", "samples")  # all that a run writes in its folder


def checkpoint_path(run_dir, step: int) -> Path:
    """Where the run's checkpoint of `step` lives."""
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.pt"


def list_checkpoints(run_dir) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.glob("step_*.pt")) if folder.is_dir() else []


def save_atomic(state: dict, path: Path) -> None:
    """torch.save that never leaves a partial file under `path`: temp file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def prune_checkpoints(run_dir, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for path in list_checkpoints(run_dir)[:-keep]:
        path.unlink()


def load_latest_checkpoint(run_dir) -> tuple[Path, dict]:
    """The newest readable checkpoint; a partial or corrupt newer one is reported on stderr in one line and skipped."""
    paths = list_checkpoints(run_dir)
    if not paths:
        raise ValueError(f"{run_dir} has no checkpoint (expected checkpoints/step_XXXXXXX.pt from edt-lab train)")
    for path in reversed(paths):
        try:
            state = safe_torch_load(path)
            missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
            if missing:
                raise ValueError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
            return path, state
        except ValueError as error:
            print(f"warning: skipping {path.name}: {error}", file=sys.stderr)
    raise ValueError(f"no readable checkpoint in {Path(run_dir) / 'checkpoints'}")


def is_run_config(path: Path) -> bool:
    """Whether `path` is the config.json of a training run (the run's arguments), not, say, a model's config."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and {"model", "results_dir", "max_steps"} <= set(config)


def check_results_dir(run_dir: Path, resume: bool) -> None:
    """Raise ValueError, before any work, unless run_dir can take this run without losing a file.

    A new run needs a new folder (its parent is created now), an empty one, or the folder of a run that was stopped
    before its first checkpoint (only what a run writes, which it rewrites); a folder with checkpoints needs
    --resume, and anything else in the folder, such as a saved model, is refused. --resume keeps the run's own
    files (it rewrites config.json, truncates log.jsonl after the checkpoint) and needs a checkpoint, checked later.
    """
    make_parent_folder(run_dir, "--results-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--results-dir {run_dir}: exists and is not a folder")
    if not run_dir.exists():
        if not os.access(run_dir.parent, os.W_OK | os.X_OK):
            raise ValueError(f"--results-dir {run_dir}: cannot create the folder (no permission in {run_dir.parent})")
        return
    if resume:
        return
    if list_checkpoints(run_dir):
        raise ValueError(f"{run_dir} already holds checkpoints: add --resume or choose another --results-dir")
    # Without a run's config.json nothing shows that the files are a run's: then every one of them is foreign.
    is_run = is_run_config(run_dir / "config.json")
    foreign = [path.name for path in sorted(run_dir.iterdir()) if not (is_run and path.name in RUN_ENTRIES)]
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ValueError(f"--results-dir {run_dir} already holds files that are not a training run's ({shown}): "
                         "choose a new or empty folder")


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= step (a half-written last line goes too), so no step is logged twice."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


# What --resume may change: how far the run goes, how it reports, and nothing it learns from. The error names the
# first group; the second holds how the run is started and run.
RESUME_MAY_CHANGE = ("max_steps", "ckpt_every", "keep_checkpoints", "log_every", "sample_every", "num_workers")
CHANGEABLE_ON_RESUME = RESUME_MAY_CHANGE + ("compile", "resume", "results_dir", "init_weights")


def check_resumed_recipe(run: dict, now: dict) -> None:
    """ValueError, before any work, when the options of a --resume differ from the run's (its checkpoint's
    arguments, defaults filled in) in anything but CHANGEABLE_ON_RESUME: a resumed run continues the run's recipe,
    which options left at their defaults would otherwise silently replace."""
    changed = [key for key in run if key not in CHANGEABLE_ON_RESUME and key in now and now[key] != run[key]]
    if changed:
        given = " ".join(f"--{key.replace('_', '-')} {now[key]}" for key in changed)
        wanted = " ".join(f"--{key.replace('_', '-')} {run[key]}" for key in changed)
        raise ValueError(f"--resume: this run was trained with {wanted}, not {given}: pass the run's options to "
                         f"continue it (only {', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)}"
                         f" may change)")


def plain_args(args: argparse.Namespace) -> argparse.Namespace:
    """The arguments without the command's function, so they pickle as plain values."""
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if not callable(v)})
