"""edt-lab: the Efficient Diffusion Transformer (EDT), with DiT as the baseline."""

__version__ = "0.1.0"
