"""GPU check: EDT-S/2 against DiT-S/2 and MDTv2-S/2 in fp32, TF32, bf16 and bf16 with compiled
blocks (SDPA, then flex attention), inference and training, bounded in time, the JSON rewritten as it goes.

    python benchmarks/gpu_check.py --json OUT.json [--device cuda|cpu] [--tiny] [--sections fp32 bf16 ...]
                                   [--budget-s 225] [--batch-size 256]
    python benchmarks/gpu_check.py --json OUT.json --sections bf16-graphs --budget-s 200   # its own run

Each section runs in a process of its own under its own time limit (and what is left of --budget-s): a section
that fails or hangs is killed, recorded as "failed" or "timeout" with its last output lines, and the next one runs.
Rows stream to the parent as they are measured, so a section cut short keeps what it finished.

- inference: steps/s of one eval forward of --batch-size images, unguided (with guidance one such forward makes
  half as many images); EDT with AMM at the released preset for no guidance (blocks 7 and 10). Each inference row
  also gives the path's largest output difference from float32 with exact matrix products (TF32 off) and the
  explicit attention path on the same inputs and random weights, against the largest output value, so a fast
  path that computes something else shows.
- training: it/s of the `edt-lab train` iteration (loss pass(es), backward, Adan step) on random latents; EDT and
  MDTv2 with their masked pass (two passes, as trained; EDT's in one forward of 2B since 2026-12-03, so its rows
  are not like-for-like with earlier runs) and without, DiT plain.
- peak_memory_mb: the GPU's peak allocated memory during that row alone.
- profile (section bf16-profile): where one bf16 eval forward spends its time, for the question the speed numbers
  leave open (why EDT-S/2 is no faster than DiT-S/2 in bf16): its median time without the profiler, the kernels it
  launches and their summed time (a GPU busy for a small part of the forward is waiting on launches from the CPU,
  not on arithmetic), and the ops with the most self time (the GPU's, or the CPU's on a CPU).
- graphs (section bf16-graphs, last: by default it gets what is left of the budget): bf16 inference of the whole
  model compiled in one graph with torch.compile's "reduce-overhead" mode, which a GPU replays as a CUDA graph (one
  launch a forward). It answers whether removing the launches gives EDT its FLOPs advantage; compiling takes minutes.

--tiny measures EDT-T/2 and DiT-T/2 at batch 2 with one timed call: the CPU smoke run of the same code.
"""

import argparse
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

RESULT_PREFIX = "RESULT "
TAIL_LINES = 15
MIN_SECTION_S = 5  # a section is not started with less of the budget left


@dataclass(frozen=True)
class Section:
    """One process: a precision, TF32 on or off, compiled blocks or eager, the attention path, and its time limit."""

    limit_s: float
    precision: str = "fp32"
    tf32: bool = False
    compile_blocks: bool = False
    attention: str = "sdpa"  # or "flex": bias and AMM inside flex_attention (fused when compiled)
    profile: bool = False  # profile rows instead of the speed rows
    graphs: bool = False  # inference only: the whole model compiled into one graph replayed as a CUDA graph


# In priority order: the paper's fp32 setting, then bf16 and its profile, TF32 and the compiled paths (which spend
# most of their time compiling, so they go last and take what the budget has left). On an H200 a section's process
# needs about 12 s to import and start CUDA before its first row.
SECTIONS = {
    "fp32": Section(limit_s=50),
    "bf16": Section(limit_s=45, precision="bf16"),
    "bf16-profile": Section(limit_s=30, precision="bf16", profile=True),
    "tf32": Section(limit_s=45, tf32=True),
    "bf16-compiled-flex": Section(limit_s=70, precision="bf16", compile_blocks=True, attention="flex"),
    "bf16-compiled": Section(limit_s=70, precision="bf16", compile_blocks=True),
    # Last, with what the budget has left (run it by name for its own limit). If bf16 is launch-bound (the profile's
    # GPU busy share), replaying each forward as one CUDA graph removes the launches; compiling three whole models
    # takes minutes.
    "bf16-graphs": Section(limit_s=180, precision="bf16", graphs=True),
}


