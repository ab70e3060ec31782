"""A training burst of EDT-S/2 on random latents with the real trainer: iterations/s and peak GPU memory.

    python benchmarks/train_burst.py [--steps 200] [--batch-size 256] [--model EDT-S/2] [--json FILE]

Random latents of the model's input and classes (4x32x32 and 1000 classes for the S, B and XL models, 1x32x32 and
10 for the tiny ones) are written as a `features:` folder, then `edt-lab train` runs with EDT masking, bf16
autocast on CUDA (fp32 elsewhere); the figures come from the run's log.jsonl.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from edt_lab.cli import OneLineParser, output_file, run_script
from edt_lab.cli import main as edt_lab
from edt_lab.models import MODEL_NAMES, create_model
from options import at_least


def write_random_latents(folder: Path, count: int, num_classes: int = 1000, shape=(4, 32, 32)) -> None:
    """A `features:` folder (the layout edt-lab extract-features writes) of random latents of `shape`."""
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    save_file({"latents": torch.randn(count, *shape, generator=generator),
               "labels": torch.randint(0, num_classes, (count,), generator=generator)}, folder / "latents.safetensors")
    (folder / "meta.json").write_text(json.dumps({"num_classes": num_classes, "classes": [str(i) for i in
                                                                                          range(num_classes)]}))


def main(argv=None) -> dict:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="EDT-S/2", choices=MODEL_NAMES, metavar="MODEL",
                        help=f"of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--steps", type=at_least(1), default=200)
    parser.add_argument("--batch-size", type=at_least(1), default=256)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")
    with torch.device("meta"):  # the model's input and classes, without allocating its weights
        config = create_model(args.model).config
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        data, run = Path(tmp) / "latents", Path(tmp) / "run"
        write_random_latents(data, count=max(4 * args.batch_size, 1024), num_classes=config.num_classes,
                             shape=(config.in_channels, config.input_size, config.input_size))
        start = time.perf_counter()
        code = edt_lab(["train", "--model", args.model, "--data", f"features:{data}", "--results-dir", str(run),
                        "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                        "--ckpt-every", str(args.steps), "--log-every", str(min(10, args.steps)),
                        "--mixed-precision", "bf16" if cuda else "no"])
        wall = time.perf_counter() - start
        if code:
            raise SystemExit(code)
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # the first logged interval holds start-up and warm-up; the rest is the steady rate
    steady = [row["it_per_s"] for row in log[1:]] or [log[-1]["it_per_s"]]
    result = {"model": args.model, "batch_size": args.batch_size, "steps": args.steps,
              "dtype": "bf16" if cuda else "fp32", "train_iters_per_s": sorted(steady)[len(steady) // 2],
              "wall_s": wall, "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
              "final_loss": log[-1]["loss"], "device": torch.cuda.get_device_name() if cuda else "cpu"}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(run_script(main))
