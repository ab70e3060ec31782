"""The running web explorer through its API (gradio_client): defaults, AMM off vs on, bad requests, models folder."""

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from edt_lab.explorer.models import demo_pipeline

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from app_latency import app_server as start_app  # noqa: E402


@contextmanager
def app_server(models_dir, timeout: float = 90.0):
    """`python app.py` on a free local port with the demo model and `models_dir`; yields its URL, always stopped.

    One torch thread: the tiny demo model is fastest that way, and the test does not fight pytest for the cores.
    """
    args = ["--models-dir", str(models_dir), "--device", "cpu", "--threads", "1", "--demo"]
    with start_app(args, timeout) as (url, _):
        yield url


def make_models_dir(folder: Path) -> Path:
    """A models folder with one pipeline folder and one broken file."""
    demo_pipeline(seed=1).save_pretrained(folder / "tiny-pipeline")
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    return folder


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with app_server(make_models_dir(tmp_path_factory.mktemp("models"))) as url:
        yield Client(url, verbose=False)


def pixels(gallery) -> np.ndarray:
    """The images of a Gallery output as one (B, H, W, 3) array."""
    return np.stack([np.asarray(Image.open(item["image"]).convert("RGB")) for item in gallery])


def test_compare_with_defaults_gives_different_off_and_on_images(client):
    off, on, difference, previews, status = client.predict(api_name="/compare")
    off, on = pixels(off), pixels(on)
    assert off.shape == on.shape and off.shape[0] == 4  # four images by default
    assert (off != on).any()  # AMM changes the images of the same noise
    assert Image.open(difference).size[0] > 0 and previews
    assert "AMM off" in status and "untrained demo model" in status


def test_generate_with_defaults(client):
    samples, previews, status = client.predict(api_name="/generate")
    assert pixels(samples).shape[0] == 4 and "4 images" in status


def test_bad_requests_show_errors_and_the_server_keeps_serving(client):
    for bad in (dict(class_name="banana"), dict(steps=10000), dict(model="broken.pt"), dict(model="/etc/passwd"),
                dict(amm_blocks="99")):
        with pytest.raises(Exception) as error:
            client.predict(api_name="/generate", **bad)
        assert type(error.value).__name__ == "AppError"
    with pytest.raises(Exception, match="unknown class 'banana'"):
        client.predict(class_name="banana", num_images=1, api_name="/compare")
    samples, _, _ = client.predict(num_images=2, steps=3, api_name="/generate")
    assert pixels(samples).shape[0] == 2


def test_models_folder_entries_are_offered_by_name(client):
    samples, _, status = client.predict(model="tiny-pipeline", num_images=1, steps=2, api_name="/generate")
    assert pixels(samples).shape[0] == 1 and "pipeline tiny-pipeline" in status
