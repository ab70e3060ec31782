"""Inference and training throughput of EDT against DiT and MDTv2, measured in one process: the one timing tool.

    python benchmarks/throughput.py --models EDT-S/2 MDTv2-S/2 DiT-S/2 --batch-size 8 [64 ...] --device cpu \
        --precision fp32 [bf16] [--attention sdpa|math|flex] [--compile] [--cpu-linear fused|autocast] \
        [--threads N] [--repeats 3] [--steps 5] [--train-steps 3] [--json FILE] [--profile FILE]

Inference: steps/s of one eval forward (one denoising step) at batch B, EDT with AMM as in the released preset.

Training: the step of `edt-lab train` (edt_lab.training.step.train_step: timesteps from the loss-second-moment
sampler, the loss pass(es), backward, Adan, EMA) on random in-memory data of the model's input, indexed on the
device as the trainer does; EDT and MDTv2 with their masked pass (EDT's in one forward of 2B, MDT's token removal
in two) and without, DiT without. Per model, batch and precision: samples/s, the ops a step runs inside and
outside the model's forward and backward, and the share of the step's time outside them (the median over
--profile-steps more steps under torch.profiler: edt_lab.training.profile).

The cases are measured in turn, `--repeats` rounds, and the medians reported, so a slow spell of the machine hits
every case alike. bf16 is autocast, refused (exit 2) where the device lacks native bf16
(edt_lab.precision.resolve_precision); --compile compiles the models' blocks for inference and the whole training
forward and backward (as `edt-lab train --compile`); peak GPU memory is counted per case.
"""

import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from edt_lab import accel
from edt_lab.amm import AMM_PRESETS, preset_for
from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from edt_lab.models import MODEL_NAMES, create_model, set_attention_path
from edt_lab.precision import autocast, resolve_precision
from edt_lab.training.batches import StepBatches, batches
from edt_lab.training.loop import compile_model
from edt_lab.training.profile import profile_steps
from edt_lab.training.state import TrainState
from edt_lab.training.step import train_step
from options import at_least, check_device

PRECISIONS = ("fp32", "bf16")
ATTENTION_PATHS = ("sdpa", "math", "flex")


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------

def synchronize(device) -> None:
    """Wait for queued GPU work, so a call's time includes it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(call, device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of `call()` after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def reset_peak_memory(device) -> None:
    """Start a new peak-memory count (GPU only), so each case's peak is its own."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device) -> float | None:
    """Peak GPU memory allocated by tensors since the last reset, in MiB; None on a CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return None


# ----------------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------------

def inputs(model, batch_size: int, device):
    cfg = model.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, cfg.in_channels, cfg.input_size, cfg.input_size, generator=generator)
    t = torch.randint(0, 1000, (batch_size,), generator=generator)
    y = torch.randint(0, cfg.num_classes, (batch_size,), generator=generator)
    return x.to(device), t.to(device), y.to(device)


def build_inference_model(name: str, device, attention: str, compile_blocks: bool):
    """Model `name` in eval mode with the released AMM preset (EDT) and the chosen attention path."""
    model = create_model(name).to(device).eval()
    model.set_amm(AMM_PRESETS[preset_for(model)].blocks if name.startswith("EDT") else [])
    set_attention_path(model, fused=attention != "math")
    if attention == "flex":
        accel.use_flex_attention(model, device)
    if compile_blocks:
        accel.compile_blocks(model, device)
    return model


def inference_seconds(model, batch_size: int, device, dtype, steps: int) -> list[float]:
    """Seconds of each of `steps` eval forwards after two warm-up forwards, as the pipeline samples: without
    gradients, in one autocast region (torch.inference_mode would stop autocast caching the weights' casts)."""
    x, t, y = inputs(model, batch_size, device)
    with torch.no_grad(), autocast(device, dtype):
        return time_calls(lambda: model(x, t, y), device, warmup=2, repeats=steps)


def inference_variants(precisions, cpu_linear, device) -> list[tuple[str, str | None]]:
    """(precision, CPU Linear path) pairs: the Linear path ("fused": accel.enable_fast_paths, "autocast": plain) is
    a choice of CPU bf16 only."""
    cpu = torch.device(device).type == "cpu"
    return list(dict.fromkeys((precision, linear if precision == "bf16" and cpu else None)
                              for precision in precisions for linear in cpu_linear))


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------

def training_cases(name: str) -> tuple[str, ...]:
    """The masked passes measured for model `name`, as trained first: EDT's masks or MDTv2's token removal, then
    none; DiT none."""
    if name.startswith("EDT"):
        return ("edt", "none")
    return ("mdt", "none") if name.startswith("MDT") else ("none",)


def training_step(name: str, masking: str, batch_size: int, device="cpu", dtype=torch.float32,
                  compiled: bool = False, attention: str = "sdpa", seed: int = 0):
    """One `edt-lab train` step of a fresh model `name` on random in-memory data (four batches of the model's
    input, indexed on the device in StepBatches' order), as a callable; bf16 is autocast."""
    torch.manual_seed(seed)
    model = create_model(name).to(device).train()
    set_attention_path(model, fused=attention != "math")
    if attention == "flex":
        accel.use_flex_attention(model, device)
    state = TrainState.create(model, device, masking, seed)
    if compiled:
        state.forward = compile_model(model, torch.device(device))
    cfg, count = model.config, 4 * batch_size
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(count, cfg.in_channels, cfg.input_size, cfg.input_size, generator=generator),
                         torch.randint(0, cfg.num_classes, (count,), generator=generator))
    micro_batches = batches(data, StepBatches(count, batch_size, seed, 0, 0), device)

    def step():
        with autocast(device, dtype):
            train_step(state, [next(micro_batches)])

    return step


