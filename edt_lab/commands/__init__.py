"""The commands of `edt-lab` (see edt_lab/cli.py), one module each: `add_arguments(parser)` fills its parser
without importing torch, `run(args)` checks what the parser cannot and calls the library."""
