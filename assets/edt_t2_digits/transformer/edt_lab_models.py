"""The transformer classes a pipeline folder may hold, for diffusers' loader."""

from edt_lab.models import DiT, EDT, MDTv2  # noqa: F401
