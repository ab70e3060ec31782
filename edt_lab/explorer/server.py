"""The explorer's server: the page built over a model store, its queue, and `serve` (what `edt-lab app` and
`python app.py` run; edt_lab/commands/app.py parses their options).

API: /generate and /compare, every input with a default and named as the sampling settings (edt_lab/settings.py),
e.g. gradio_client.Client(url).predict(num_inference_steps=10, api_name="/compare").
"""

import gradio as gr
import torch

from ..addresses import check_serve_options
from ..devices import process_device
from .events import wire
from .layout import PAGE_CSS, build_page
from .model_folders import ModelStore


def build_app(store: ModelStore) -> gr.Blocks:
    """The page over the models of `store`, every event wired; the default model's settings are the inputs' (and
    the API's) defaults."""
    with gr.Blocks(title="EDT explorer", analytics_enabled=False) as demo:
        wire(demo, store, build_page(store))
    return demo


# Gradio's queue checks for new requests every 1 ms and for progress every 10 ms, even while a request is running.
# The sampling thread shares the GIL and, on a small CPU, the cores with that loop, which slows sampling
# (docs/performance.md). Polling every 20 ms delays a request's start by at most that, and progress still updates
# 20 times a second.
QUEUE_POLL_S = {"sleep_when_free": 0.02, "progress_update_sleep_when_free": 0.05}


def set_queue_polling(demo: gr.Blocks, intervals: dict) -> None:
    """Set the polling intervals (seconds, by QUEUE_POLL_S's names) of `demo`'s queue, after demo.queue().

    They are attributes of gradio's Queue, not options of queue(); a gradio without them is an error here (and in
    the tests), rather than a silent return to 1 ms polling."""
    for name, seconds in intervals.items():
        if not hasattr(demo._queue, name):
            raise RuntimeError(f"gradio {gr.__version__}'s queue has no {name}: update QUEUE_POLL_S")
        setattr(demo._queue, name, seconds)


def queue_requests(demo: gr.Blocks) -> None:
    """One request at a time (the model is shared), at most 32 waiting, the queue polling every QUEUE_POLL_S."""
    demo.queue(default_concurrency_limit=1, max_size=32)
    set_queue_polling(demo, QUEUE_POLL_S)


def serve(host: str = "127.0.0.1", port: int = 7860, models_dir=None, device: str = "auto", share: bool = False,
          threads: int | None = None, demo: bool = False) -> None:
    """Serve the page until interrupted, on host:port, over the default model and those of `models_dir`, on
    `device` ("auto", "cpu" or "cuda") with `threads` CPU threads for torch (None: torch's choice); `demo` serves
    the untrained demo model as the default. ValueError for values no server can use, before any model loads."""
    check_serve_options(host, port, threads)
    if threads:
        torch.set_num_threads(threads)
    app = build_app(ModelStore(models_dir, process_device(device), demo=demo))
    queue_requests(app)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # local fonts only: the page works offline
    try:
        app.launch(server_name=host, server_port=port, share=share, theme=theme, css=PAGE_CSS)
    except OSError:  # taken since check_serve_options; gradio reports every failed bind as "Cannot find empty port"
        raise ValueError(f"cannot serve on {host}:{port}: the port is in use, or the address is not one of this "
                         f"machine's") from None
