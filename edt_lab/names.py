"""Names users pick among on the command line, defined here as plain data with no imports, so that the commands
offer them (argparse choices, --help) without loading torch; the library checks its arguments against the same
tuples. (The sampling settings' names live in settings.py and guidance.py, which import no torch either.)"""

PRECISIONS = ("fp32", "bf16", "auto")  # of sampling and evaluation forwards (precision.resolve_precision)
MASKING_STRATEGIES = ("edt", "mdt", "input-zero", "none")  # the masked pass of training (masking.draw_masks)
TIMESTEP_SAMPLERS = ("uniform", "loss-second-moment")  # ADM's names (diffusion.make_timestep_sampler)
