"""EDT and DiT against the released models: numbers, key sets, shapes, parameter counts, bad input."""

import pytest
import torch

from edt_lab.amm import AMM_PRESETS, modulation_matrix, preset_for
from edt_lab.models import EDT, MODEL_NAMES, capture_attention, create_model, set_attention_path


def compat_model(case):
    cfg = case["config"]
    model = EDT(input_size=cfg["input_size"], patch_size=cfg["patch_size"], in_channels=cfg["in_channels"],
                dims=cfg["dims"], stages_depth=cfg["stages_depth"], num_heads=cfg["num_heads"],
                num_classes=cfg["num_classes"], learn_sigma=cfg["learn_sigma"])
    model.load_state_dict(case["state_dict"], strict=True)
    return model.eval()


@pytest.mark.parametrize("fused", [True, False])
def test_compat_case_outputs(compat_case, fused):
    model = compat_model(compat_case)
    set_attention_path(model, fused)
    x, t, y = compat_case["x"], compat_case["t"], compat_case["y"]
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), compat_case["out_no_amm"], atol=1e-5, rtol=0)
        model.set_amm(compat_case["amm_blocks"])
        assert model.amm_blocks == tuple(compat_case["amm_blocks"])
        torch.testing.assert_close(model(x, t, y), compat_case["out_amm"], atol=1e-5, rtol=0)
        guided = model.forward_with_cfg(compat_case["cfg_x"], compat_case["cfg_t"], compat_case["cfg_y"],
                                        compat_case["cfg_scale"],
                                        guided_channels=compat_case["cfg_guided_channels"])
    torch.testing.assert_close(guided, compat_case["out_cfg_amm"], atol=1e-5, rtol=0)


def test_compat_case_amm_matrices(compat_case):
    for n in (8, 16):
        torch.testing.assert_close(modulation_matrix(n), compat_case[f"amm_matrix_{n}x{n}"], atol=1e-6, rtol=0)


def test_amm_properties():
    m = modulation_matrix(16)
    kept = m[m > 0]
    assert abs(kept.min().item() - 0.773) < 1e-3 and abs(kept.max().item() - 0.5 * torch.e) < 1e-4
    assert 0.035 < (m == 0).float().mean().item() < 0.05  # "about 4 % of the pairs are zeroed"
    assert torch.equal(m, m.T)
    assert (modulation_matrix(16, radius=3.0) == 0).sum() > (m == 0).sum()  # a smaller radius cuts more
    torch.testing.assert_close(modulation_matrix(16, scale=1.0), 2 * m)


def test_full_guidance_uses_all_noise_channels(compat_case):
    model = compat_model(compat_case)
    x, t, y = compat_case["cfg_x"], compat_case["cfg_t"], compat_case["cfg_y"]
    with torch.no_grad():
        out = model(torch.cat([x[:1], x[:1]]), t, y)
        guided = model.forward_with_cfg(x, t, y, 3.0)
    cond, uncond = out[:1, :4], out[1:, :4]
    torch.testing.assert_close(guided[:1, :4], uncond + 3.0 * (cond - uncond))
    torch.testing.assert_close(guided[:, 4:], out[:, 4:])


@pytest.mark.parametrize("name", ["EDT-S/2", "EDT-B/2", "EDT-XL/2", "DiT-S/2", "DiT-B/2", "DiT-XL/2"])
def test_released_key_sets_shapes_and_parameters(name, manifest):
    with torch.device("meta"):
        model = create_model(name)
    expected = manifest[name]
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected["trainable_params"]


def test_tiny_models_are_cpu_sized():
    for name in ("EDT-T/2", "DiT-T/2"):
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert 1_000_000 < params < 5_000_000
        out = model(torch.randn(2, 1, 32, 32), torch.tensor([1, 500]), torch.tensor([0, 9]))
        assert out.shape == (2, 2, 32, 32)
    assert create_model("EDT-T/2").num_blocks == 12


def test_fused_and_explicit_paths_agree_in_training_and_eval():
    torch.manual_seed(0)
    model = create_model("EDT-T/2", class_dropout_prob=0.0)
    for p in model.parameters():  # adaLN-Zero starts as the identity: randomise so every path matters
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 2])
    for mode in (model.train, model.eval):
        mode()
        set_attention_path(model, True)
        fused = model(x, t, y)
        set_attention_path(model, False)
        explicit = model(x, t, y)
        torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=0)


def test_amm_acts_only_in_eval_mode_and_can_be_turned_off():
    torch.manual_seed(0)
    model = create_model("EDT-T/2", class_dropout_prob=0.0)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 2])
    model.train()
    plain_train = model(x, t, y)
    model.set_amm([7, 10])
    torch.testing.assert_close(model(x, t, y), plain_train, atol=0, rtol=0)
    model.eval()
    with torch.no_grad():
        with_amm = model(x, t, y)
        model.set_amm([])
        assert model.amm_blocks == ()
        without = model(x, t, y)
    assert (with_amm - without).abs().max() > 1e-4


def test_capture_attention_records_plain_and_modulated_maps():
    model = create_model("EDT-T/2").eval()
    model.set_amm([10])
    x, t, y = torch.randn(1, 1, 32, 32), torch.tensor([10]), torch.tensor([3])
    with torch.no_grad(), capture_attention(model, [7, 10]) as maps:
        model(x, t, y)
    assert maps[7]["attention"].shape == (1, 3, 64, 64) and maps[7]["modulated"] is None
    probs, modulated = maps[10]["attention"], maps[10]["modulated"]
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 256))
    torch.testing.assert_close(modulated, probs * modulation_matrix(16))
    assert model.blocks[10].attn.capture is None  # capture ends with the with-block


