"""Training speed on the CPU: EDT-S/2 with masking (two passes, in one forward) and without, against DiT-S/2.

    python benchmarks/train_speed.py [--batch-size 8] [--warmup 2] [--steps 5] [--json FILE]

One iteration is the training step of `edt-lab train`: the loss pass(es) of edt_lab.train.pass_losses on random
4x32x32 latents (fp32), backward, and an Adan step. The time is the median over the timed steps, after warm-up.
The "released" column is quoted, not measured: this script does not run the released code. Its figures come from
one earlier run of the released training step on a comparable 2-core machine at batch 8 (EDT-S masked 0.49 it/s,
EDT-S plain 0.98 it/s, DiT-S 0.35 it/s) and are printed for orientation only.
"""

import json
import statistics
import sys

import torch
from pytorch_optimizer import Adan

from edt_lab.cli import OneLineParser, output_file, run_script
from edt_lab.diffusion import make_timestep_sampler, make_training_scheduler
from edt_lab.models import create_model, set_attention_path
from edt_lab.precision import autocast
from edt_lab.train import RNG_STREAMS, derived_seed, pass_losses
from options import at_least
from timing import time_calls

# (model, masking) -> it/s of the released code on a 2-core CPU, batch 8: quoted from an earlier run, not measured.
QUOTED_RELEASED = {("EDT-S/2", "edt"): 0.49, ("EDT-S/2", "none"): 0.98, ("DiT-S/2", "none"): 0.35}


def training_step(name: str, masking: str, batch_size: int, seed: int = 0, device="cpu", dtype=torch.float32,
                  compile_blocks: bool = False, attention: str = "sdpa"):
    """One `edt-lab train` iteration of a fresh model `name` on fixed random latents, as a callable; bf16 is
    autocast, compile_blocks compiles the model's blocks first (`compile_blocks`), attention is "sdpa", "math"
    or "flex" (`set_attention_path`)."""
    torch.manual_seed(seed)
    model = create_model(name).to(device).train()
    set_attention_path(model, fused=attention != "math", flex=attention == "flex")
    if compile_blocks:
        model.compile_blocks()
    optimizer = Adan(model.parameters(), lr=1e-3, weight_decay=0.0)
    diffusion, sampler = make_training_scheduler(), make_timestep_sampler("uniform", 1000)
    generators = {stream: torch.Generator(device if stream == "noise" else "cpu").manual_seed(derived_seed(seed, i))
                  for i, stream in enumerate(RNG_STREAMS)}
    cfg = model.config
    x0 = torch.randn(batch_size, cfg.in_channels, cfg.input_size, cfg.input_size).to(device)
    y = torch.randint(0, cfg.num_classes, (batch_size,)).to(device)

    def step():
        t, weights = sampler.sample(batch_size, device, generator=generators["timesteps"])
        with autocast(device, dtype):
            full, masked = pass_losses(model, model, x0, y, t, diffusion, generators, masking)
        loss = (full * weights).mean() + ((masked * weights).mean() if masked is not None else 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(name: str, masking: str, batch_size: int, warmup: int, steps: int, seed: int = 0, device="cpu",
               dtype=torch.float32) -> list[float]:
    """Seconds of each timed training step (after `warmup` untimed ones) of model `name`; bf16 means autocast."""
    return time_calls(training_step(name, masking, batch_size, seed, device, dtype), device, warmup, steps)


def main(argv=None) -> list[dict]:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=at_least(1), default=8)
    parser.add_argument("--warmup", type=at_least(0), default=2)
    parser.add_argument("--steps", type=at_least(1), default=5)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")

    rows = []
    print(f"CPU training speed, batch {args.batch_size}, fp32, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps after {args.warmup} warm-up steps")
    print(f"{'model':<9} {'masking':<8} {'s/it':>7} {'it/s':>6} {'released it/s (quoted)':>23}")
    for (name, masking), released in QUOTED_RELEASED.items():
        seconds = statistics.median(time_steps(name, masking, args.batch_size, args.warmup, args.steps))
        rows.append({"model": name, "masking": masking, "batch_size": args.batch_size, "s_per_it": seconds,
                     "it_per_s": 1.0 / seconds, "released_it_per_s_quoted": released})
        print(f"{name:<9} {masking:<8} {seconds:7.3f} {1.0 / seconds:6.3f} {released:23.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    sys.exit(run_script(main))
