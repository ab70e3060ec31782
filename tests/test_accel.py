"""Hardware fast paths: asked of torch, taken only where the hardware runs them, the plain path everywhere else."""

import copy

import pytest
import torch

from edt_lab import accel
from edt_lab.models import capture_attention, create_model, randomize_weights, set_attention_path
from edt_lab.precision import resolve_precision


@pytest.fixture(autouse=True)
def torch_answers(monkeypatch):
    """These tests check the capability function itself, faking what torch reports; those about the switch set it.
    (The native_bf16 tests are skipped before this runs, so the switch still skips them.)"""
    monkeypatch.delenv(accel.FORCE_NO_NATIVE, raising=False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Pretend a CUDA GPU of the given compute capability is present: fake_gpu(7, 0) is a V100."""
    def set_gpu(major, minor):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        # torch emulates bf16 on every CUDA GPU; only compute capability 8 and later compute it natively
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: including_emulation or major >= 8)
    return set_gpu


def ran_fused_kernel(call) -> bool:
    """Whether call() ran oneDNN's fused linear kernel."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        call()
    return any(event.name == "mkldnn::_linear_pointwise" for event in profile.events())


def test_cpu_answers_come_from_torch_and_the_switch_turns_them_all_off(monkeypatch):
    onednn_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert accel.supports("bf16", "cpu") is onednn_bf16 and accel.supports("onednn_linear", "cpu") is onednn_bf16
    assert not accel.supports("flex", "cpu")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: not onednn_bf16)
    assert accel.supports("bf16", "cpu") is not onednn_bf16
    monkeypatch.setenv(accel.FORCE_NO_NATIVE, "1")
    assert not any(accel.supports(feature, device) for feature in accel.FEATURES for device in ("cpu", "cuda"))
    assert f"({accel.FORCE_NO_NATIVE} is set)" in accel.refusal("bf16", "cpu")
    with pytest.raises(ValueError, match="unknown hardware feature 'fp8': expected one of bf16, onednn_linear"):
        accel.supports("fp8", "cpu")


def test_cpu_without_native_bf16_refuses_bf16_in_one_line_and_auto_picks_fp32(monkeypatch):
    monkeypatch.setenv(accel.FORCE_NO_NATIVE, "1")
    assert resolve_precision("auto", "cpu") == resolve_precision("fp32", "cpu") == torch.float32
    with pytest.raises(ValueError) as error:
        resolve_precision("bf16", "cpu")
    message = str(error.value)
    assert "\n" not in message and message.startswith("precision bf16: this CPU (")
    assert "lacks native bf16" in message and message.endswith("use fp32 or auto")


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])  # V100, T4
def test_gpu_without_bf16_means_fp32_and_falls_back_from_flex(fake_gpu, capability):
    fake_gpu(*capability)
    assert not accel.supports("bf16", "cuda") and not accel.supports("flex", "cuda")
    assert accel.supports("compile", "cuda")  # Triton compiles for compute capability 7
    assert resolve_precision("auto", "cuda") == torch.float32
    with pytest.raises(ValueError, match=rf"^precision bf16: this CUDA GPU of compute capability "
                                         rf"{capability[0]}\.{capability[1]} lacks native bf16 .*use fp32 or auto$"):
        resolve_precision("bf16", "cuda")
    model = create_model("DiT-T/2")
    with pytest.warns(UserWarning, match="lacks compiled flex attention .*: running the plain PyTorch path"):
        assert not accel.use_flex_attention(model, "cuda")
    assert not any(isinstance(module, accel.FlexAttention) for module in model.modules())


def test_gpu_below_compute_capability_7_does_not_compile_and_ampere_gets_bf16(fake_gpu):
    fake_gpu(6, 1)
    model = create_model("DiT-T/2")
    with pytest.warns(UserWarning, match="lacks torch.compile"):
        assert not accel.compile_blocks(model, "cuda")
    assert all(block._compiled_call_impl is None for block in model.blocks)
    fake_gpu(8, 0)
    assert accel.supports("bf16", "cuda") and accel.supports("flex", "cuda")
    assert resolve_precision("auto", "cuda") == resolve_precision("bf16", "cuda") == torch.bfloat16


@pytest.mark.parametrize("name, size, channels", [("EDT-T/2", 32, 1), ("DiT-S/2", 16, 4), ("MDTv2-T/2", 32, 1)])
def test_a_users_bf16_autocast_runs_on_any_cpu_close_to_fp32(name, size, channels):
    torch.manual_seed(0)
    model = randomize_weights(create_model(name, input_size=size, in_channels=channels, num_classes=10))
    x, t, y = torch.randn(2, channels, size, size), torch.tensor([10, 500]), torch.tensor([1, 3])
    with torch.no_grad():
        exact = model(x, t, y)
        with torch.autocast("cpu", torch.bfloat16):
            low = model(x, t, y).float()
    assert (low - exact).norm() / exact.norm() < 0.05


def test_fast_paths_stay_off_where_the_hardware_lacks_them(monkeypatch):
    monkeypatch.setenv(accel.FORCE_NO_NATIVE, "1")
    model = randomize_weights(create_model("EDT-T/2"))
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([10, 500]), torch.tensor([1, 3])
    assert accel.enable_fast_paths(model, "cpu") == []
    assert not any(isinstance(module, accel.FusedCPULinear) for module in model.modules())
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert not ran_fused_kernel(lambda: model(x, t, y))


