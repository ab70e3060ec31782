"""`edt-lab app` and `python app.py`: serve the web explorer (edt_lab.explorer)."""

import sys

from ..cli import OneLineParser


def add_arguments(parser):
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (0..65535)")
    parser.add_argument("--models-dir", help="folder of pipeline folders and .pt/.pth/.safetensors files "
                                             "(a latent model's VAE in vae/ beside them)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is faster "
                                                    "for the tiny digits model on a busy machine)")
    parser.add_argument("--demo", action="store_true", help="serve the untrained demo model (random weights) as the "
                        "default even when the trained one exists (tests)")


def run(args):
    from ..addresses import check_serve_options

    check_serve_options(args.host, args.port, args.threads)  # before gradio and torch load: a bad option is quick
    from ..explorer.server import serve

    serve(args.host, args.port, args.models_dir, args.device, args.share, args.threads, args.demo)


def main(argv=None, prog: str = "app.py") -> int:
    """`python app.py ...`: like every command of the project, a bad option is one line and exit code 2."""
    parser = OneLineParser(prog=prog, description="The EDT web explorer.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
