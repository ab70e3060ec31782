"""The `edt-lab` command: one sub-command per concern, each defined in the module that does the work, and what
the commands share: bad input as one line and exit code 2, output folders created when missing."""

import argparse
import importlib
import os
import sys
from pathlib import Path

from . import __version__

# Sub-command -> (module, one-line help). The module defines `add_arguments(parser)` and `run(args)`; it is
# imported only when its command runs, so one command's dependencies never slow down or break another.
COMMANDS = {
    "flops": ("edt_lab.flops", "print the cost (GFLOPs = multiply-accumulates, one sample) and parameters of models"),
    "eval": ("edt_lab.metrics", "metrics of a sample .npz (ADM layout): FID, IS, precision/recall or digit metrics"),
    "train-classifier": ("edt_lab.classifier", "train the digit classifier used to judge generated digits"),
    "train-autoencoder": ("edt_lab.realism", "train the digit autoencoder whose latents measure how real digits look"),
    "sample": ("edt_lab.sample", "sample images of chosen classes to a labelled .png grid or an ADM .npz"),
    "train": ("edt_lab.train", "train an EDT or DiT (masking training, Adan, EMA); resumes exactly"),
    "export": ("edt_lab.export", "write the EMA (or raw) weights of a training run as a pipeline folder"),
    "export-diffusers": ("edt_lab.diffusers_dit", "write a DiT as a diffusers DiTTransformer2DModel folder"),
    "extract-features": ("edt_lab.extract_features", "encode a folder of class images into VAE latents to train on"),
    "app": ("edt_lab.explorer.app", "serve the web explorer (AMM off vs on, attention maps, cost, masks)"),
}


def make_parent_folder(path, option: str) -> Path:
    """Create the folder that will hold the output file `path` given as `option`; ValueError when it cannot be."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file where a folder should be, no permission...
        raise ValueError(f"{option} {path}: cannot create the folder {path.parent} ({error.strerror})") from None
    return path


def make_weights_readable(folder: Path) -> None:
    """Give the .safetensors files in `folder` the mode any new file gets (0666 less the umask): safetensors
    writes them with mode 0600, which would leave the weights unreadable to everyone else."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*.safetensors"):
        path.chmod(0o666 & ~umask)


def output_file(path, option: str) -> Path:
    """An output file `path` given as `option`, checked before any work: its folder created, and the path not an
    existing folder; ValueError otherwise."""
    path = make_parent_folder(path, option)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, expected a file name")
    return path


def output_folder(path, force: bool, option: str | None = None) -> Path:
    """The folder `path` (given as `option`, if an option) that a model or data will be written to, checked before
    any work: refused when a file stands where it or a folder above it should be (writing would fail at the end),
    or when it already holds files and not `force` (nothing is overwritten unasked); ValueError. Missing folders
    are left for the writing to create."""
    path = Path(path)
    named = f"{option} {path}" if option else str(path)
    for folder in (path, *path.parents):
        if not folder.exists():
            continue
        if folder.is_dir():  # the nearest existing folder: what lies below it can be created
            break
        if folder == path:
            raise ValueError(f"{named}: exists and is not a folder")
        raise ValueError(f"{named}: cannot create the folder {path}, {folder} is a file")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ValueError(f"{named} already holds files: pass --force to write into it anyway")
    return path


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
    for name, (module_name, help_line) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_line, description=help_line)
        if name == command:
            module = importlib.import_module(module_name)
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
