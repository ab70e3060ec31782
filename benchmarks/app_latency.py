"""Time to first image in the web explorer: start `python app.py`, then time `/generate` at its defaults.

    python benchmarks/app_latency.py [--calls 4] [--threads N] [--client-ssl-verify] [--json FILE] \
        [-- app.py options]

The app starts as a user starts it (the shipped digits model, its recommended settings); the start-up time is
until the page answers HTTP. Each `/generate` call goes through `gradio_client` with every input at its default
(4 images of the first class, the model's sampler, steps, guidance and AMM), so it includes the work around the
sampling: the request's checks, the images' encoding and their download by the client. The first call is reported
apart (it warms up the model); the figure is the median of the calls after it. The sampling time of each call
(from the app's status line) is recorded beside it, so what the web layer adds is the difference.

The client runs on the app's machine, so what it computes takes CPU from the app. gradio_client builds a TLS
context for each of its HTTP requests (the call, its event stream, each image's download), loading the
certificate bundle every time, even for a plain http:// URL that never uses it: about 0.3 s of CPU per call on
2 cores. The app is served on http://127.0.0.1, so the client is made with ssl_verify=False, which skips that
loading (no certificate is ever checked on this URL either way); --client-ssl-verify measures gradio_client's
default instead.
"""

import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from edt_lab.cli import OneLineParser, run_script
from edt_lab.files import output_file
from options import at_least

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def app_server(app_args: list[str], timeout: float = 90.0, command=(sys.executable, "app.py")):
    """`command` (`python app.py`, or `edt-lab app`) on a free local port with `app_args`; yields (URL, seconds
    until it answered), always stopped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    # The app's output goes to a file, not a pipe: a pipe nobody reads fills up and stalls a long-running app.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([*command, "--port", str(port), *app_args], cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    output = log.read()
                    if process.returncode == 2 and output.strip():  # the app refused its options in one line
                        raise ValueError(f"the app refused its options ({output.strip().splitlines()[-1]})")
                    raise RuntimeError(f"{command} exited with {process.returncode}:\n{output}")
                try:
                    with urllib.request.urlopen(url, timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command} was not ready within {timeout:.0f} s")
                time.sleep(0.1)
            yield url, time.perf_counter() - start
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def command_line(script: str, argv=None) -> str:
    """How a benchmark was run, for its JSON: "python benchmarks/NAME.py ARGS", with argv as main() got it (None:
    the process's own arguments)."""
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(sys.argv[1:] if argv is None else argv)])


def machine_record() -> dict:
    """Where and when a measurement ran, with the load average: what else the machine was doing."""
    return {"platform": platform.platform(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_1_5_15_min": os.getloadavg()}


def sampling_seconds(status: str) -> float:
    """The sampling time the app's status line reports: "4 images in 0.93 s · ..." (or "1 image in") -> 0.93."""
    match = re.search(r"images? in ([0-9.]+) s", status)
    if match is None:
        raise ValueError(f"no sampling time in the app's status line {status!r}")
    return float(match.group(1))


def main(argv=None) -> dict:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4, help="/generate calls; the first is the warm-up")
    parser.add_argument("--threads", type=at_least(1), default=None,
                        help="the app's --threads (default: torch's choice)")
    parser.add_argument("--client-ssl-verify", action="store_true",
                        help="gradio_client's default TLS setup on every request (see above)")
    parser.add_argument("--json", default=None)
    parser.add_argument("app_args", nargs="*", help="more app.py options, after --")
    args = parser.parse_args(argv)
    if args.calls < 2:
        parser.error("--calls must be at least 2: the first call is the warm-up")
    if args.json:
        output_file(args.json, "--json")
    from gradio_client import Client

    app_args = ["--device", "cpu", *(["--threads", str(args.threads)] if args.threads else []), *args.app_args]
    with app_server(app_args) as (url, startup):
        client = Client(url, verbose=False, ssl_verify=args.client_ssl_verify)
        calls, sampling, client_cpu = [], [], []
        for _ in range(args.calls):
            start, start_cpu = time.perf_counter(), time.process_time()
            _, status = client.predict(api_name="/generate")
            calls.append(time.perf_counter() - start)
            client_cpu.append(time.process_time() - start_cpu)  # this process only: the app is another one
            sampling.append(sampling_seconds(status))
    report = {"command": command_line(__file__, argv), "app_args": app_args,
              "client_ssl_verify": args.client_ssl_verify, "startup_s": startup, "generate_first_s": calls[0],
              "generate_s": calls[1:], "generate_median_s": statistics.median(calls[1:]), "status": status,
              "sampling_s": sampling[1:], "client_cpu_median_s": statistics.median(client_cpu[1:]),
              "outside_sampling_median_s": statistics.median(
                  call - inside for call, inside in zip(calls[1:], sampling[1:])),
              "machine": machine_record()}
    print(f"app answers after {startup:.1f} s; /generate: first {calls[0]:.2f} s, then "
          f"{', '.join(f'{s:.2f}' for s in calls[1:])} s (median {report['generate_median_s']:.2f} s, of which "
          f"{report['outside_sampling_median_s']:.2f} s outside the sampling; the client used "
          f"{report['client_cpu_median_s']:.2f} s of CPU); {status}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(run_script(main))
