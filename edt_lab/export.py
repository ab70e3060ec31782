"""A training run's EMA (or raw) weights as an EDTPipeline folder (save_pretrained layout): `edt-lab export`."""

from pathlib import Path

from .checkpoints import model_from_checkpoint, safe_torch_load
from .files import output_folder
from .pipeline import EDTPipeline, load_vae, make_scheduler
from .training.run_folder import checkpoint_path, list_checkpoints, load_latest_checkpoint

CHECKPOINT_WEIGHTS = {"ema": "ema", "raw": "model"}  # --weights -> where a checkpoint keeps those weights


def export(run_dir, out_dir, step: int | None = None, force: bool = False, weights: str = "ema") -> Path:
    """Write the "ema" or "raw" weights of the run's checkpoint at `step` (None: the newest) as a pipeline folder.

    The scheduler is DDPM on the training schedule; a run trained on latents with --vae gets that VAE too.
    An out_dir that already holds files is refused unless `force`.
    """
    if weights not in CHECKPOINT_WEIGHTS:
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    out_dir = output_folder(out_dir, force)
    if step is None:
        _, checkpoint = load_latest_checkpoint(run_dir)
    else:
        path = checkpoint_path(run_dir, step)
        if not path.is_file():
            steps = ", ".join(str(int(p.stem.split("_")[1])) for p in list_checkpoints(run_dir)) or "none"
            raise ValueError(f"{run_dir} has no checkpoint of step {step} (available steps: {steps})")
        checkpoint = safe_torch_load(path)
    model = model_from_checkpoint(checkpoint, CHECKPOINT_WEIGHTS[weights])
    vae_dir = getattr(checkpoint["args"], "vae", None)
    pipe = EDTPipeline(transformer=model, scheduler=make_scheduler("ddpm"),
                       vae=load_vae(vae_dir) if vae_dir else None, id2label=dict(enumerate(checkpoint["classes"])))
    pipe.save_pretrained(out_dir)
    return out_dir
