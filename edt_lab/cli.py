"""The `edt-lab` command: one sub-command per concern, each defined in the module that does the work."""

import argparse
import importlib
import sys

# Sub-command -> module. Each module defines `COMMAND_HELP` (one line), `add_arguments(parser)` and `run(args)`.
COMMANDS = {
    "flops": "edt_lab.flops",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line and exit code 2, like every other bad input."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edt-lab", description="EDT, the Efficient Diffusion Transformer: tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.COMMAND_HELP, description=module.COMMAND_HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"edt-lab {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
