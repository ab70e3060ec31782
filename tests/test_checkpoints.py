"""Loading released and own files: formats, shape inference, refusal of pickled code, named errors."""

import argparse
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from edt_lab.checkpoints import load_checkpoint, model_config
from edt_lab.cli import main
from edt_lab.models import DiT, EDT, create_model
from edt_lab.pipeline import EDTPipeline, load_default

SMALL_EDT = dict(dims=(24, 32, 40, 32, 24), num_heads=(2, 1, 2, 1, 2), stages_depth=(1, 2, 1, 2, 1),
                 input_size=16, in_channels=4, num_classes=7)


def randomised(model):
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    return model


def assert_same_weights(a, b):
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_released_training_file_gives_ema_weights(tmp_path):
    model, ema = randomised(create_model("EDT-T/2", **SMALL_EDT)), create_model("EDT-T/2", **SMALL_EDT)
    path = tmp_path / "0400000.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": {},
                "args": argparse.Namespace(model="EDT-S/2", image_size=256)}, path)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, EDT) and not loaded.training
    assert loaded.config.dims == [24, 32, 40, 32, 24] and loaded.config.stages_depth == [1, 2, 1, 2, 1]
    assert loaded.config.num_heads == [2, 1, 2, 1, 2] and loaded.config.num_classes == 7
    assert_same_weights(ema, loaded)


def test_compat_state_dict_architecture_is_inferred(tmp_path, compat_case):
    path = tmp_path / "compat.pt"
    torch.save(compat_case["state_dict"], path)
    model = load_checkpoint(path)
    cfg = compat_case["config"]
    assert list(model.config.dims) == cfg["dims"] and list(model.config.num_heads) == cfg["num_heads"]
    with torch.no_grad():
        torch.testing.assert_close(model(compat_case["x"], compat_case["t"], compat_case["y"]),
                                   compat_case["out_no_amm"], atol=1e-5, rtol=0)


def test_dit_bare_state_dict_and_safetensors(tmp_path):
    model = randomised(create_model("DiT-T/2"))
    torch.save(model.state_dict(), tmp_path / "dit.pt")
    save_file(model.state_dict(), tmp_path / "dit.safetensors")
    for name in ("dit.pt", "dit.safetensors"):
        loaded = load_checkpoint(tmp_path / name)
        assert isinstance(loaded, DiT) and loaded.config.num_heads == 3 and loaded.config.in_channels == 1
        assert_same_weights(model, loaded)


def test_own_training_checkpoint_and_folders(tmp_path):
    model = randomised(create_model("EDT-T/2"))
    torch.save({"model": model.state_dict(), "ema": model.state_dict(), "config": model_config(model),
                "args": argparse.Namespace(model="EDT-T/2")}, tmp_path / "step.pt")
    assert_same_weights(model, load_checkpoint(tmp_path / "step.pt"))
    model.save_pretrained(tmp_path / "folder")
    assert_same_weights(model, load_checkpoint(tmp_path / "folder"))


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = RunsCode()
    payload.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": payload}, f)
    torch.save({"ema": {"w": torch.zeros(1)}, "hook": payload}, tmp_path / "evil_zip.pt")
    for file in (path, tmp_path / "evil_zip.pt"):
        with pytest.raises(ValueError, match="refused to load, not a plain weights file") as error:
            load_checkpoint(file)
        assert "weights_only" not in str(error.value)  # torch's advice to run the pickled code is not repeated
    assert "posix.system" in str(error.value)  # what was refused
    assert not marker.exists()


def test_wrong_keys_name_the_file_and_the_keys(tmp_path):
    state = create_model("EDT-T/2").state_dict()
    state.pop("blocks.3.mlp.fc1.bias")
    state["blocks.3.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save({"ema": state}, path)
    with pytest.raises(ValueError, match=r"broken.pt: does not fit EDT: missing keys \['blocks.3.mlp.fc1.bias'\]; "
                                         r"unexpected keys \['blocks.3.extra'\]"):
        load_checkpoint(path)


def test_unreadable_or_missing_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))  # a PNG given as a checkpoint
    for name in ("junk.pt", "empty.pt", "image.pt"):
        with pytest.raises(ValueError, match=f"{name}: not a PyTorch checkpoint") as error:
            load_checkpoint(tmp_path / name)
        assert "weights_only" not in str(error.value)
    with pytest.raises(ValueError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "cut.safetensors").write_bytes(bytes(range(100)))
    with pytest.raises(ValueError, match="cut.safetensors: not a readable .safetensors file \\(Error while"):
        load_checkpoint(tmp_path / "cut.safetensors")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an EDT, DiT or MDTv2 state dict"):
        load_checkpoint(tmp_path / "other.pt")
    # A model folder whose config.json is not a JSON object names the file, not json's position alone.
    for text, message in (("{'a': 1", r"config.json: not valid JSON \(Expecting property name"),
                          ("[1, 2]", r"config.json: expected a JSON object \(\{...\}\), got a list")):
        (tmp_path / "folder").mkdir(exist_ok=True)
        (tmp_path / "folder" / "config.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            load_checkpoint(tmp_path / "folder")
        (tmp_path / "folder" / "model_index.json").write_text(text)
        with pytest.raises(ValueError, match=message.replace("config", "model_index")):
            EDTPipeline.from_pretrained(tmp_path / "folder")
        (tmp_path / "folder" / "model_index.json").unlink()


def test_a_device_this_machine_lacks_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tiny = tmp_path / "absent.pt"  # not read: the device is checked first
    for load in (load_checkpoint, EDTPipeline.from_pretrained):
        with pytest.raises(ValueError, match="^device cuda: no CUDA device is available$"):
            load(tiny, "cuda")
        with pytest.raises(ValueError, match="^device 'gpu': expected 'cpu', 'cuda' or 'cuda:N'$"):
            load(tiny, "gpu")
    with pytest.raises(ValueError, match="^device cuda: no CUDA device is available$"):
        load_default("cuda")


def test_training_run_folder_is_named_with_what_to_pass_instead(tmp_path, capsys):
    run = tmp_path / "run"  # as `edt-lab train` leaves it: config.json holds the run's arguments, not a model's
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "EDT-T/2", "data": "mnist", "max_steps": 1}))
    torch.save({"ema": create_model("EDT-T/2").state_dict()}, run / "checkpoints" / "step_0000001.pt")
    expected = (f"{run}: a training run folder, not a model: pass one of its checkpoints "
                f"({run}/checkpoints/step_*.pt), or write it as a pipeline folder first with `edt-lab export {run} "
                f"OUT_DIR`")
    for argv in (["sample", "--ckpt", str(run), "--out", str(tmp_path / "x.npz")], ["flops", str(run)]):
        assert main(argv) == 2, argv
        assert capsys.readouterr().err.splitlines() == [f"edt-lab {argv[0]}: error: {expected}"]
