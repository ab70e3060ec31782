"""Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)."""

from edt_lab.pipeline import EDTPipeline  # noqa: F401