# ----------------------------------------------------------------------------------------------------------
# Child: one section's measurements, each printed as a RESULT line
# ----------------------------------------------------------------------------------------------------------

def emit(row: dict) -> None:
    print(RESULT_PREFIX + json.dumps(row), flush=True)


def environment(device) -> dict:
    import torch

    from edt_lab.models import MODEL_NAMES
    from edt_lab.accel import supports

    info = {"kind": "machine", "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M"), "device": str(device),
            "load_average_1_5_15_min": os.getloadavg(),  # what else the machine was doing
            "native_bf16": supports("bf16", device), "models": list(MODEL_NAMES)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return info


def models_to_measure(tiny: bool) -> list[str]:
    from edt_lab.models import MODEL_NAMES

    size = "T" if tiny else "S"
    return [name for name in (f"EDT-{size}/2", f"DiT-{size}/2", f"MDTv2-{size}/2") if name in MODEL_NAMES]


def dtype_of(section: Section):
    """The section's compute dtype. Its bf16 is autocast wherever it runs: the CPU smoke run emulates it."""
    import torch

    return torch.bfloat16 if section.precision == "bf16" else torch.float32


def build_attention_path(model, section: Section, device) -> None:
    """The section's attention path in `model`: fused SDPA or flex_attention, blocks compiled or not."""
    from edt_lab import accel
    from edt_lab.models import set_attention_path

    set_attention_path(model, fused=True)
    if section.attention == "flex":
        accel.use_flex_attention(model, device, force=True)
    if section.compile_blocks:
        accel.compile_blocks(model, device)


def inference_row(name: str, section: Section, device, batch_size: int, warmup: int, repeats: int) -> dict:
    """Steps/s, peak memory and the difference from exact float32 of one eval forward of model `name`."""
    import torch

    from edt_lab.models import randomize_weights
    from edt_lab.precision import autocast, enable_tf32
    from throughput import build_inference_model, inputs, peak_memory_mb, reset_peak_memory, time_calls

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model = randomize_weights(build_inference_model(name, device, "math", compile_blocks=False))
    x, t, y = inputs(model, batch_size, device)
    with torch.no_grad():
        reference = model(x, t, y).float()
    if section.tf32:
        enable_tf32()
    build_attention_path(model, section, device)
    skips = torch._dynamo.utils.counters["inductor"]
    skipped_before = skips["cudagraph_skips"]  # the process's count so far: its earlier models' rows hold theirs
    if section.graphs:  # "reduce-overhead": inductor's code, captured and replayed as a CUDA graph on a GPU
        model.compile(mode="reduce-overhead", dynamic=False, fullgraph=True)
    reset_peak_memory(device)
    with torch.no_grad(), autocast(device, dtype_of(section)):  # as the pipeline samples
        output = model(x, t, y).float()  # also the compiling call
        seconds = time_calls(lambda: model(x, t, y), device, warmup, repeats)
    row = {"steps_per_s": 1 / statistics.median(seconds), "peak_memory_mb": peak_memory_mb(device),
           "max_abs_diff_vs_fp32": (output - reference).abs().max().item(),
           "reference_max_abs": reference.abs().max().item()}
    if section.graphs:  # inductor runs a graph it could not capture without one, and only logs why: count them
        row["cudagraph_skips"] = skips["cudagraph_skips"] - skipped_before
    return row


def training_row(name: str, masking: str, section: Section, device, batch_size: int, warmup: int,
                 repeats: int) -> dict:
    """It/s and peak memory of the `edt-lab train` iteration of a fresh model `name`."""
    import torch

    from edt_lab.precision import enable_tf32
    from throughput import peak_memory_mb, reset_peak_memory, time_calls, training_step

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if section.tf32:
        enable_tf32()
    reset_peak_memory(device)
    step = training_step(name, masking, batch_size, device=device, dtype=dtype_of(section),
                         compiled=section.compile_blocks, attention=section.attention)
    seconds = time_calls(step, device, warmup, repeats)
    return {"iters_per_s": 1 / statistics.median(seconds), "peak_memory_mb": peak_memory_mb(device)}