@pytest.mark.native_bf16
def test_fast_paths_fuse_cpu_bf16_inference_and_stay_close_to_fp32():
    torch.manual_seed(0)
    model = randomize_weights(create_model("EDT-T/2", input_size=16, in_channels=4, num_classes=10)).eval()
    keys = list(model.state_dict())
    x, t, y = torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), torch.tensor([1, 3])
    with torch.no_grad():
        exact = model(x, t, y)
        assert accel.enable_fast_paths(model, "cpu") == ["onednn_linear"]
        torch.testing.assert_close(model(x, t, y), exact, atol=0, rtol=0)  # fp32: the plain op
        with torch.autocast("cpu", torch.bfloat16):
            assert ran_fused_kernel(lambda: model(x, t, y))
            fused = model(x, t, y).float()
    assert list(model.state_dict()) == keys and (fused - exact).norm() / exact.norm() < 2e-2


@pytest.mark.native_bf16
@pytest.mark.parametrize("activation", [None, "gelu_tanh"])
def test_fused_linear_rounds_once_after_bias_and_gelu(activation):
    torch.manual_seed(0)
    linear = accel.FusedCPULinear(64, 96)
    linear.activation = activation
    x = 4 * torch.randn(2, 16, 64)  # pre-activations of a few units, so every part of the GELU's curve is hit
    with torch.no_grad():
        exact = linear(x)
        # the float32 computation from bf16-rounded operands: what one kernel with one final rounding gives
        rounded = copy.deepcopy(linear)
        rounded.load_state_dict({k: v.bfloat16().float() for k, v in linear.state_dict().items()})
        one_rounding = rounded(x.bfloat16().float())
        with torch.autocast("cpu", torch.bfloat16):
            assert ran_fused_kernel(lambda: linear(x))
            fused = linear(x)
    assert fused.dtype == torch.bfloat16 and fused.shape == (2, 16, 96)
    torch.testing.assert_close(fused.float(), one_rounding.bfloat16().float(), atol=1e-4, rtol=2 ** -8)
    torch.testing.assert_close(fused.float(), exact, atol=0.1, rtol=2e-2)


@pytest.mark.native_bf16
def test_fused_linear_only_in_inference_and_recasts_changed_weights():
    torch.manual_seed(0)
    linear = accel.FusedCPULinear(32, 32)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", torch.bfloat16):
        assert not ran_fused_kernel(lambda: linear(x))  # gradients on: training keeps autocast's addmm
        with torch.no_grad():
            before = linear(x)
            assert accel._ONEDNN_COPIES[linear]["weight"][1].is_mkldnn  # kept in oneDNN's own layout
            copied = copy.deepcopy(linear)  # the opaque copy stays out of deep copies (and pickles)
            torch.testing.assert_close(copied(x), before, atol=0, rtol=0)
            linear.weight.mul_(2)  # an in-place update (an optimiser or EMA step, load_state_dict)
            torch.testing.assert_close(linear(x).float(), 2 * before.float() - linear.bias.bfloat16().float(),
                                       atol=5e-2, rtol=2e-2)


@pytest.mark.slow  # flex_attention's eager reference loops in Python: 10-40 s
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
        assert accel.use_flex_attention(model, "cpu", force=True)
        flex = model(x, t, y)
        with capture_attention(model, [amm_blocks[0]]) as captured:  # capturing takes the explicit path
            model(x, t, y)
    assert explicit.abs().max() > 1 and captured[amm_blocks[0]]["modulated"] is not None
    torch.testing.assert_close(flex, explicit, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compiled_blocks_compute_what_eager_blocks_compute():
    # The aot_eager backend traces the graphs (bias and AMM under torch.compile) without generating kernels.
    model = randomize_weights(create_model("EDT-T/2"))
    model.set_amm([8])
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        eager = model(x, t, y)
        keys = list(model.state_dict())
        assert accel.compile_blocks(model, "cpu", backend="aot_eager")
        compiled = model(x, t, y)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    assert list(model.state_dict()) == keys and all(block._compiled_call_impl is not None for block in model.blocks)


@pytest.mark.slow
def test_flex_blocks_compile_into_kernels_on_a_cpu():
    # Inductor's CPU flex kernel takes the score modification's tensors only as graph inputs: the bias is read from
    # its table and index there. Without AMM: on a CPU inductor has no log-sum-exp output, which the AMM needs.
    if not accel.supports("compile", "cpu"):
        pytest.skip(f"needs inductor: {accel.refusal('compile', 'cpu')}")
    model = randomize_weights(create_model("EDT-T/2"))
    x, t, y = torch.randn(2, 1, 32, 32), torch.tensor([3, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        set_attention_path(model, fused=False)
        explicit = model(x, t, y)
        accel.use_flex_attention(model, "cpu", force=True)
        assert accel.compile_blocks(model, "cpu")
        compiled = model(x, t, y)
    assert explicit.abs().max() > 1
    torch.testing.assert_close(compiled, explicit, atol=1e-5, rtol=0)
