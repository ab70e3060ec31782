"""What guiding only some steps saves: the explorer's default request, sampled with its guided timesteps and with
every step guided, in alternating rounds in one process.

    python benchmarks/guidance_interval_speed.py [--rounds 8] [--interval LOW HIGH] [--threads N] [--json FILE]
                                                 [--demo]

The guided timesteps are the model folder's recommended ones (t <= 800 for the digits model, so 8 of its 25 steps
run the model on the conditional half of the batch alone), or `--interval`; a model that recommends none (the
untrained `--demo` model) gets the digits model's, 0..800. Each round samples twice per setting;
the figures are medians, with the ratio of every-step to interval sampling per round, so a slow spell of the
machine weighs on both settings alike.
"""

import dataclasses
import json
import statistics
import sys
from pathlib import Path

import torch

from app_latency import command_line, default_request, in_turns, machine_record, per_round_ratios, request_record
from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from edt_lab.explorer.models import DEFAULT_NAME, ModelStore
from edt_lab.explorer.sampling import sample
from options import at_least

DEFAULT_INTERVAL = (0, 800)  # the shipped digits model's recommended guided timesteps, for a model without any


def main(argv=None) -> dict:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=at_least(1), default=8)
    parser.add_argument("--interval", type=int, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="the guided timesteps (default: the model's recommended ones, or 0..800)")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="torch's CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--demo", action="store_true", help="the untrained demo model (tests)")
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = ModelStore(None, torch.device("cpu"), demo=args.demo).get(DEFAULT_NAME)
    request = default_request(loaded)
    interval = tuple(args.interval or request.guidance_interval or DEFAULT_INTERVAL)
    if not 0 <= interval[0] <= interval[1] < loaded.pipe.scheduler.config.num_train_timesteps:
        parser.error(f"--interval {interval[0]} {interval[1]}: expected 0 <= LOW <= HIGH <= "
                     f"{loaded.pipe.scheduler.config.num_train_timesteps - 1}")
    requests = {"interval": dataclasses.replace(request, guidance_interval=interval),
                "every step": dataclasses.replace(request, guidance_interval=None)}
    loaded.pipe.set_progress_bar_config(disable=True)
    for each in requests.values():
        sample(loaded.pipe, each, record_views=False)  # warm-up

    seconds = in_turns({name: lambda each=each: sample(loaded.pipe, each, record_views=False).seconds
                        for name, each in requests.items()}, args.rounds)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = per_round_ratios(seconds, "every step", "interval")
    report = {"command": command_line(__file__, argv),
              "request": {**request_record(request), "precision": request.precision, "interval": list(interval)},
              "sampling_s": seconds, "sampling_median_s": medians, "every_step_over_interval_per_round": ratios,
              "every_step_over_interval_median": statistics.median(ratios), "threads": torch.get_num_threads(),
              "machine": machine_record()}
    print("; ".join(f"{name}: sampling {medians[name]:.3f} s" for name in seconds)
          + f"; every step / interval per round: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(run_script(main))