def test_presets_fit_their_models():
    assert AMM_PRESETS["edt-s/b-low-guidance"].blocks == (7, 10)
    assert AMM_PRESETS["edt-xl"].blocks == (23, 25)
    with torch.device("meta"):
        assert preset_for(create_model("EDT-S/2"), 1.5) == "edt-s/b-low-guidance"
        assert preset_for(create_model("EDT-B/2"), 4.0) == "edt-s/b-high-guidance"
        assert preset_for(create_model("EDT-XL/2")) == "edt-xl"
        assert preset_for(create_model("DiT-XL/2")) == "dit-xl"
        # The image size counts: an EDT-S/2 at 512x512 (64x64 latents) takes the released 512 arrangement.
        assert preset_for(create_model("EDT-S/2", input_size=64), 4.0) == "edt-s-512"
        assert preset_for(create_model("EDT-S/2", input_size=64), 1.0) == "edt-s-512"
        assert preset_for(create_model("MDTv2-S/2"), 3.8) == "mdtv2-s"
        with pytest.raises(ValueError, match="no released AMM arrangement for a MDTv2 with 28 blocks"):
            preset_for(create_model("MDTv2-XL/2"))  # the released code has an AMM arrangement for MDTv2-S only
        for name in MODEL_NAMES:
            model = create_model(name)
            if name != "MDTv2-XL/2":
                model.set_amm(AMM_PRESETS[preset_for(model)].blocks)


def test_relative_position_bias_tables_start_as_released():
    # trunc_normal(std 0.02), not zeros: the tables of a fresh model hold small random values.
    torch.manual_seed(0)
    model = create_model("EDT-T/2")
    tables = torch.cat([p.flatten() for n, p in model.named_parameters() if "relative_position_bias_table" in n])
    assert len(tables) > 1000 and 0.017 < tables.std().item() < 0.023 and tables.abs().max().item() <= 2.0
    assert tables.mean().abs().item() < 0.002


def test_block_info_describes_the_pyramid():
    info = create_model("EDT-T/2").block_info()
    assert [b["grid"] for b in info] == [16] * 2 + [8] * 2 + [4] * 2 + [8] * 3 + [16] * 3
    assert [b["phase"] for b in info][4:7] == ["middle", "middle", "up"]


def test_save_pretrained_round_trip(tmp_path):
    model = create_model("EDT-T/2")
    model.save_pretrained(tmp_path / "edt")
    assert (tmp_path / "edt" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = EDT.from_pretrained(tmp_path / "edt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)
    x, t, y = torch.randn(1, 1, 32, 32), torch.tensor([5]), torch.tensor([1])
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x, t, y), model.eval()(x, t, y))


@pytest.mark.parametrize("name", ["EDT-T/2", "DiT-T/2"])
def test_bad_inputs_raise_value_errors(name):
    model = create_model(name)
    t, y = torch.tensor([1]), torch.tensor([1])
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 32, 32\)"):
        model(torch.randn(1, 1, 16, 16), t, y)
    with pytest.raises(ValueError, match=r"expected input of shape"):
        model(torch.randn(1, 3, 32, 32), t, y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        model(torch.randn(1, 1, 32, 32), t, torch.tensor([11]))
    with pytest.raises(ValueError, match=r"labels must lie"):
        model(torch.randn(1, 1, 32, 32), t, torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"AMM block index 12 is out of range: expected 0..11"):
        model.set_amm([12])
    with pytest.raises(ValueError, match="unknown model"):
        create_model("EDT-Q/2")
    with pytest.raises(ValueError, match="EDT-T/2 has no option 'hidden_size': expected some of input_size, "
                                         "patch_size, in_channels, dims"):
        create_model("EDT-T/2", hidden_size=64)  # a DiT's option
    with pytest.raises(ValueError, match="expected timesteps as a tensor, got int 1"):
        model(torch.randn(1, 1, 32, 32), 1, y)
    with pytest.raises(ValueError, match=r"expected labels as a tensor, got list \[1\]"):
        model(torch.randn(1, 1, 32, 32), t, [1])


def test_a_model_without_null_label_refuses_it():
    model = create_model("EDT-T/2", class_dropout_prob=0.0)  # no null row: no unconditional prediction
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\] \(this model has no null label\), got 10..10"):
        model(torch.randn(1, 1, 32, 32), torch.tensor([1]), torch.tensor([10]))


@pytest.mark.parametrize("name, option, message", [
    ("DiT-T/2", {"hidden_size": 0}, "hidden_size must be positive, got 0"),
    ("DiT-T/2", {"depth": 2.0}, "depth must be a whole number, got 2.0"),
    ("MDTv2-S/2", {"num_heads": -6}, "num_heads must be positive, got -6"),
    ("EDT-T/2", {"dims": (64, 0, 128, 96, 64)}, r"dims must be positive, got \(64, 0, 128, 96, 64\)"),
    ("EDT-T/2", {"stages_depth": (2, 2, 0, 3, 3)}, "stages_depth must be positive"),
    ("EDT-T/2", {"num_classes": 0}, "num_classes must be positive, got 0"),
    ("EDT-T/2", {"mlp_ratio": -1.0}, "mlp_ratio must be positive, got -1.0"),
    ("EDT-T/2", {"class_dropout_prob": 1.0}, r"class_dropout_prob must lie in \[0, 1\), got 1.0"),
])
def test_configurations_torch_would_fail_on_are_refused(name, option, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, **option)
