"""How the web server's queue polling slows sampling in its process: the explorer's default request, sampled while
the page is served with gradio's own polling intervals and with the app's (QUEUE_POLL_S), in alternating rounds.

    python benchmarks/queue_polling.py [--rounds 6] [--threads N] [--json FILE] [--demo]

Gradio's queue wakes every 1 ms for new requests and every 10 ms for progress, also while a request runs; the
sampling thread shares the GIL and the cores with that loop. Each round samples twice per setting; the figures
are medians, with the server's idle CPU use (CPU seconds per second over 2 s without requests) per setting.
"""

import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from app_latency import command_line, free_port, machine_record
from edt_lab.cli import OneLineParser, output_file, run_script
from edt_lab.explorer import controls
from edt_lab.explorer.app import QUEUE_POLL_S, build_app, queue_requests, set_queue_polling
from edt_lab.explorer.models import DEFAULT_NAME, ModelStore
from edt_lab.explorer.sampling import sample
from options import at_least


def default_request(loaded) -> controls.Request:
    """The page's defaults: 4 images of the first class, seed 0, the model's initial settings."""
    init = controls.initial_settings(loaded)
    first_class = controls.class_choices(loaded.pipe)[0]
    return controls.check_request(loaded.pipe, first_class, 0, 4, init["sampler"], init["steps"], init["guidance"],
                                  controls.format_blocks(init["blocks"]), init["released_radius"], init["radius"],
                                  init["scale"], controls.PRECISION_DEFAULT, recommended=loaded.recommended)


def request_record(request) -> dict:
    """What a report records of the sampled request."""
    return {"steps": request.steps, "sampler": request.sampler, "guidance": request.guidance,
            "amm_blocks": request.amm_blocks, "num_images": request.num_images}


def in_turns(calls: dict, rounds: int) -> dict:
    """name -> the seconds of each call: every round runs each of `calls` (name -> f() returning seconds) twice, in
    turn, so a slow spell of the machine weighs on every setting alike."""
    seconds = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            seconds[name] += [call() for _ in range(2)]
    return seconds


def per_round_ratios(seconds: dict, numerator: str, denominator: str) -> list[float]:
    """The ratio of two settings' median seconds in each round of `in_turns`."""
    return [statistics.median(seconds[numerator][i:i + 2]) / statistics.median(seconds[denominator][i:i + 2])
            for i in range(0, len(seconds[numerator]), 2)]


def idle_cpu(seconds: float = 2.0) -> float:
    """CPU seconds this process uses per second while idle for `seconds`."""
    start = os.times()
    time.sleep(seconds)
    end = os.times()
    return (end.user + end.system - start.user - start.system) / seconds


def main(argv=None) -> dict:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=at_least(1), default=6)
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="torch's CPU threads (default: torch's choice)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--demo", action="store_true", help="the untrained demo model (tests)")
    args = parser.parse_args(argv)
    if args.json:
        output_file(args.json, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    store = ModelStore(None, torch.device("cpu"), demo=args.demo)
    loaded = store.get(DEFAULT_NAME)
    request = default_request(loaded)
    loaded.pipe.set_progress_bar_config(disable=True)
    sample(loaded.pipe, request, record_views=False)  # warm-up

    demo = build_app(store)
    demo.queue()
    settings = {"gradio": {name: getattr(demo._queue, name) for name in QUEUE_POLL_S}, "app": dict(QUEUE_POLL_S)}
    queue_requests(demo)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    idle = {}

    def sample_with(intervals):
        set_queue_polling(demo, intervals)
        return sample(loaded.pipe, request, record_views=False).seconds

    try:
        for name, intervals in settings.items():
            set_queue_polling(demo, intervals)
            idle[name] = idle_cpu()
        seconds = in_turns({name: functools.partial(sample_with, intervals) for name, intervals in settings.items()},
                           args.rounds)
    finally:
        demo.close()
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = per_round_ratios(seconds, "gradio", "app")
    report = {"command": command_line(__file__, argv), "request": request_record(request),
              "intervals_s": settings, "idle_cpu_s_per_s": idle, "sampling_s": seconds, "sampling_median_s": medians,
              "gradio_over_app_per_round": ratios, "gradio_over_app_median": statistics.median(ratios),
              "threads": torch.get_num_threads(),
              "machine": machine_record()}
    print("; ".join(f"{name}: sampling {medians[name]:.3f} s, idle CPU {idle[name]:.3f} s/s" for name in seconds)
          + f"; gradio / app per round: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {statistics.median(ratios):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(run_script(main))
