"""edt-lab: the Efficient Diffusion Transformer (EDT), with DiT as the baseline."""

__version__ = "0.1.0"


def load_default(device="cpu"):
    """The shipped EDT-T/2 digits EDTPipeline (imported on first use, so `import edt_lab` stays cheap)."""
    from .pipeline import load_default as load

    return load(device)