# ----------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------

def parse_args(argv):
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["EDT-S/2", "DiT-S/2"], choices=MODEL_NAMES, metavar="MODEL",
                        help=f"of {', '.join(MODEL_NAMES)}")
    parser.add_argument("--batch-size", nargs="+", type=at_least(1), default=[8], help="one or more")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS,
                        help="one or more, measured in the same rounds; bf16 needs native bf16 hardware")
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION_PATHS,
                        help="sdpa: the default fused path; math: the plain explicit path everywhere; flex: "
                             "flex_attention, fused with --compile on a GPU")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the models' blocks (inference) and the training forward and backward")
    parser.add_argument("--cpu-linear", nargs="+", default=["fused"], choices=("fused", "autocast"),
                        help="CPU bf16 inference: fused: edt_lab.accel's fast paths (one oneDNN kernel a Linear); "
                             "autocast: plain autocast; both: measured in the same rounds")
    parser.add_argument("--threads", type=at_least(1), default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="rounds over all cases")
    parser.add_argument("--steps", type=at_least(0), default=5, help="timed forwards per round (0: no inference)")
    parser.add_argument("--train-steps", type=at_least(0), default=3,
                        help="timed training steps per round (0: no training)")
    parser.add_argument("--profile-steps", type=at_least(1), default=3,
                        help="profiled training steps after the timed ones: ops, and the median share of time "
                             "outside the model's forward and backward")
    parser.add_argument("--json", default=None)
    parser.add_argument("--profile", default=None,
                        help="also write torch.profiler's table of one more round of inference forwards to FILE")
    args = parser.parse_args(argv)
    check_device(parser, args.device)
    for precision in args.precision:
        try:
            resolve_precision(precision, args.device)
        except ValueError as error:
            parser.error(f"--precision: {error}")
    for path, option in ((args.json, "--json"), (args.profile, "--profile")):
        if path:
            output_file(path, option)
    return args