def profile_row(name: str, section: Section, device, batch_size: int, warmup: int, repeats: int,
                top: int = 15) -> dict:
    """Where one eval forward of model `name` on the section's path spends its time: wall time (median, without
    the profiler), device kernels launched and their summed time (GPU), and the `top` ops by self time."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from edt_lab.precision import autocast
    from throughput import build_inference_model, inputs, synchronize, time_calls

    on_gpu = device.type == "cuda"
    model = build_inference_model(name, device, section.attention, section.compile_blocks)
    x, t, y = inputs(model, batch_size, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with torch.no_grad(), autocast(device, dtype_of(section)):
        seconds = time_calls(lambda: model(x, t, y), device, warmup + 1, repeats)
        with profile(activities=activities) as profiled:
            model(x, t, y)
            synchronize(device)
    ops = profiled.key_averages()
    self_us = (lambda op: op.self_device_time_total) if on_gpu else (lambda op: op.self_cpu_time_total)
    row = {"wall_ms": 1e3 * statistics.median(seconds), "time_of": "gpu" if on_gpu else "cpu",
           "top_ops": [{"name": op.key, "calls": op.count, "self_ms": self_us(op) / 1e3}
                       for op in sorted(ops, key=self_us, reverse=True)[:top]]}
    if on_gpu:
        kernels = [op for op in ops if op.device_type == DeviceType.CUDA]
        row["kernel_launches"] = sum(op.count for op in kernels)
        row["kernel_ms"] = sum(op.self_device_time_total for op in kernels) / 1e3
        row["gpu_busy_share"] = row["kernel_ms"] / row["wall_ms"]
    return row


def measure_section(section: Section, device, batch_size: int, warmup: int, repeats: int, tiny: bool) -> None:
    """Inference, then training rows of every model on the section's path; a failed row carries its error."""
    import torch

    from throughput import training_cases

    if section.compile_blocks:
        torch._dynamo.config.recompile_limit = 64  # a compiled block per shape and mode: never fall back to eager
    models = models_to_measure(tiny)
    if section.profile:
        cases = [(name, "profile", None) for name in models]
    else:
        cases = [(name, "inference", None) for name in models]
        if not section.graphs:  # a training step's masks change its shapes: no one graph to replay
            cases += [(name, "training", masking) for name in models for masking in training_cases(name)]
    for name, kind, masking in cases:
        row = {"model": name, "kind": kind, "batch_size": batch_size}
        row.update({"masking": masking} if kind == "training" else {"guided": False})
        try:
            if kind == "inference":
                row.update(inference_row(name, section, device, batch_size, warmup, repeats))
            elif kind == "profile":
                row.update(profile_row(name, section, device, batch_size, warmup, repeats))
            else:
                row.update(training_row(name, masking, section, device, batch_size, warmup, repeats))
        except Exception as error:  # recorded; the other rows still run
            row["error"] = f"{type(error).__name__}: {error}"
        emit(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def run_child(args) -> None:
    import torch

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    try:
        emit(environment(device))
    except Exception as error:  # the measurements matter more
        emit({"kind": "machine", "device": str(device), "error": f"{type(error).__name__}: {error}"})
    measure_section(SECTIONS[args.section], device, args.batch_size, args.warmup, args.repeats, args.tiny)


# ----------------------------------------------------------------------------------------------------------
# Parent: runs the sections in turn, enforces the limits, writes the JSON
# ----------------------------------------------------------------------------------------------------------

def summarise(sections: dict) -> list[dict]:
    """Per section: EDT / DiT inference steps/s and EDT masked / DiT training it/s, where both were measured."""
    summary = []
    for name, section in sections.items():
        rows = {(row.get("model", "")[:3], row.get("kind"), row.get("masking")): row for row in section["rows"]}
        edt, dit = rows.get(("EDT", "inference", None), {}), rows.get(("DiT", "inference", None), {})
        edt_train, dit_train = rows.get(("EDT", "training", "edt"), {}), rows.get(("DiT", "training", "none"), {})
        entry = {"section": name}
        if "steps_per_s" in edt and "steps_per_s" in dit:
            entry["edt_over_dit_inference"] = edt["steps_per_s"] / dit["steps_per_s"]
        if "iters_per_s" in edt_train and "iters_per_s" in dit_train:
            entry["edt_masked_over_dit_training"] = edt_train["iters_per_s"] / dit_train["iters_per_s"]
        if len(entry) > 1:
            summary.append(entry)
    return summary


def read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)  # end of output


