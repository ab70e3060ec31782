"""The running web explorer through its API (gradio_client): defaults, AMM off vs on, bad requests, models folder."""

import os
import runpy
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client
from PIL import Image

from edt_lab.addresses import check_address
from edt_lab.cli import main
from edt_lab.explorer.model_folders import demo_pipeline

ROOT = Path(__file__).resolve().parents[1]
APP_PY = (sys.executable, "app.py")
EDT_LAB_APP = (sys.executable, "-m", "edt_lab.cli", "app")
sys.path.insert(0, str(ROOT / "benchmarks"))

from app_latency import app_server as start_app  # noqa: E402


@contextmanager
def app_server(models_dir, command=APP_PY, timeout: float = 90.0):
    """`command` (app.py or `edt-lab app`) serving the demo model and `models_dir` on a free local port; yields
    its URL and is always stopped.

    One torch thread: the tiny demo model is fastest that way, and the test does not fight pytest for the cores.
    """
    args = ["--models-dir", str(models_dir), "--device", "cpu", "--threads", "1", "--demo"]
    with start_app(args, timeout, command) as (url, _):
        yield url


def make_models_dir(folder: Path) -> Path:
    """A models folder with one pipeline folder and one broken file."""
    demo_pipeline(seed=1).save_pretrained(folder / "tiny-pipeline")
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    return folder


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The API of `edt-lab app` (the browser test drives `python app.py`: both entries serve the same page)."""
    with app_server(make_models_dir(tmp_path_factory.mktemp("models")), EDT_LAB_APP) as url:
        yield Client(url, verbose=False)


def pixels(gallery) -> np.ndarray:
    """The images of a Gallery output as one (B, H, W, 3) array."""
    return np.stack([np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery])


@pytest.mark.slow
def test_compare_with_defaults_gives_different_off_and_on_images(client):
    off, on, difference, status = client.predict(api_name="/compare")  # the views' previews stay in the page
    off, on = pixels(off), pixels(on)
    assert off.shape == on.shape and off.shape[0] == 4  # four images by default
    assert (off != on).any()  # AMM changes the images of the same noise
    assert Image.open(difference).size[0] > 0
    assert "AMM off" in status and "untrained demo model" in status


@pytest.mark.slow
def test_generate_with_defaults(client):
    samples, status = client.predict(api_name="/generate")
    assert pixels(samples).shape[0] == 4 and "4 images" in status


@pytest.mark.slow
def test_bad_requests_show_errors_and_the_server_keeps_serving(client):
    for bad in (dict(class_name="banana"), dict(num_inference_steps=10000), dict(model="broken.pt"),
                dict(model="/etc/passwd"), dict(amm_blocks="99"), dict(guidance_interval="900-100")):
        with pytest.raises(Exception) as error:
            client.predict(api_name="/generate", **bad)
        assert type(error.value).__name__ == "AppError"
    with pytest.raises(Exception, match="unknown class 'banana'"):
        client.predict(class_name="banana", num_images=1, api_name="/compare")
    # values the page's fields cannot send, and numbers out of range: the request check's one-line messages
    for bad, message in ((dict(num_images="abc"), "number of images must be a number, got 'abc'"),
                         (dict(num_inference_steps=None), "steps is empty: enter a number"),
                         (dict(num_inference_steps=0), "steps must lie in 1..250, got 0"),
                         (dict(released_radius=False, amm_radius="x"), "AMM radius R must be a number, got 'x'"),
                         (dict(class_name="\u00b2"), "unknown class"),  # a digit to str.isdigit, not to int()
                         (dict(guidance_interval="1-\u00b2"), "guided timesteps must be all, or LOW-HIGH"),
                         (dict(seed=-1), r"seed must lie in 0..2147483647, got -1"),
                         (dict(released_radius=False, amm_radius=0), r"AMM radius R must lie in 1.0..22.0, got 0")):
        with pytest.raises(Exception, match=message):
            client.predict(api_name="/generate", **bad)
    samples, _ = client.predict(num_images=2, num_inference_steps=3, api_name="/generate")
    assert pixels(samples).shape[0] == 2


@pytest.mark.slow
def test_guided_timesteps_reach_the_sampler(client):
    every, status = client.predict(num_images=1, num_inference_steps=4, guidance_scale=4.0, api_name="/generate")
    late, late_status = client.predict(num_images=1, num_inference_steps=4, guidance_scale=4.0,
                                       guidance_interval="600-999", api_name="/generate")
    assert "guided at t" not in status and "guided at t 600-999 only" in late_status
    assert (pixels(every) != pixels(late)).any()  # the steps below t = 600 ran unguided


@pytest.mark.slow
def test_models_folder_entries_are_offered_by_name(client):
    samples, status = client.predict(model="tiny-pipeline", num_images=1, num_inference_steps=2, api_name="/generate")
    assert pixels(samples).shape[0] == 1 and "pipeline tiny-pipeline" in status


def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "x" / "nodir"
    monkeypatch.setattr(sys, "argv", ["app.py", "--models-dir", str(missing)])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"app.py: error: models folder {missing} does not exist or is not a folder\n"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    threads = f"--threads must lie in 1..{os.cpu_count()} (this machine's CPUs), got"
    for option, message in ((["--threads", "0"], f"{threads} 0"), (["--threads", "100000"], f"{threads} 100000"),
                            (["--port", "99999"], "--port must lie in 0..65535, got 99999"),
                            (["--device", "cuda"], "--device cuda: no CUDA device is available")):
        assert main(["app", *option]) == 2
        assert capsys.readouterr().err == f"edt-lab app: error: {message}\n"
    monkeypatch.setattr(sys, "argv", ["app.py", "--bogus"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
    assert exit_.value.code == 2 and capsys.readouterr().err == "app.py: error: unrecognized arguments: --bogus\n"


def test_a_busy_port_is_one_line_and_exit_2(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--port", str(port), "--demo", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == f"edt-lab app: error: cannot serve on 127.0.0.1:{port}: the port is in use\n"


def test_a_port_just_freed_by_a_stopped_server_is_not_busy():
    with socket.socket() as listener:  # a server that served one connection and stopped
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            served, _ = listener.accept()
            served.close()  # the server's side closes first: its port stays in TIME_WAIT for a while
    check_address("127.0.0.1", port)  # uvicorn can bind it (SO_REUSEADDR), so the app does not refuse it


@pytest.mark.parametrize("host, message", [
    ("999.1.1.1", "cannot serve on 999.1.1.1:0: not an address of this machine"),
    ("192.0.2.1", "cannot serve on 192.0.2.1:0: not an address of this machine"),  # TEST-NET-1, never local
    ("::1", "--host ::1: IPv6 addresses are not supported"),
])
def test_an_address_the_app_cannot_serve_on_is_one_line_before_loading(host, message, capsys, monkeypatch):
    monkeypatch.setattr("edt_lab.explorer.server.ModelStore", None)  # the check comes before any model loads
    assert main(["app", "--host", host, "--port", "0", "--demo", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edt-lab app: error: {message}") and err.count("\n") == 1
