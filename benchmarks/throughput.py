"""Inference and training throughput of EDT against DiT and MDTv2, measured in one process.

    python benchmarks/throughput.py --models EDT-S/2 MDTv2-S/2 DiT-S/2 --batch-size 8 --device cpu --dtype fp32 \
        [--attention sdpa|math|flex] [--compile] [--cpu-linear fused|autocast] [--threads N] [--repeats 3] \
        [--json FILE] [--profile FILE]

Inference: steps/s of one eval forward (one denoising step) at batch B, EDT with AMM as in the released preset.
Training: iterations/s of the `edt-lab train` step (loss pass(es), backward, Adan step); EDT and MDTv2 both with
their masked pass (two passes, as trained: EDT's masks in one forward of 2B since 2026-12-03, MDT's token
removal in two) and without. The models are measured
in turn, `--repeats` rounds, and the medians reported, so a slow spell of the machine hits every model alike.
bf16 is autocast (edt_lab.precision); --compile compiles the models' blocks (`compile_blocks`); the peak GPU
memory is counted per model.
"""

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from edt_lab.amm import AMM_PRESETS, preset_for
from edt_lab.cli import OneLineParser, output_file, run_script
from edt_lab.models import MODEL_NAMES, create_model, layers, set_attention_path
from edt_lab.precision import autocast
from options import at_least, check_device
from timing import peak_memory_mb, reset_peak_memory, time_calls
from train_speed import training_step

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ATTENTION_PATHS = ("sdpa", "math", "flex")


def inputs(model, batch_size: int, device):
    cfg = model.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, cfg.in_channels, cfg.input_size, cfg.input_size, generator=generator)
    t = torch.randint(0, 1000, (batch_size,), generator=generator)
    y = torch.randint(0, cfg.num_classes, (batch_size,), generator=generator)
    return x.to(device), t.to(device), y.to(device)


def training_cases(name: str) -> tuple[str, ...]:
    """The masked passes measured for model `name`, as trained first: EDT's masks or MDTv2's token removal, then
    none; DiT none."""
    if name.startswith("EDT"):
        return ("edt", "none")
    return ("mdt", "none") if name.startswith("MDT") else ("none",)


def build_inference_model(name: str, device, attention: str, compile_blocks: bool):
    """Model `name` in eval mode with the released AMM preset (EDT) and the chosen attention path."""
    model = create_model(name).to(device).eval()
    model.set_amm(AMM_PRESETS[preset_for(model)].blocks if name.startswith("EDT") else [])
    set_attention_path(model, fused=attention != "math", flex=attention == "flex")
    if compile_blocks:
        model.compile_blocks()
    return model


def inference_seconds(model, batch_size: int, device, dtype, steps: int) -> list[float]:
    """Seconds of each of `steps` eval forwards after two warm-up forwards, as the pipeline samples: without
    gradients, in one autocast region (torch.inference_mode would stop autocast caching the weights' casts)."""
    x, t, y = inputs(model, batch_size, device)
    with torch.no_grad(), autocast(device, dtype):
        return time_calls(lambda: model(x, t, y), device, warmup=2, repeats=steps)


def variant_name(row) -> str:
    """"fp32", "bf16" (GPU), "bf16 fused" or "bf16 autocast" (CPU)."""
    return row["dtype"] if row["cpu_linear"] is None else f"{row['dtype']} {row['cpu_linear']}"