def run_section(name: str, limit_s: float, child_args: list[str], on_row) -> tuple[str, list[str]]:
    """Run one section's process, passing each result row to on_row, killed at limit_s.

    Returns the status ("ok", "failed (exit N)" or "timeout") and the section's last plain output lines."""
    command = [sys.executable, "-u", str(Path(__file__).resolve()), "--section", name, *child_args]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # its own process group: a kill takes compile workers too
    lines = queue.Queue()
    threading.Thread(target=read_lines, args=(process.stdout, lines), daemon=True).start()
    tail = []
    try:
        while True:
            remaining = limit_s - (time.perf_counter() - start)
            if remaining <= 0:
                status = "timeout"
                break
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if process.poll() is None:
                    continue
                line = None  # it ended, though a compile worker may still hold the pipe open
            if line is None:
                code = process.wait()
                status = "ok" if code == 0 else f"failed (exit {code})"
                break
            if line.startswith(RESULT_PREFIX):
                row = json.loads(line[len(RESULT_PREFIX):])
                print(f"[{time.perf_counter() - start:5.1f}s] {name}: {describe(row)}", flush=True)
                on_row(row)
            else:
                tail = (tail + [line])[-TAIL_LINES:]
                print(f"  {name} | {line}", flush=True)
    finally:  # also when this process is stopped: leave nothing of the section running (compile workers too)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return status, tail


def describe(row: dict) -> str:
    """One progress line for a result row."""
    if "error" in row:
        return f"{row.get('model')} {row.get('kind')}: {row['error']}"
    if row.get("kind") == "inference":
        skipped = (f", {row['cudagraph_skips']} graph(s) not captured as CUDA graphs"
                   if row.get("cudagraph_skips") else "")
        return (f"{row['model']} inference {row['steps_per_s']:.2f} steps/s, peak {row['peak_memory_mb']} MiB, "
                f"max |diff| vs fp32 {row['max_abs_diff_vs_fp32']:.2e} (of {row['reference_max_abs']:.2f}){skipped}")
    if row.get("kind") == "profile":
        busy = (f", {row['kernel_launches']} kernels, GPU busy {row['gpu_busy_share']:.0%}"
                if "kernel_launches" in row else "")
        first = row["top_ops"][0] if row["top_ops"] else {"name": "-", "self_ms": 0.0}
        return (f"{row['model']} profile {row['wall_ms']:.1f} ms a forward{busy}; most self time: {first['name']} "
                f"{first['self_ms']:.1f} ms")
    if row.get("kind") == "training":
        return (f"{row['model']} training ({row['masking']}) {row['iters_per_s']:.2f} it/s, "
                f"peak {row['peak_memory_mb']} MiB")
    return ", ".join(f"{key} {value}" for key, value in row.items() if key != "kind")


def check_precisions(parser, args) -> None:
    """Refuse (parser.error) a bf16 section where the device lacks native bf16, as every entry point does
    (edt_lab.precision.resolve_precision). The CPU smoke run (--tiny) checks the code, not the speed: it runs them."""
    from edt_lab.devices import process_device
    from edt_lab.precision import resolve_precision

    for name in [] if args.tiny else [args.section] if args.section else args.sections:
        try:
            resolve_precision(SECTIONS[name].precision, process_device(args.device))
        except ValueError as error:
            parser.error(f"--sections {name}: {error}")


