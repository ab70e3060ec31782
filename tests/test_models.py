"""EDT and DiT against the released models: numbers, key sets, shapes, parameter counts, bad input."""

import copy

import pytest
import torch

from edt_lab.amm import AMM_PRESETS, modulation_matrix, preset_for
from edt_lab.models import (EDT, MODEL_NAMES, capture_attention, create_model, layers, randomize_weights,
                            set_attention_path)
from edt_lab.models.layers import Linear


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


@pytest.mark.parametrize("name, amm_blocks", [("EDT-T/2", [7, 8, 10]), ("DiT-T/2", [8, 10])])
def test_flex_path_computes_bias_and_amm_as_the_explicit_path(name, amm_blocks):
    # In eager mode flex_attention runs its unfused reference: this checks the formulation (score modification,
    # log AMM and the rescaling by exp(lse(s + log M) - lse(s))), which compiled kernels then carry out.
    model = randomize_weights(create_model(name))
    model.set_amm(amm_blocks)
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        set_attention_path(model, fused=False)
        explicit = model(x, t, y)
        set_attention_path(model, fused=True, flex=True)
        flex = model(x, t, y)
        with capture_attention(model, [amm_blocks[0]]) as captured:  # capturing takes the explicit path
            model(x, t, y)
    assert explicit.abs().max() > 1 and captured[amm_blocks[0]]["modulated"] is not None
    torch.testing.assert_close(flex, explicit, atol=1e-5, rtol=0)


def test_compiled_blocks_compute_what_eager_blocks_compute():
    # The aot_eager backend traces the graphs (bias, AMM and cache code under torch.compile) without generating
    # kernels, which keeps the test fast; the kernels themselves are torch's.
    model = randomize_weights(create_model("EDT-T/2"))
    model.set_amm([8])
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        eager = model(x, t, y)
        keys = list(model.state_dict())
        model.compile_blocks(backend="aot_eager")
        compiled = model(x, t, y)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    assert list(model.state_dict()) == keys and all(block._compiled_call_impl is not None for block in model.blocks)


def test_flex_blocks_compile_into_kernels_on_a_cpu():
    # Inductor's CPU flex kernel takes the score modification's tensors only as graph inputs: the bias is read from
    # its table and index there (a bias computed inside the graph failed to compile). Without AMM: on a CPU inductor
    # has no log-sum-exp output, which the AMM's exact form needs.
    model = randomize_weights(create_model("EDT-T/2"))
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        set_attention_path(model, fused=False)
        explicit = model(x, t, y)
        set_attention_path(model, fused=True, flex=True)
        model.compile_blocks()
        compiled = model(x, t, y)
    assert explicit.abs().max() > 1
    torch.testing.assert_close(compiled, explicit, atol=1e-5, rtol=0)


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


def ran_fused_kernel(call) -> bool:
    """Whether call() ran oneDNN's fused linear kernel."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    return any(event.name == "mkldnn::_linear_pointwise" for event in profile.events())


@pytest.mark.parametrize("activation", [None, "gelu_tanh"])
def test_cpu_bf16_inference_runs_linear_and_gelu_as_one_fused_kernel(activation):
    torch.manual_seed(0)
    linear = Linear(64, 96)
    x = 4 * torch.randn(2, 16, 64)  # pre-activations of a few units, so every part of the GELU's curve is hit
    with torch.no_grad():
        exact = linear(x, activation)
        # the float32 computation from bf16-rounded operands: what one kernel with one final rounding gives
        rounded = Linear(64, 96)
        rounded.load_state_dict({k: v.bfloat16().float() for k, v in linear.state_dict().items()})
        one_rounding = rounded(x.bfloat16().float(), activation)
        with torch.autocast("cpu", torch.bfloat16):
            assert layers.fused_cpu_linear(x)
            assert ran_fused_kernel(lambda: linear(x, activation))
            fused = linear(x, activation)
            plain = torch.nn.functional.linear(x, linear.weight, linear.bias)
            plain = torch.nn.functional.gelu(plain, approximate="tanh") if activation else plain
    assert fused.dtype == torch.bfloat16 and fused.shape == (2, 16, 96)
    # one rounding of the tanh GELU (the erf GELU differs by up to 5e-4, the unfused bf16 path rounds twice)
    torch.testing.assert_close(fused.float(), one_rounding.bfloat16().float(), atol=1e-4, rtol=2 ** -8)
    torch.testing.assert_close(fused.float(), exact, atol=0.1, rtol=2e-2)
    torch.testing.assert_close(fused.float(), plain.float(), atol=0.1, rtol=2e-2)


def test_fused_linear_only_in_cpu_bf16_inference_and_recasts_changed_weights():
    torch.manual_seed(0)
    linear = Linear(32, 32)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", torch.bfloat16):
        assert not layers.fused_cpu_linear(x)  # gradients on: training keeps autocast's addmm
        assert not ran_fused_kernel(lambda: linear(x))
        with torch.no_grad():
            before = linear(x)
            assert layers._ONEDNN_COPIES[linear]["weight"][1].is_mkldnn  # kept in oneDNN's own layout
            copied = copy.deepcopy(linear)  # the opaque copy stays out of deep copies (and pickles)
            torch.testing.assert_close(copied(x), before, atol=0, rtol=0)
            linear.weight.mul_(2)  # an in-place update (an optimiser or EMA step, load_state_dict)
            after = linear(x)
            torch.testing.assert_close(after.float(), 2 * before.float() - linear.bias.bfloat16().float(),
                                       atol=5e-2, rtol=2e-2)
            layers.FUSED_CPU_LINEAR = False
            try:
                assert not ran_fused_kernel(lambda: linear(x))
            finally:
                layers.FUSED_CPU_LINEAR = True
    with torch.no_grad():
        assert not layers.fused_cpu_linear(x) and linear(x).dtype == torch.float32  # fp32: plain nn.Linear
        with torch.autocast("cpu", torch.bfloat16):
            assert not layers.fused_cpu_linear(x.double())  # autocast leaves float64 alone, and so does the fusion
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        linear(x, "relu")


def test_bf16_inference_of_a_model_stays_close_to_fp32():
    torch.manual_seed(0)
    model = randomize_weights(create_model("EDT-T/2", input_size=16, in_channels=4, num_classes=10)).eval()
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.tensor([1, 3])
    with torch.no_grad():
        exact = model(x, t, y)
        with torch.autocast("cpu", torch.bfloat16):
            assert ran_fused_kernel(lambda: model(x, t, y))
            fused = model(x, t, y).float()
    assert (fused - exact).norm() / exact.norm() < 2e-2
