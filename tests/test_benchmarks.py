"""The benchmark scripts run and report in the documented layout (tiny models, one round: no timing asserted)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import throughput  # noqa: E402


def test_throughput_reports_every_model(tmp_path, capsys):
    out = tmp_path / "bench.json"
    throughput.main(["--models", "EDT-T/2", "DiT-T/2", "--batch-size", "2", "--repeats", "1", "--steps", "1",
                     "--train-steps", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report) == {"results", "machine"}
    edt, dit = report["results"]
    assert edt["model"] == "EDT-T/2" and dit["model"] == "DiT-T/2"
    for key in ("inference_steps_per_s", "train_iters_per_s", "train_iters_per_s_no_mask"):
        assert edt[key] > 0
    assert dit["inference_steps_per_s"] > 0 and dit["train_iters_per_s"] > 0
    assert "EDT-T/2 / DiT-T/2: inference" in capsys.readouterr().out
