"""Precision: bf16 only where the hardware computes it natively, "auto" picks it there, and autocast in between;
every entry point refuses bf16 elsewhere through the one check, `resolve_precision`, in one line."""

import re
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from edt_lab import cli
from edt_lab.explorer import controls, events
from edt_lab.explorer.layout import IMAGES_TAB
from edt_lab.explorer.model_folders import DEFAULT_NAME, ModelStore
from edt_lab.models import create_model
from edt_lab.pipeline import EDTPipeline, make_scheduler
from edt_lab.precision import autocast, resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402
import settings_sweep  # noqa: E402
import throughput  # noqa: E402

REFUSAL = r"precision bf16: this CPU \(.*\) lacks native bf16 \(.*\) \(EDT_LAB_FORCE_NO_NATIVE is set\): use fp32 or auto"
DIGITS = str(Path(__file__).resolve().parents[1] / "assets" / "edt_t2_digits")


def test_resolve_precision_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: feature == "bf16")
    assert resolve_precision("bf16", "cpu") == resolve_precision("auto", "cpu") == torch.bfloat16
    assert resolve_precision("fp32", "cpu") == torch.float32
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: False)
    assert resolve_precision("auto", "cpu") == resolve_precision("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError, match=r"^precision bf16: this CPU \(.*\) lacks native bf16 .*: use fp32 or auto$"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="unknown precision 'fp16': expected one of fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")


def test_autocast_runs_matrix_products_in_bf16_and_fp32_changes_nothing():
    linear = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with autocast("cpu", torch.bfloat16):
        assert linear(x).dtype == torch.bfloat16
    with autocast("cpu", torch.float32):
        assert linear(x).dtype == torch.float32 and torch.equal(linear(x), linear(x))


def script(main):
    """A benchmark's `main(argv)` run as its command line runs it: `sys.exit(run_script(main))`."""
    return lambda argv: cli.run_script(lambda: main(argv))


# Every command line that takes a precision, asked for bf16 (tmp is the test's folder), and the first heavy work it
# must refuse before: loading the model, reading the samples, building the model, sampling, measuring.
ENTRY_POINTS = {
    "sample": (cli.main, ["sample", "--model", "default", "--precision", "bf16", "--out", "{tmp}/a.png"],
               "edt_lab.generation.load_pipeline"),
    "eval": (cli.main, ["eval", "{tmp}/digits.npz", "--precision", "bf16"], "edt_lab.metrics.evaluate.read_npz"),
    "train": (cli.main, ["train", "--mixed-precision", "bf16", "--results-dir", "{tmp}/run", "--max-steps", "1"],
              "edt_lab.training.loop.create_model"),
    "throughput": (script(throughput.main), ["--models", "EDT-T/2", "--precision", "fp32", "bf16"],
                   "throughput.build_inference_model"),
    "settings_sweep": (script(settings_sweep.main), [DIGITS, "--precisions", "fp32", "bf16"], "settings_sweep.draw"),
    "gpu_check": (script(gpu_check.main), ["--json", "{tmp}/gpu.json", "--device", "cpu", "--sections", "fp32",
                                           "bf16"], "gpu_check.run_section"),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_command_line_refuses_bf16_in_one_line_where_the_hardware_lacks_it(entry, tmp_path, monkeypatch,
                                                                               capsys):
    def work(*args, **kwargs):
        raise AssertionError(f"{entry}: work started before bf16 was refused")

    monkeypatch.setenv("EDT_LAB_FORCE_NO_NATIVE", "1")
    np.savez(tmp_path / "digits.npz", np.zeros((4, 32, 32, 1), np.uint8), np.arange(4))
    main, argv, heavy = ENTRY_POINTS[entry]
    monkeypatch.setattr(heavy, work)
    try:
        code = main([arg.format(tmp=tmp_path) for arg in argv])
    except SystemExit as stop:  # argparse's parser.error
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(f": error: (--[a-z-]+( bf16)?: )?{REFUSAL}$", err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.npz"]  # nothing written


def test_the_pipeline_and_the_app_refuse_bf16_in_one_line(monkeypatch):
    monkeypatch.setenv("EDT_LAB_FORCE_NO_NATIVE", "1")
    pipe = EDTPipeline(create_model("EDT-T/2", dims=(16, 24, 32, 24, 16), num_heads=(1, 1, 1, 1, 1)),
                       make_scheduler("ddim"), None, {i: str(i) for i in range(10)})
    with pytest.raises(ValueError, match=f"^{REFUSAL}$"):
        pipe([1], num_inference_steps=2, precision="bf16")
    with pytest.raises(ValueError, match=f"^{REFUSAL}$"):
        controls.check_request(pipe, "3", 0, 1, "ddim", 2, 1.0, "7, 10", True, 15.0, 0.5, precision="bf16")
    # The app: its page's precision control (the status line) and its API (/generate's error).
    values = [DEFAULT_NAME, "3", 0, 1, "ddim", 2, 1.0, "10", True, 15.0, 0.5, "bf16", "all"]
    store = ModelStore(demo=True)
    assert re.fullmatch(re.escape(events.REFUSED) + REFUSAL, events.generate(store, values, view=IMAGES_TAB)[1])
    with pytest.raises(gr.Error) as error:
        events.generate(store, values, view=None)
    assert re.fullmatch(REFUSAL, error.value.message)