def main(argv=None) -> dict:
    from edt_lab.cli import OneLineParser
    from edt_lab.files import output_file
    from options import at_least, check_device, positive

    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="the report, rewritten after every measurement (required unless --section)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda when available")
    parser.add_argument("--tiny", action="store_true", help="EDT-T/2 and DiT-T/2 at batch 2: the CPU smoke run")
    parser.add_argument("--sections", nargs="+", choices=tuple(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--budget-s", type=at_least(MIN_SECTION_S, float), default=225.0,
                        help="total time for all sections")
    parser.add_argument("--limit-s", type=positive, default=None, help="override every section's own time limit")
    parser.add_argument("--batch-size", type=at_least(1), default=None, help="default: 256, or 2 with --tiny")
    parser.add_argument("--warmup", type=at_least(0), default=None,
                        help="untimed calls per row (default 2, 1 with --tiny)")
    parser.add_argument("--repeats", type=at_least(1), default=None,
                        help="timed calls per row (default 5, 1 with --tiny)")
    parser.add_argument("--section", choices=tuple(SECTIONS), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    check_device(parser, args.device)  # not every section logging that it has no GPU
    if args.device == "auto" and not args.tiny and not args.section:
        import torch

        if not torch.cuda.is_available():  # else every section would run the GPU setting on the CPU, to its limit
            parser.error("no CUDA device: this check measures a GPU (--tiny --device cpu runs its CPU smoke test)")
    check_precisions(parser, args)
    args.batch_size = args.batch_size or (2 if args.tiny else 256)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.repeats = args.repeats or (1 if args.tiny else 5)
    if args.section:
        run_child(args)
        return {}
    if not args.json:
        parser.error("--json is required")
    out = output_file(args.json, "--json")

    child_args = ["--device", args.device, "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
                  "--repeats", str(args.repeats)] + (["--tiny"] if args.tiny else [])
    report = {"command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
              "settings": {"device": args.device, "batch_size": args.batch_size, "warmup": args.warmup,
                           "repeats": args.repeats, "tiny": args.tiny, "budget_s": args.budget_s},
              "machine": None, "sections": {}, "summary": []}

    def save():
        report["summary"] = summarise(report["sections"])
        out.write_text(json.dumps(report, indent=2) + "\n")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops us: run the cleanup, keep the JSON
    start = time.perf_counter()
    print(f"gpu_check: sections {', '.join(args.sections)} on {args.device}, budget {args.budget_s:.0f} s, "
          f"writing {out}", flush=True)
    for name in args.sections:
        own = SECTIONS[name].limit_s if args.limit_s is None else args.limit_s
        left = args.budget_s - (time.perf_counter() - start)
        record = report["sections"][name] = {"status": "skipped (out of time)", "limit_s": round(min(own, left), 1),
                                             "rows": []}
        if left < MIN_SECTION_S:
            save()
            continue

        def on_row(row, record=record):
            if row["kind"] == "machine":
                report["machine"] = report["machine"] or row
            else:
                record["rows"].append(row)
            save()

        print(f"== {name} (limit {record['limit_s']} s) ==", flush=True)
        record["status"] = "running"  # what the JSON keeps if this process is stopped meanwhile
        save()
        section_start = time.perf_counter()
        status, tail = run_section(name, record["limit_s"], child_args, on_row)
        record.update(status=status, seconds=round(time.perf_counter() - section_start, 1))
        if status != "ok":
            record["output_tail"] = tail
        save()
    report["total_s"] = round(time.perf_counter() - start, 1)
    save()
    for entry in report["summary"]:
        print(entry, flush=True)
    print(f"gpu_check: done in {report['total_s']} s, wrote {out}", flush=True)
    return report


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]  # throughput; this checkout's edt_lab
    from edt_lab.cli import run_script

    sys.exit(run_script(main))
