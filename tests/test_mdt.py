"""MDTv2 against the released code: key names, parameter counts, numbers, masking, AMM, guidance, files, training.

`data/mdtv2_compat_case.pt` (load with weights_only=True) was made with the released
`other_models/models_mdt_with_amm.py` of the EDT repository (timm's PatchEmbed and Mlp replaced by plain layers with
the same parameter names): a small MDTv2 (input 12x12x4, patch 2, width 16, 2 heads, depth 12 with 4 decoder
blocks, 5 classes, mask ratio 0.3, learned sigma) with random weights. It holds `config`, `state_dict`, inputs
`x`, `t`, `y` (5 = the null label), eval outputs without AMM (`out_no_amm`) and with the released AMM at block 8
(`out_amm`), the released guided call (power-cos schedule, 3 guided channels, scale `cfg_scale`, AMM on:
`out_cfg_amm`) and a masked pass (`enable_mask=True`, eval mode) with the tokens it kept (`masked_keep`,
`out_masked`).
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edt_lab.checkpoints import load_checkpoint, safe_torch_load
from edt_lab.cli import main
from edt_lab.explorer import views
from edt_lab.explorer.model_folders import ModelStore, randomize_weights
from edt_lab.flops import count_macs
from edt_lab.guidance import Guidance, guidance_scales
from edt_lab.masking import draw_masks, mask_grids, mdt_masks
from edt_lab.models import MDTv2, TokenMasks, TokenRemoval, create_model, registry, set_attention_path
from edt_lab.models.layers import sincos_2d
from edt_lab.pipeline import EDTPipeline, make_scheduler

CASE = Path(__file__).parent / "data" / "mdtv2_compat_case.pt"
TINY = dict(hidden_size=16, num_heads=2)  # MDTv2-T/2's 12-block layout (4 in, 4 out, 4 decoder) at a tiny width


@pytest.fixture(scope="module")
def case():
    return torch.load(CASE, weights_only=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mdt(seed=0, **overrides):
    torch.manual_seed(seed)
    return randomize_weights(create_model("MDTv2-T/2", **{**TINY, **overrides}), seed)  # eval mode


def digits_inputs(batch=2):
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 1, 32, 32, generator=generator), torch.tensor([10, 700, 300, 999][:batch]),
            torch.tensor([3, 7, 10, 1][:batch]))


# ----------------------------------------------------------------------------------------------------------
# Key names, shapes and parameter counts
# ----------------------------------------------------------------------------------------------------------

# The released state dict of MDTv2(input_size=8, patch_size=2, in_channels=4, hidden_size=8, depth=6, num_heads=2,
# num_classes=3, decode_layer=2), read off the released constructor: (6 - 2) // 2 = 2 blocks in each encoder half,
# 2 decoder blocks, one side-interpolator block; a 4x4 token grid; BEiT's bias table (2*4 - 1)^2 + 3 = 52 rows with
# its index saved as a buffer.
SMALL_CONFIG = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=8, depth=6, num_heads=2, num_classes=3,
                    decode_layer=2)
MODEL_KEYS = {
    "x_embedder.proj.weight": (8, 4, 2, 2), "x_embedder.proj.bias": (8,),
    "t_embedder.mlp.0.weight": (8, 256), "t_embedder.mlp.0.bias": (8,),
    "t_embedder.mlp.2.weight": (8, 8), "t_embedder.mlp.2.bias": (8,),
    "y_embedder.embedding_table.weight": (4, 8),
    "pos_embed": (1, 16, 8), "decoder_pos_embed": (1, 16, 8), "mask_token": (1, 1, 8),
    "final_layer.linear.weight": (32, 8), "final_layer.linear.bias": (32,),
    "final_layer.adaLN_modulation.1.weight": (16, 8), "final_layer.adaLN_modulation.1.bias": (16,),
}
BLOCK_KEYS = {
    "norm1": None, "attn.qkv.weight": (24, 8), "attn.qkv.bias": (24,), "attn.proj.weight": (8, 8),
    "attn.proj.bias": (8,), "attn.rel_pos_bias.relative_position_bias_table": (52, 2),
    "attn.rel_pos_bias.relative_position_index": (16, 16), "mlp.fc1.weight": (32, 8), "mlp.fc1.bias": (32,),
    "mlp.fc2.weight": (8, 32), "mlp.fc2.bias": (8,), "adaLN_modulation.1.weight": (48, 8),
    "adaLN_modulation.1.bias": (48,),
}
SKIP_KEYS = {"skip_linear.weight": (8, 16), "skip_linear.bias": (8,)}
BLOCKS = {"en_inblocks.0": False, "en_inblocks.1": False, "en_outblocks.0": True, "en_outblocks.1": True,
          "de_blocks.0": True, "de_blocks.1": True, "sideblocks.0": False}  # prefix -> has a skip_linear


def released_small_state_dict() -> dict:
    shapes = dict(MODEL_KEYS)
    for prefix, skip in BLOCKS.items():
        keys = {**BLOCK_KEYS, **(SKIP_KEYS if skip else {})}
        shapes.update({f"{prefix}.{key}": shape for key, shape in keys.items() if shape is not None})
    return {key: torch.randn(shape) if "index" not in key else torch.randint(0, 49, shape)
            for key, shape in shapes.items()}


def test_released_key_names_load_strictly():
    released = released_small_state_dict()
    model = MDTv2(**SMALL_CONFIG)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in released.items()}
    model.load_state_dict(released, strict=True)
    assert model.num_blocks == 6 and len(model.sideblocks) == 1


def released_parameter_count(width: int, depth: int, heads: int, decode_layer: int = 4, grid: int = 16,
                             patch: int = 2, in_channels: int = 4, num_classes: int = 1000) -> int:
    """Trainable parameters of the released MDTv2 (mask ratio set, so mask_token trains), term by term from its
    constructor: every MDTBlock has qkv (3D^2 + 3D), proj (D^2 + D), fc1 (4D^2 + 4D), fc2 (4D^2 + D), adaLN
    (6D^2 + 6D) and a bias table ((2n-1)^2 + 3) x heads; a block behind a long skip adds skip_linear (2D^2 + D).
    There are 2 * half + decode + 1 blocks (one side block), half + decode of them with skips; the embeddings are
    the patch conv (p^2 C D + D), the timestep MLP (256 D + D + D^2 + D), the label table ((classes + 1) D), the
    two learned position tables (2 N D) and mask_token (D); the final layer has adaLN (2D^2 + 2D) and the
    projection (D p^2 2C + p^2 2C)."""
    d, half, tokens, out = width, (depth - decode_layer) // 2, grid * grid, patch * patch * 2 * in_channels
    block = 18 * d * d + 15 * d + ((2 * grid - 1) ** 2 + 3) * heads
    blocks = (2 * half + decode_layer + 1) * block + (half + decode_layer) * (2 * d * d + d)
    embeddings = (patch * patch * in_channels * d + d) + (256 * d + 2 * d + d * d) + (num_classes + 1) * d \
        + 2 * tokens * d + d
    return blocks + embeddings + (2 * d * d + 2 * d) + (d * out + out)


@pytest.mark.parametrize("name, width, depth, heads, expected", [
    ("MDTv2-S/2", 384, 12, 6, 38_159_576), ("MDTv2-B/2", 768, 12, 12, 150_931_856),
    ("MDTv2-XL/2", 1152, 28, 16, 742_263_904)])
def test_parameter_counts_of_the_released_sizes(name, width, depth, heads, expected):
    assert released_parameter_count(width, depth, heads) == expected
    with torch.device("meta"):
        model = create_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert model.num_blocks == depth and model.config.mask_ratio == 0.3 and model.config.decode_layer == 4
    # without a mask ratio (the released constructor's default) the mask token is frozen
    with torch.device("meta"):
        frozen = create_model(name, mask_ratio=None)
    assert sum(p.numel() for p in frozen.parameters() if p.requires_grad) == expected - width


def test_initialisation_as_released():
    torch.manual_seed(0)
    model = create_model("MDTv2-T/2")
    for table in (model.pos_embed, model.decoder_pos_embed):  # learned, starting as the 2-D sin-cos table
        assert table.requires_grad
        torch.testing.assert_close(table.detach(), sincos_2d(96, 16))
    assert 0.015 < model.mask_token.std() < 0.025  # N(0, 0.02) when the model trains with masking
    for block in [*model.blocks, *model.sideblocks]:  # adaLN-Zero everywhere, also in the side-interpolator
        assert not block.adaLN_modulation[1].weight.any()
        table = block.attn.rel_pos_bias.relative_position_bias_table
        assert 0.015 < table.std() < 0.025  # trunc_normal(std 0.02) cut at +-2 as released: in effect N(0, 0.02)
    frozen = create_model("MDTv2-T/2", mask_ratio=None)
    assert not frozen.mask_token.requires_grad and not frozen.mask_token.any()


# ----------------------------------------------------------------------------------------------------------
# Numbers against the released code
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fused", [True, False])
def test_compat_case_outputs(case, fused):
    model = MDTv2(**case["config"])
    model.load_state_dict(case["state_dict"], strict=True)
    model.eval()
    set_attention_path(model, fused)
    x, t, y = case["x"], case["t"], case["y"]
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), case["out_no_amm"], atol=1e-5, rtol=0)
        masked = model(x, t, y, masks=TokenRemoval(case["masked_keep"]))
        torch.testing.assert_close(masked, case["out_masked"], atol=1e-5, rtol=0)
        model.set_amm(case["amm_blocks"])
        assert model.de_blocks[0].attn.amm is not None  # block 8 = the first decoder block
        torch.testing.assert_close(model(x, t, y), case["out_amm"], atol=1e-5, rtol=0)
        guided = model.forward_with_cfg(case["cfg_x"], case["cfg_t"], case["cfg_y"], case["cfg_scale"],
                                        guided_channels=case["cfg_guided_channels"], guidance_schedule="power-cos")
    torch.testing.assert_close(guided, case["out_cfg_amm"], atol=1e-5, rtol=0)


def test_power_cos_schedule_values():
    t = torch.tensor([0, 250, 500, 750, 1000])
    scales = guidance_scales(t, 4.0, "power-cos")
    expected = [1 + 3 * (1 - math.cos(math.pi * (1 - v / 1000) ** 4)) / 2 for v in t.tolist()]
    torch.testing.assert_close(scales, torch.tensor(expected), atol=1e-6, rtol=0)
    assert scales[0] == 4.0 and scales[-1] == 1.0  # full guidance at t = 0, none at t = T
    assert abs(scales[2].item() - (1 + 3 * (1 - math.cos(math.pi / 16)) / 2)) < 1e-6  # t = T/2: only 2.9 % of it
    assert (scales.diff() < 0).all()  # the scale rises as sampling moves from t = T to 0
    assert torch.equal(guidance_scales(t, 4.0), torch.full((5,), 4.0))
    with pytest.raises(ValueError, match="unknown guidance schedule"):
        guidance_scales(t, 4.0, "cosine")


def test_guided_forward_follows_the_schedule_for_every_model():
    x, t, _ = digits_inputs(2)
    t = torch.tensor([100, 100])
    y = torch.tensor([3, 10])
    for model in (tiny_mdt(), randomize_weights(create_model("EDT-T/2", dims=(16, 24, 32, 24, 16),
                                                             num_heads=(1, 1, 1, 1, 1)))):
        with torch.no_grad():
            out = model(torch.cat([x[:1], x[:1]]), t, y)
            guided = model.forward_with_cfg(x, t, y, 3.0, guidance_schedule="power-cos")
        scale = guidance_scales(t[:1], 3.0, "power-cos").item()
        cond, uncond = out[:1, :1], out[1:, :1]
        torch.testing.assert_close(guided[:1, :1], uncond + scale * (cond - uncond))
        assert 1.0 < scale < 3.0


# ----------------------------------------------------------------------------------------------------------
# MDT masking: token removal, side-interpolator, masked shortcut
# ----------------------------------------------------------------------------------------------------------

def test_mdt_masks_keep_the_released_counts():
    model = tiny_mdt()
    generator = torch.Generator().manual_seed(0)
    kept = []
    for _ in range(300):
        ratio = 0.3 + (0.5 - 0.3) * torch.rand((), generator=torch.Generator().set_state(generator.get_state()))
        masks = mdt_masks(model, 4, generator, "cpu")
        counts = masks.keep.sum(1)
        assert (counts == counts[0]).all() and not (masks.keep == masks.keep[0]).all()
        assert counts[0] == int(256 * (1 - ratio))  # the batch's ratio, truncated as released
        kept.append(counts[0].item())
    # r ~ U(0.3, 0.5) once per batch, int(256 (1 - r)) tokens kept: 128 .. 179, on average about 153
    assert min(kept) >= 128 and max(kept) <= 179 and 150 < np.mean(kept) < 156
    assert len(set(kept)) > 30  # a fresh ratio per batch
    assert set(mask_grids(masks, model)) == {"input"}


def test_masked_pass_token_counts_and_masked_shortcut():
    model = tiny_mdt()
    x, t, y = digits_inputs(2)
    keep = torch.zeros(2, 256, dtype=torch.bool)
    keep[0, :100] = True
    keep[1, torch.randperm(256, generator=torch.Generator().manual_seed(0))[:100]] = True
    seen = {}
    hooks = [module.register_forward_pre_hook(lambda m, args, name=name: seen.update({name: args[0]}))
             for name, module in (("encoder", model.en_inblocks[0]), ("encoder out", model.en_outblocks[-1]),
                                  ("side", model.sideblocks[0]), ("decoder", model.de_blocks[0]))]
    hooks.append(model.sideblocks[0].register_forward_hook(lambda m, args, out: seen.update({"side out": out})))
    with torch.no_grad():
        full = model(x, t, y)
        assert "side" not in seen  # the side-interpolator runs only in a masked pass
        masked = model(x, t, y, masks=TokenRemoval(keep))
    for hook in hooks:
        hook.remove()
    assert {name: tokens.shape[1] for name, tokens in seen.items()} == {
        "encoder": 100, "encoder out": 100, "side": 256, "side out": 256, "decoder": 256}
    assert masked.shape == full.shape and (masked - full).abs().max() > 1e-3
    # removed places enter the side block as mask_token + decoder_pos_embed
    filled = (model.mask_token + model.decoder_pos_embed).expand(2, -1, -1)
    torch.testing.assert_close(seen["side"][~keep], filled[~keep])
    # the masked shortcut: kept tokens pass the side block unchanged, removed ones take its output
    torch.testing.assert_close(seen["decoder"][keep], seen["side"][keep])
    torch.testing.assert_close(seen["decoder"][~keep], seen["side out"][~keep])
    assert (seen["side out"][keep] - seen["side"][keep]).abs().max() > 1e-3


def test_masked_pass_checks_its_masks():
    model = tiny_mdt()
    x, t, y = digits_inputs(2)
    uneven = torch.ones(2, 256, dtype=torch.bool)
    uneven[0, 0] = False
    with pytest.raises(ValueError, match="same number"):
        model(x, t, y, masks=TokenRemoval(uneven))
    with pytest.raises(ValueError, match=r"must be \(B, N\) = \(2, 256\)"):
        model(x, t, y, masks=TokenRemoval(torch.ones(2, 64, dtype=torch.bool)))
    with pytest.raises(ValueError, match="expected TokenRemoval masks"):
        model(x, t, y, masks=TokenMasks(input=torch.ones(2, 256, dtype=torch.bool)))
    generator = torch.Generator()
    with pytest.raises(ValueError, match="needs an MDTv2 model"):
        draw_masks("mdt", create_model("DiT-T/2", hidden_size=16, depth=1, num_heads=1), 2, generator, "cpu")
    with pytest.raises(ValueError, match="use masking 'mdt'"):
        draw_masks("input-zero", model, 2, generator, "cpu")
    with pytest.raises(ValueError, match="no mask_ratio"):
        draw_masks("mdt", create_model("MDTv2-T/2", **TINY, mask_ratio=None), 2, generator, "cpu")
    with pytest.raises(ValueError, match="mask_ratio must lie"):
        create_model("MDTv2-T/2", **TINY, mask_ratio=0.9)
    with pytest.raises(ValueError, match="decode_layer"):
        create_model("MDTv2-T/2", **TINY, decode_layer=11)


# ----------------------------------------------------------------------------------------------------------
# AMM
# ----------------------------------------------------------------------------------------------------------

def test_amm_counts_encoder_and_decoder_blocks_and_acts_only_in_eval():
    model = tiny_mdt(class_dropout_prob=0.0)
    x, t, y = digits_inputs(2)
    model.train()
    plain_train = model(x, t, y)
    model.set_amm([3, 4, 8])
    assert model.en_inblocks[3].attn.amm is not None and model.en_outblocks[0].attn.amm is not None
    assert model.de_blocks[0].attn.amm is not None and model.sideblocks[0].attn.amm is None
    torch.testing.assert_close(model(x, t, y), plain_train, atol=0, rtol=0)
    model.eval()
    with torch.no_grad():
        with_amm = model(x, t, y)
        model.set_amm([])
        without = model(x, t, y)
    assert (with_amm - without).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"expected 0\.\.11"):
        model.set_amm([12])


# ----------------------------------------------------------------------------------------------------------
# Files, pipeline, command line, explorer and training
# ----------------------------------------------------------------------------------------------------------

def test_released_files_and_save_pretrained_folders_load(tmp_path, case):
    x, t, y = case["x"], case["t"], case["y"]
    released = tmp_path / "mdtv2-s-400k.pt"
    torch.save({"model": case["state_dict"], "ema": case["state_dict"], "opt": {},
                "args": argparse.Namespace(model="MDTv2_S_2", mask_ratio=0.3)}, released)
    model = load_checkpoint(released)
    assert isinstance(model, MDTv2) and not model.training
    assert {k: v for k, v in model.config.items() if k in case["config"]} == case["config"]
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), case["out_no_amm"], atol=1e-5, rtol=0)
    bare = tmp_path / "state_dict.pt"
    torch.save(case["state_dict"], bare)
    assert load_checkpoint(bare).config.mask_ratio == 0.3  # not in a state dict: the released runs' value
    model.save_pretrained(tmp_path / "folder")
    again = load_checkpoint(tmp_path / "folder")
    assert isinstance(again, MDTv2) and json.loads((tmp_path / "folder" / "config.json").read_text())[
        "_class_name"] == "MDTv2"
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, y), case["out_no_amm"], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_pipeline_cli_and_explorer_sample_an_mdtv2(tmp_path, capsys):
    model = tiny_mdt()
    pipe = EDTPipeline(model, make_scheduler("ddim"), None, {i: str(i) for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    generator = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    common = dict(num_inference_steps=3, output_type="np")
    constant = pipe([3, 7], guidance=Guidance(3.0, channels=1), generator=generator(), **common).images
    power_cos = pipe([3, 7], guidance=Guidance(3.0, schedule="power-cos", channels=1), generator=generator(),
                     **common).images
    assert constant.shape == (2, 32, 32, 1) and np.abs(constant - power_cos).max() > 1e-4
    with pytest.raises(ValueError, match="guidance_schedule must be one of constant, power-cos, got 'cos'"):
        Guidance(3.0, schedule="cos")
    pipe.save_pretrained(tmp_path / "models" / "mdt_digits")
    torch.save({"ema": model.state_dict()}, tmp_path / "models" / "mdt.pt")
    out = tmp_path / "grid.png"
    arrays = {}
    for schedule in ("constant", "power-cos"):
        out = tmp_path / f"{schedule}.npz"
        assert main(["sample", "--ckpt", str(tmp_path / "models" / "mdt_digits"), "--classes", "3,7", "--steps", "2",
                     "--sampler", "ddim", "--cfg", "2", "--cfg-schedule", schedule, "--amm", "preset", "--out",
                     str(out)]) == 0
        arrays[schedule] = np.load(out)["arr_0"]
    assert arrays["constant"].shape == (2, 32, 32, 1) and (arrays["constant"] != arrays["power-cos"]).any()
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--ckpt", str(tmp_path / "models" / "mdt.pt"), "--cfg-schedule", "cos", "--out", str(out)])
    assert exit_info.value.code == 2 and "invalid choice: 'cos'" in capsys.readouterr().err
    store = ModelStore(tmp_path / "models", demo=True)
    assert {"mdt_digits", "mdt.pt"} <= set(store.names())
    for name in ("mdt_digits", "mdt.pt"):
        loaded = store.get(name)
        assert isinstance(loaded.pipe.transformer, MDTv2)
    text = views.cost_markdown(loaded.pipe.transformer)
    assert "| decoder |" in text and "| MDTv2-S/2 | 6.660 | 38,159,576 |" in text and "| EDT-S/2 | 2.667 |" in text


def test_flops_command_and_cost_of_mdtv2(capsys):
    with torch.device("meta"):
        report = count_macs(create_model("MDTv2-S/2"))
    # 12 DiT-S blocks (DiT-S/2 is 6.056 GFLOPs in all) plus 8 skip projections 2 N D^2 = 0.604 GFLOPs
    assert abs(report.gflops - (6.056 + 8 * 2 * 256 * 384**2 / 1e9)) < 1e-3
    assert list(report.by_stage()) == ["embed", "encoder in", "encoder out", "decoder", "side (training only)",
                                       "final"]
    assert main(["flops", "MDTv2-S/2"]) == 0
    out = capsys.readouterr().out
    assert "MDTv2-S/2: 6.660 GFLOPs" in out and "de_blocks.3" in out and "38,159,576 trainable" in out


@pytest.mark.slow
def test_training_with_mdt_masking(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODEL_CONFIGS, "MDTv2-T/2", (MDTv2, {**registry.MODEL_CONFIGS["MDTv2-T/2"][1],
                                                                      **TINY}))
    run = tmp_path / "run"
    assert main(["train", "--model", "MDTv2-T/2", "--data", "mnist", "--results-dir", str(run), "--max-steps", "3",
                 "--batch-size", "4", "--log-every", "1"]) == 0  # masking defaults to "mdt" for an MDTv2
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all(record["loss_masked"] is not None and record["loss_masked"] > 0 for record in log)
    checkpoint = safe_torch_load(run / "checkpoints" / "step_0000003.pt")
    torch.manual_seed(0)  # the trainer's initial weights (--seed 0)
    start = create_model("MDTv2-T/2").state_dict()
    # the parts only the masked pass uses were trained: the mask token and the side-interpolator
    for key in ("mask_token", "sideblocks.0.adaLN_modulation.1.weight"):
        assert not torch.equal(checkpoint["model"][key], start[key]), key
    assert isinstance(load_checkpoint(run / "checkpoints" / "step_0000003.pt"), MDTv2)


@pytest.mark.slow
def test_throughput_benchmark_trains_mdtv2_with_its_masked_pass(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.MODEL_CONFIGS, "MDTv2-T/2", (MDTv2, {**registry.MODEL_CONFIGS["MDTv2-T/2"][1],
                                                                      **TINY}))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import throughput

    out = tmp_path / "bench.json"
    throughput.main(["--models", "MDTv2-T/2", "--batch-size", "2", "--repeats", "1", "--steps", "1",
                     "--train-steps", "1", "--profile-steps", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert throughput.training_cases("MDTv2-T/2") == ("mdt", "none")
    assert [row["masking"] for row in report["training"]] == ["mdt", "none"]
    assert report["inference"][0]["steps_per_s"] > 0 and all(row["samples_per_s"] > 0 for row in report["training"])
