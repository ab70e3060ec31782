"""`edt-lab eval SAMPLES.npz [--ref REF.npz] ...`: score a sample file and print a table (and a .json)."""

import json
from pathlib import Path

from ..assets import DEFAULT_INCEPTION_PATH, INCEPTION_FILE
from ..names import PRECISIONS


def add_arguments(parser):
    parser.add_argument("samples", help="ADM-style .npz of samples (arr_0: uint8 N x H x W x 3 or x 1, arr_1: labels)")
    parser.add_argument("--ref", default=None,
                        help="reference .npz: real images (arr_0) and/or Inception statistics (mu, sigma); "
                             "optional for 32x32 digits (default: the bundled digits)")
    parser.add_argument("--inception", default=None,
                        help=f"TorchScript {INCEPTION_FILE} (default for non-digit samples: {DEFAULT_INCEPTION_PATH})")
    parser.add_argument("--batch-size", type=int, default=64, help="images per Inception forward")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                        help="of the Inception network (auto: the GPU when there is one); digits without "
                             "--inception are judged on the CPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="of the networks' forwards: fp32, bf16 (autocast; needs native bf16 hardware) or auto")
    parser.add_argument("--json", default=None, help="also write the results to this .json file")


def run(args):
    from ..devices import process_device
    from ..files import output_file
    from ..metrics import evaluate_npz, format_table, inception_path

    # Every option is checked before the images are read and the networks run.
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = process_device(args.device)  # as `edt-lab sample` checks it
    json_path = output_file(args.json, "--json") if args.json else None
    for option, path in (("the samples", args.samples), ("--ref", args.ref)):
        if json_path is not None and path is not None and json_path.resolve() == Path(path).resolve():
            raise ValueError(f"--json {args.json}: is {option} file, which it would overwrite: choose another name")
    if args.inception is not None:
        inception_path(args.inception)
    results = evaluate_npz(args.samples, args.ref, inception=args.inception, batch_size=args.batch_size,
                           device=device, precision=args.precision)
    print(format_table(results))
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