def main(argv=None) -> dict:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["EDT-S/2", "DiT-S/2"], choices=MODEL_NAMES, metavar="MODEL",
                        help=f"of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", nargs="+", default=["fp32"], choices=tuple(DTYPES),
                        help="one or more; several are measured in the same rounds, so a slow spell hits each alike")
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION_PATHS,
                        help="sdpa: the default fused path; math: the plain explicit path everywhere; flex: "
                             "flex_attention, fused with --compile on a GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models' blocks")
    parser.add_argument("--cpu-linear", nargs="+", default=["fused"], choices=("fused", "autocast"),
                        help="CPU bf16 inference: fused: each Linear (and the MLP's GELU) as one oneDNN kernel "
                             "(edt_lab.models.layers.Linear); autocast: plain autocast, as before it; both: "
                             "measured in the same rounds")
    parser.add_argument("--threads", type=at_least(1), default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="rounds over all models")
    parser.add_argument("--steps", type=at_least(1), default=5, help="timed forwards per round")
    parser.add_argument("--train-steps", type=at_least(0), default=3,
                        help="timed training iterations per round (0: skip)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", default=None,
                        help="also write torch.profiler's table of one more round of inference forwards to FILE")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    for path, option in ((args.json, "--json"), (args.profile, "--profile")):
        if path:
            output_file(path, option)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Every variant (dtype, and for CPU bf16 the Linear path) of every model is measured in each round.
    variants = list(dict.fromkeys((dtype, linear if dtype == "bf16" and args.device == "cpu" else None)
                                  for dtype in args.dtype for linear in args.cpu_linear))

    models = {name: build_inference_model(name, args.device, args.attention, args.compile) for name in args.models}
    train_cases = [(name, masking) for name in args.models for masking in training_cases(name)]
    inference = {(name, *variant): [] for variant in variants for name in args.models}
    training = {(case, dtype): [] for dtype in args.dtype for case in train_cases}
    peak_memory = {name: [] for name in args.models}  # MiB per measurement; None on a CPU
    for _ in range(args.repeats):
        for dtype, linear in variants:
            layers.FUSED_CPU_LINEAR = linear != "autocast"
            for name, model in models.items():
                reset_peak_memory(args.device)
                inference[name, dtype, linear].append(statistics.median(
                    inference_seconds(model, args.batch_size, args.device, DTYPES[dtype], args.steps)))
                peak_memory[name].append(peak_memory_mb(args.device))
        layers.FUSED_CPU_LINEAR = True
        for (case, dtype) in training if args.train_steps else ():
            reset_peak_memory(args.device)
            step = training_step(*case, args.batch_size, device=args.device, dtype=DTYPES[dtype],
                                 compile_blocks=args.compile, attention=args.attention)
            training[case, dtype].extend(time_calls(step, args.device, warmup=1, repeats=args.train_steps))
            peak_memory[case[0]].append(peak_memory_mb(args.device))

    if args.profile:  # the first variant
        layers.FUSED_CPU_LINEAR = variants[0][1] != "autocast"
        with torch.profiler.profile() as profiler:
            for model in models.values():
                inference_seconds(model, args.batch_size, args.device, DTYPES[variants[0][0]], args.steps)
        Path(args.profile).write_text(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        layers.FUSED_CPU_LINEAR = True

    results = []
    for (name, dtype, linear), seconds in inference.items():
        row = {"model": name, "batch_size": args.batch_size, "device": args.device, "dtype": dtype,
               "attention": args.attention, "compile": args.compile, "cpu_linear": linear,
               "inference_steps_per_s": 1 / statistics.median(seconds),
               "peak_memory_mb": None if None in peak_memory[name] else max(peak_memory[name])}
        first_of_dtype = (dtype, linear) == next(v for v in variants if v[0] == dtype)
        for ((case_name, masking), train_dtype), train_seconds in training.items():
            if case_name == name and train_dtype == dtype and first_of_dtype and train_seconds:
                key = "train_iters_per_s" if masking == training_cases(name)[0] else "train_iters_per_s_no_mask"
                row[key] = 1 / statistics.median(train_seconds)
        results.append(row)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average_1_5_15_min": os.getloadavg(),  # what else the machine was doing
               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
               "date": time.strftime("%Y-%m-%d")}

    print(f"batch {args.batch_size}, {args.device}, attention {args.attention}, compile {args.compile}, "
          f"{machine['threads']} threads, medians of {args.repeats} rounds")
    print(f"{'model':<10}{'precision':>16}{'infer steps/s':>15}{'train it/s':>12}{'train it/s (no mask)':>22}")
    for row in results:
        print(f"{row['model']:<10}{variant_name(row):>16}{row['inference_steps_per_s']:>15.3f}"
              f"{row.get('train_iters_per_s', float('nan')):>12.3f}"
              f"{row.get('train_iters_per_s_no_mask', float('nan')):>22.3f}")
    for name in args.models:  # each variant against the first
        rows = [row for row in results if row["model"] == name]
        for row in rows[1:]:
            print(f"{name} {variant_name(row)} / {variant_name(rows[0])}: inference "
                  f"{row['inference_steps_per_s'] / rows[0]['inference_steps_per_s']:.2f}x")
    for dtype, linear in variants:  # each model against the last, in the same variant
        rows = [row for row in results if (row["dtype"], row["cpu_linear"]) == (dtype, linear)]
        base = rows[-1]
        for row in rows[:-1]:
            print(f"{row['model']} / {base['model']} ({variant_name(row)}): inference "
                  f"{row['inference_steps_per_s'] / base['inference_steps_per_s']:.2f}x", end="")
            if "train_iters_per_s" in row and "train_iters_per_s" in base:
                print(f", training {row['train_iters_per_s'] / base['train_iters_per_s']:.2f}x", end="")
            print()
    report = {"results": results, "machine": machine}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    sys.exit(run_script(main))