def measure_inference(args, variants) -> list[dict]:
    """Inference rows: every model, batch and variant, medians of --repeats rounds."""
    models = {name: build_inference_model(name, args.device, args.attention, args.compile) for name in args.models}
    fused = {name: copy.deepcopy(model) for name, model in models.items()}
    for model in fused.values():
        accel.enable_fast_paths(model, args.device)
    seconds = {(name, batch, *variant): [] for variant in variants for batch in args.batch_size
               for name in args.models}
    memory = {key: [] for key in seconds}
    for _ in range(args.repeats):
        for name, batch, precision, linear in seconds:
            model = (fused if linear == "fused" else models)[name]
            reset_peak_memory(args.device)
            seconds[name, batch, precision, linear].append(statistics.median(inference_seconds(
                model, batch, args.device, resolve_precision(precision, args.device), args.steps)))
            memory[name, batch, precision, linear].append(peak_memory_mb(args.device))
    if args.profile:  # the first variant, first batch
        with torch.profiler.profile() as profiler:
            for model in models.values():
                inference_seconds(model, args.batch_size[0], args.device, torch.float32, args.steps)
        Path(args.profile).write_text(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    return [{"model": name, "batch_size": batch, "precision": precision, "cpu_linear": linear,
             "attention": args.attention, "compile": args.compile, "steps_per_s": 1 / statistics.median(times),
             "samples_per_s": batch / statistics.median(times),
             "peak_memory_mb": None if None in memory[key] else max(memory[key])}
            for key, times in seconds.items() for name, batch, precision, linear in [key]]


def measure_training(args) -> list[dict]:
    """Training rows: every model, masking, batch and precision, medians of --repeats rounds; ops and the share of
    time outside the model's forward and backward from --profile-steps more, profiled steps."""
    keys = [(name, masking, batch, precision) for precision in args.precision for batch in args.batch_size
            for name in args.models for masking in training_cases(name)]
    steps = {key: training_step(key[0], key[1], key[2], args.device, resolve_precision(key[3], args.device),
                                args.compile, args.attention) for key in keys}
    seconds, memory = {key: [] for key in keys}, {key: [] for key in keys}
    for round_ in range(args.repeats):
        for key, step in steps.items():
            reset_peak_memory(args.device)
            seconds[key].extend(time_calls(step, args.device, warmup=1 if round_ == 0 else 0,
                                           repeats=args.train_steps))
            memory[key].append(peak_memory_mb(args.device))
    rows = []
    for (name, masking, batch, precision), step in steps.items():
        median = statistics.median(seconds[name, masking, batch, precision])
        profiled = profile_steps(step, args.profile_steps)
        memory_mb = memory[name, masking, batch, precision]
        rows.append({"model": name, "masking": masking, "batch_size": batch, "precision": precision,
                     "attention": args.attention, "compile": args.compile, "steps_per_s": 1 / median,
                     "samples_per_s": batch / median, "ops_inside": profiled["ops_inside"],
                     "ops_outside": profiled["ops_outside"], "outside_share": profiled["outside_share"],
                     "peak_memory_mb": None if None in memory_mb else max(memory_mb)})
    return rows


def print_report(inference: list[dict], training: list[dict], machine: dict, args) -> None:
    print(f"{args.device}, attention {args.attention}, compile {args.compile}, {machine['threads']} threads, "
          f"medians of {args.repeats} rounds")
    if inference:
        print(f"{'model':<11}{'batch':>6}{'precision':>18}{'infer steps/s':>15}{'samples/s':>11}")
    for row in inference:
        variant = row["precision"] + (f" {row['cpu_linear']}" if row["cpu_linear"] else "")
        print(f"{row['model']:<11}{row['batch_size']:>6}{variant:>18}{row['steps_per_s']:>15.3f}"
              f"{row['samples_per_s']:>11.1f}")
    last = args.models[-1]  # each model against the last, in the same batch and variant
    base = {(r["batch_size"], r["precision"], r["cpu_linear"]): r for r in inference if r["model"] == last}
    for row in (r for r in inference if r["model"] != last):
        other = base[row["batch_size"], row["precision"], row["cpu_linear"]]
        print(f"{row['model']} / {last} ({row['precision']}, batch {row['batch_size']}): inference "
              f"{row['steps_per_s'] / other['steps_per_s']:.2f}x")
    if training:
        print(f"{'model':<11}{'masking':>8}{'batch':>6}{'precision':>10}{'samples/s':>11}{'ops inside':>11}"
              f"{'ops outside':>12}{'time outside':>13}")
    for row in training:
        print(f"{row['model']:<11}{row['masking']:>8}{row['batch_size']:>6}{row['precision']:>10}"
              f"{row['samples_per_s']:>11.1f}{row['ops_inside']:>11.0f}{row['ops_outside']:>12.0f}"
              f"{row['outside_share']:>13.1%}")


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    variants = inference_variants(args.precision, args.cpu_linear, args.device)
    inference = measure_inference(args, variants) if args.steps else []
    training = measure_training(args) if args.train_steps else []
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "load_average_1_5_15_min": os.getloadavg(),  # what else the machine was doing
               "native_bf16": accel.supports("bf16", args.device),
               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
               "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python benchmarks/throughput.py", *argv])}
    print_report(inference, training, machine, args)
    report = {"inference": inference, "training": training, "machine": machine}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    sys.exit(run_script(main))
