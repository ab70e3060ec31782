"""The `edt-lab` command: one sub-command per module of edt_lab/commands/, and what every command shares: bad
input as one line and exit code 2.

A command module defines `add_arguments(parser)` and `run(args)`. Only the module of the command typed is
imported, and it imports the library inside `run`, so `--help` and a bad option answer before torch loads."""

import argparse
import importlib
import sys
from pathlib import Path

from . import __version__

# Sub-command -> one-line help; its module is edt_lab.commands.<name with "_" for "-">.
COMMANDS = {
    "flops": "print the cost (GFLOPs = multiply-accumulates, one sample) and parameters of models",
    "eval": "metrics of a sample .npz (ADM layout): FID, IS, precision/recall or digit metrics",
    "train-classifier": "train the digit classifier used to judge generated digits",
    "train-autoencoder": "train the digit autoencoder whose latents measure how real digits look",
    "sample": "sample images of chosen classes to a labelled .png grid or an ADM .npz",
    "train": "train an EDT or DiT (masking training, Adan, EMA); resumes exactly",
    "export": "write the EMA (or raw) weights of a training run as a pipeline folder",
    "export-diffusers": "write a DiT as a diffusers DiTTransformer2DModel folder",
    "extract-features": "encode a folder of class images into VAE latents to train on",
    "app": "serve the web explorer (AMM off vs on, attention maps, cost, masks)",
}


def command_module(name: str):
    """The module of the sub-command `name`, e.g. "export-diffusers" -> edt_lab.commands.export_diffusers."""
    return importlib.import_module(f"edt_lab.commands.{name.replace('-', '_')}")


def run_script(main) -> int:
    """Run a script's `main()`; a bad input (ValueError) is one line on stderr and exit code 2, as in every command
    of the project: `if __name__ == "__main__": sys.exit(run_script(main))`."""
    try:
        main()
    except ValueError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        return 2
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit code 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the full options of `command` (the others show only their help line)."""
    parser = OneLineParser(prog="edt-lab", description="EDT, the Efficient Diffusion Transformer: tools.")
    parser.add_argument("--version", action="version", version=f"edt-lab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for name, help_line in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_line, description=help_line)
        if name == command:
            module = command_module(name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"edt-lab {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
