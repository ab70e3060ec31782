"""`edt-lab flops MODEL...`: the cost table of registered models or checkpoints."""

from pathlib import Path


def add_arguments(parser):
    parser.add_argument("models", nargs="+", help="registered model names, e.g. EDT-S/2 DiT-S/2, or checkpoints "
                                                  "(any file or folder `sample --ckpt` takes)")


def run(args):
    import torch

    from ..checkpoints import load_checkpoint
    from ..flops import format_report
    from ..models import MODEL_NAMES, create_model

    for name in args.models:
        if name in MODEL_NAMES:
            with torch.device("meta"):
                model = create_model(name)
        elif Path(name).exists():
            model = load_checkpoint(name)
        else:
            raise ValueError(f"{name!r} is neither a registered model ({', '.join(MODEL_NAMES)}) nor a checkpoint "
                             "file or folder")
        print(format_report(name, model))
        print()
