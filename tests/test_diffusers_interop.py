"""diffusers interoperability: DiTTransformer2DModel folders <-> DiT exactly, the AMM as a diffusers attention
processor, DiTPipeline folders in the pipeline, CLI and explorer, and edt-lab pipeline folders in diffusers' loader."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from edt_lab.amm import apply_amm
from edt_lab.checkpoints import load_checkpoint
from edt_lab.cli import main
from edt_lab.diffusers_dit import dit_config, set_amm_processors
from edt_lab.explorer import ModelStore, compare, controls, views
from edt_lab.flops import count_macs
from edt_lab.models import DiT
from edt_lab.pipeline import DEFAULT_MODEL_DIR, LOADER_MODULES, EDTPipeline
from test_pipeline import tiny_edt, tiny_vae
from test_train import assert_weights_readable

# A norm_eps far from DiT's 1e-6, so that a conversion that dropped it would show.
TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3, sample_size=8,
            patch_size=2, num_embeds_ada_norm=10, norm_eps=1e-3)


def tiny_diffusers_dit(**changes):
    """A random DiTTransformer2DModel; as in converted DiT files, every block's embedder copy equals block 0's."""
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**{**TINY, **changes}).eval()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    return model


def inputs(num_classes: int = 10):
    """Latents, timesteps from both ends of the schedule, and labels with the null label."""
    torch.manual_seed(1)
    return torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, 7, num_classes])


def assert_same_outputs(diffusers_model, model, atol=1e-6):
    x, t, y = inputs(model.config.num_classes)
    with torch.no_grad():
        np.testing.assert_allclose(diffusers_model(x, t, y).sample.numpy(), model(x, t, y).numpy(), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusers_dit")
    tiny_diffusers_dit().save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------
# diffusers -> DiT
# ----------------------------------------------------------------------------------------------------------

def test_diffusers_folder_loads_as_a_dit_with_the_same_outputs(diffusers_folder):
    model = load_checkpoint(diffusers_folder)
    assert isinstance(model, DiT) and not model.training
    assert (model.config.depth, model.config.hidden_size, model.config.num_heads, model.config.learn_sigma) == \
        (3, 16, 2, True)
    assert (model.config.timestep_freq_shift, model.config.mlp_norm_eps) == (1, 1e-3)
    assert_same_outputs(tiny_diffusers_dit(), model)


def test_legacy_transformer2d_config_without_norm_eps_uses_diffusers_default(tmp_path):
    """Older DiT folders (e.g. DiT-XL-2-256) name the class Transformer2DModel and leave norm_eps at 1e-5."""
    diffusers_model = tiny_diffusers_dit(norm_eps=1e-5, out_channels=None)
    diffusers_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["norm_eps"]
    config.update(_class_name="Transformer2DModel", cross_attention_dim=None, num_vector_embeds=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_checkpoint(tmp_path)
    assert model.config.mlp_norm_eps == 1e-5 and not model.config.learn_sigma
    assert_same_outputs(diffusers_model, model)


def test_disagreeing_embedder_copies_are_refused(tmp_path):
    model = tiny_diffusers_dit()
    with torch.no_grad():  # one copy drifted, as in training with separate copies
        model.transformer_blocks[2].norm1.emb.timestep_embedder.linear_2.bias[0] += 0.25
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"block 2's copy of the timestep/class embedder \(timestep_embedder"
                                         r".linear_2.bias\) differs from block 0's by up to 0.25: "
                                         r".*cannot be converted"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("change, words", [
    ({"norm_type": "ada_norm"}, "norm_type is 'ada_norm', DiT needs 'ada_norm_zero'"),
    ({"activation_fn": "geglu"}, "activation_fn is 'geglu'"),
    ({"cross_attention_dim": 32}, "cross_attention_dim is 32"),
    ({"num_embeds_ada_norm": None}, "num_embeds_ada_norm"),
    ({"out_channels": 5}, "out_channels 5 is neither"),
])
def test_configs_dit_cannot_hold_are_clear_errors(change, words):
    with pytest.raises(ValueError, match=words):
        dit_config({**TINY, **change})


def test_load_errors_name_the_problem(tmp_path, diffusers_folder):
    (tmp_path / "config.json").write_text((diffusers_folder / "config.json").read_text())
    with pytest.raises(ValueError, match="no diffusion_pytorch_model.safetensors or .bin"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="unknown model class 'UNet2DModel'.*DiTTransformer2DModel"):
        load_checkpoint(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# DiT -> diffusers
# ----------------------------------------------------------------------------------------------------------

def test_export_diffusers_writes_a_folder_diffusers_loads_with_the_same_outputs(diffusers_folder, tmp_path):
    model = load_checkpoint(diffusers_folder)
    with torch.no_grad():  # other weights than the source's, so the test sees the export and not the source
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "edt_lab_dit")
    assert main(["export-diffusers", str(tmp_path / "edt_lab_dit"), str(tmp_path / "out")]) == 0
    assert_weights_readable(tmp_path / "out")
    assert_same_outputs(DiTTransformer2DModel.from_pretrained(tmp_path / "out").eval(), model)


def test_export_diffusers_refuses_what_diffusers_would_compute_differently(tmp_path, capsys):
    dit = DiT(input_size=8, in_channels=4, hidden_size=16, depth=2, num_heads=2, num_classes=10)  # DiT's timesteps
    dit.save_pretrained(tmp_path / "dit")
    tiny_edt().save_pretrained(tmp_path / "edt")
    assert main(["export-diffusers", str(tmp_path / "dit"), str(tmp_path / "out")]) == 2
    assert "1/10000^(i/128)" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["export-diffusers", str(tmp_path / "edt"), str(tmp_path / "out")]) == 2
    assert "only a DiT has a diffusers equivalent" in capsys.readouterr().err
    assert main(["export-diffusers", str(tmp_path / "dit"), str(tmp_path / "out"), "--allow-timestep-change"]) == 0
    assert DiTTransformer2DModel.from_pretrained(tmp_path / "out").config.num_layers == 2


def test_export_commands_overwrite_nothing_and_refuse_a_file_as_out_dir(diffusers_folder, tmp_path, capsys):
    taken = tmp_path / "taken"  # a model folder already there: export-diffusers, as export, needs --force
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    (tmp_path / "afile.txt").write_text("mine")
    cases = [
        (["export-diffusers", str(diffusers_folder), str(taken)], f"{taken} already holds files: pass --force"),
        (["export-diffusers", str(diffusers_folder), str(tmp_path / "afile.txt")], "afile.txt: exists and is not a"),
        (["export-diffusers", str(diffusers_folder), str(tmp_path / "afile.txt" / "x")],
         f"cannot create the folder {tmp_path / 'afile.txt' / 'x'}, {tmp_path / 'afile.txt'} is a file"),
        # The out_dir is checked before the run is read, so no run is needed to see it refused.
        (["export", str(tmp_path / "run"), str(tmp_path / "afile.txt" / "sub")],
         f"cannot create the folder {tmp_path / 'afile.txt' / 'sub'}, {tmp_path / 'afile.txt'} is a file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith(f"edt-lab {argv[0]}: error: "), err
    assert [p.name for p in taken.iterdir()] == ["config.json"] and (taken / "config.json").read_text() == "{}"
    assert (tmp_path / "afile.txt").read_text() == "mine"
    assert main(["export-diffusers", str(diffusers_folder), str(taken), "--force"]) == 0
    assert DiTTransformer2DModel.from_pretrained(taken).config.num_layers == TINY["num_layers"]


# ----------------------------------------------------------------------------------------------------------
# The AMM as a diffusers attention processor
# ----------------------------------------------------------------------------------------------------------

def test_amm_processor_equals_set_amm_on_the_converted_model(diffusers_folder):
    diffusers_model, model = tiny_diffusers_dit(), load_checkpoint(diffusers_folder)
    x, t, y = inputs()
    with torch.no_grad():
        plain = diffusers_model(x, t, y).sample
    set_amm_processors(diffusers_model, [0, 2], radius=2.5, scale=0.7)
    model.set_amm([0, 2], radius=2.5, scale=0.7)
    assert_same_outputs(diffusers_model, model)
    with torch.no_grad():
        assert (diffusers_model(x, t, y).sample - plain).abs().max() > 1e-2  # the AMM changes the output
    set_amm_processors(diffusers_model, [])
    with torch.no_grad():
        torch.testing.assert_close(diffusers_model(x, t, y).sample, plain)

    diffusers_model.train()  # as set_amm: a training forward is plain attention
    outputs = []
    for blocks in ([], [0, 2]):
        set_amm_processors(diffusers_model, blocks)
        torch.manual_seed(2)  # the same label dropout in both forwards
        outputs.append(diffusers_model(x, t, y).sample.detach())
    torch.testing.assert_close(outputs[0], outputs[1])


def test_amm_processor_bad_input():
    with pytest.raises(ValueError, match="AMM block index 3 is out of range: expected 0..2"):
        set_amm_processors(tiny_diffusers_dit(), [1, 3])
    with pytest.raises(ValueError, match="expected a DiT-style diffusers transformer"):
        set_amm_processors(tiny_vae(), [0])


# ----------------------------------------------------------------------------------------------------------
# diffusers' DiTPipeline folders in the pipeline, the CLI and the explorer
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A DiTPipeline.save_pretrained folder (1000 classes, a VAE, DDIM) inside a models folder."""
    folder = tmp_path_factory.mktemp("models")
    dit = tiny_diffusers_dit(num_embeds_ada_norm=1000)
    DiTPipeline(dit, tiny_vae(), DDIMScheduler()).save_pretrained(folder / "dit-pipeline")
    return folder


def test_dit_pipeline_folder_samples_as_diffusers_does_with_and_without_amm(models_dir):
    folder = models_dir / "dit-pipeline"
    theirs = DiTPipeline.from_pretrained(folder)
    ours = EDTPipeline.from_pretrained(folder)
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    assert isinstance(ours.transformer, DiT) and isinstance(ours.scheduler, DDIMScheduler)
    for amm_blocks in ([], [1]):
        set_amm_processors(theirs.transformer, amm_blocks)
        expected = theirs([3, 999], guidance_scale=4.0, num_inference_steps=3, output_type="np",
                          generator=torch.Generator().manual_seed(0)).images
        apply_amm(ours.transformer, amm_blocks)
        images = ours([3, 999], guidance_scale=4.0, num_inference_steps=3, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        np.testing.assert_allclose(images, expected, atol=1e-5)


def test_dit_pipeline_folder_in_sample_flops_and_the_explorer(models_dir, tmp_path, capsys):
    folder = models_dir / "dit-pipeline"
    assert main(["sample", "--ckpt", str(folder), "--classes", "1,2", "--steps", "2", "--sampler", "ddim",
                 "--amm", "1", "--device", "cpu", "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["flops", str(folder)]) == 0
    gflops = count_macs(load_checkpoint(folder)).gflops
    assert f"{gflops:.3f} GFLOPs" in capsys.readouterr().out
    assert main(["flops", "no-such-model"]) == 2

    store = ModelStore(models_dir, demo=True)
    assert "dit-pipeline" in store.names() and not store.problems()
    pipe = store.get("dit-pipeline").pipe
    assert isinstance(pipe.transformer, DiT) and pipe.vae is not None
    assert controls.class_choices(pipe)[:2] == ["tench", "goldfish"]  # the folder has no names: ImageNet's
    request = controls.check_request(pipe, "goldfish", 0, 1, "ddim", 2, 1.0, "1", True, 2.0, 0.5)
    off, on = compare(pipe, request)
    assert off.images.shape == (1, 64, 64, 3) and np.abs(off.images - on.images).max() > 0
    assert on.attention[1]["modulated"] is not None and "GFLOPs" in views.cost_markdown(pipe.transformer)


# ----------------------------------------------------------------------------------------------------------
# edt-lab pipeline folders in diffusers' own loader
# ----------------------------------------------------------------------------------------------------------

LOAD_WITH_DIFFUSERS = """
import sys
import numpy as np
import torch
from diffusers import DiffusionPipeline
for folder, out in zip(sys.argv[1::2], sys.argv[2::2]):
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    print(type(pipe).__name__, type(pipe.transformer).__name__, pipe.id2label[3])
    images = pipe([3, 5], num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    np.save(out, images)
"""


@pytest.mark.slow
def test_edt_lab_pipeline_folders_load_with_diffusion_pipeline(tmp_path):
    pipe = EDTPipeline(tiny_edt(in_channels=1), DDIMScheduler(), None, {i: str(i) for i in range(10)})
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "EDTPipeline"] and index["transformer"] == ["edt_lab_models", "EDT"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [str(tmp_path / "pipe"), str(tmp_path / "pipe.npy"), str(DEFAULT_MODEL_DIR), str(tmp_path / "default.npy")]
    result = subprocess.run([sys.executable, "-c", LOAD_WITH_DIFFUSERS, *args], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["EDTPipeline EDT 3"] * 2
    for folder, out in ((tmp_path / "pipe", "pipe.npy"), (DEFAULT_MODEL_DIR, "default.npy")):
        expected = EDTPipeline.from_pretrained(folder)([3, 5], num_inference_steps=2, output_type="np",
                                                       generator=torch.Generator().manual_seed(0)).images
        np.testing.assert_allclose(np.load(tmp_path / out), expected, atol=1e-6)


def test_the_shipped_folder_holds_what_save_pretrained_writes():
    """So a re-export (edt-lab export) reproduces the shipped folder's loader files and index entries."""
    for name, text in LOADER_MODULES.items():
        assert (DEFAULT_MODEL_DIR / name).read_text() == text
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "EDTPipeline"] and index["transformer"] == ["edt_lab_models", "EDT"]
