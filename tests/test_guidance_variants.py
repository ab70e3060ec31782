"""benchmarks/guidance_variants.py: each variant reduces to ordinary guidance where it should, and changes it
as its paper says where it should not (a tiny random EDT; the sweep itself with stand-in metrics)."""

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import guidance_variants as gv  # noqa: E402
import settings_sweep  # noqa: E402
from edt_lab.models import create_model  # noqa: E402
from edt_lab.pipeline import make_scheduler  # noqa: E402

SCALE = 2.5


@pytest.fixture(scope="module")
def case():
    """A random EDT-T/2 (non-zero output layers) and a guided batch: x (2B, 1, 32, 32), t (2B,), y with null labels."""
    torch.manual_seed(0)
    model = create_model("EDT-T/2").eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(3, 1, 32, 32).repeat(2, 1, 1, 1)
    t = torch.tensor([900, 500, 100]).repeat(2)
    y = torch.tensor([1, 2, 3, 10, 10, 10])
    return model, x, t, y


class Predictions(torch.nn.Module):
    """A stand-in model whose conditional prediction is the unconditional one plus a chosen difference."""

    config = type("Config", (), {"in_channels": 1})

    def __init__(self, difference):
        super().__init__()
        self.difference = difference

    def forward(self, x, t, y):
        return torch.cat([x[: len(x) // 2] + self.difference, x[len(x) // 2:]])


def guided_noise(forward, case):
    model, x, t, y = case
    with torch.no_grad():
        return forward(x, t, y, SCALE)[:3, :1]


def test_variants_reduce_to_ordinary_guidance(case):
    model = case[0]
    ordinary = guided_noise(model.forward_with_cfg, case)
    abar = make_scheduler("deis-karras").alphas_cumprod
    apg_full = guided_noise(functools.partial(gv.apg_forward, model, abar, 1.0), case)
    same_low_high = guided_noise(functools.partial(gv.frequency_forward, model, 4, SCALE), case)
    no_rescale = guided_noise(functools.partial(gv.rescale_forward, model, abar, 0.0), case)
    torch.testing.assert_close(apg_full, ordinary, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(no_rescale, ordinary, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(same_low_high, ordinary, atol=1e-4, rtol=1e-4)
    # Less guidance on the high frequencies, or none of the parallel part, is another prediction.
    assert (guided_noise(functools.partial(gv.frequency_forward, model, 4, 1.0), case) - ordinary).abs().max() > 1e-2
    assert (guided_noise(functools.partial(gv.apg_forward, model, abar, 0.0), case) - ordinary).abs().max() > 1e-3


def test_frequency_split_guides_smooth_and_fine_differences_by_their_own_scales():
    x = torch.randn(2, 1, 32, 32).repeat(2, 1, 1, 1)
    smooth = torch.full((2, 1, 32, 32), 0.3)  # all low frequency: the low-pass keeps it
    fine = 0.3 * (-1.0) ** (torch.arange(32).view(-1, 1) + torch.arange(32))  # checkerboard: pooled away
    for difference, expected_scale in ((smooth, SCALE), (fine.expand(2, 1, 32, 32), 1.2)):
        guided = gv.frequency_forward(Predictions(difference), 4, 1.2, x, None, None, SCALE)[:2]
        torch.testing.assert_close(guided, x[:2] + expected_scale * difference)


def test_apg_keeps_only_the_update_orthogonal_to_the_conditional_x0(case):
    model, x, t, y = case
    abar = make_scheduler("deis-karras").alphas_cumprod
    guided = guided_noise(functools.partial(gv.apg_forward, model, abar, 0.0), case).double()
    with torch.no_grad():
        cond, uncond = model(x, t, y)[:, :1].double().chunk(2)
    a = abar[t[:3]].view(-1, 1, 1, 1).double()
    x0 = {name: (x[:3].double() - (1 - a).sqrt() * e) / a.sqrt()
          for name, e in (("cond", cond), ("uncond", uncond), ("guided", guided))}
    update = (x0["guided"] - x0["uncond"]).flatten(1)
    cosine = torch.nn.functional.cosine_similarity(update, x0["cond"].flatten(1))
    assert cosine.abs().max() < 1e-3 and update.norm(dim=1).min() > 1e-2


def test_rescale_gives_the_guided_x0_the_conditional_x0s_spread():
    x = torch.randn(3, 1, 32, 32).repeat(2, 1, 1, 1)
    t = torch.tensor([700, 400, 100]).repeat(2)
    model = Predictions(0.5 * torch.randn(3, 1, 32, 32))
    abar = make_scheduler("deis-karras").alphas_cumprod
    a = abar[t[:3]].view(-1, 1, 1, 1).double()

    def x0(eps):
        return (x[:3].double() - (1 - a).sqrt() * eps.double()) / a.sqrt()

    x0_cond = x0(model(x, t, None)[:3])
    x0_ordinary = x0(x[3:] + SCALE * model.difference)
    x0_full, x0_half = (x0(gv.rescale_forward(model, abar, fraction, x, t, None, SCALE)[:3]) for fraction in (1.0, 0.5))
    spread = {name: v.std(dim=(1, 2, 3)) for name, v in
              (("cond", x0_cond), ("ordinary", x0_ordinary), ("full", x0_full), ("half", x0_half))}
    assert (spread["ordinary"] / spread["cond"] - 1).abs().min() > 0.05  # guidance changed the spread
    torch.testing.assert_close(spread["full"], spread["cond"], atol=1e-4, rtol=1e-4)
    # Fully rescaled: the ordinary guided x0 times the spreads' ratio; half: halfway between the two x0s.
    torch.testing.assert_close(x0_full, x0_ordinary * (spread["cond"] / spread["ordinary"]).view(-1, 1, 1, 1),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_half, (x0_full + x0_ordinary) / 2, atol=1e-4, rtol=1e-4)


def test_layer_skip_guides_away_from_the_model_without_those_blocks(case):
    model, x, t, y = case
    with torch.no_grad():
        conditional = model(x[:3], t[:3], y[:3])[:, :1]
    # Skipping no block makes the bad model the model itself: the conditional prediction, whatever the scale.
    torch.testing.assert_close(guided_noise(functools.partial(gv.layer_skip_forward, model, []), case), conditional)
    skipped = guided_noise(functools.partial(gv.layer_skip_forward, model, [5]), case)
    with torch.no_grad():
        model.blocks[5].register_forward_hook(lambda module, inputs, output: inputs[0])
        bad = model(x[:3], t[:3], y[:3])[:, :1]
        model.blocks[5]._forward_hooks.clear()
        after = model(x[:3], t[:3], y[:3])[:, :1]
    torch.testing.assert_close(skipped, bad + SCALE * (conditional - bad))
    assert (bad - conditional).abs().max() > 1e-2
    torch.testing.assert_close(after, conditional)  # the variant removed its hooks


def test_autoguidance_guides_away_from_the_bad_model_which_draws_with_the_good_ones_amm(case):
    model, x, t, y = case
    torch.manual_seed(1)
    bad_model = create_model("EDT-T/2").eval()
    for p in bad_model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.set_amm([10], None, 0.5, "exp")
    try:
        guided = guided_noise(functools.partial(gv.autoguidance_forward, model, bad_model, 1.0), case)
        assert bad_model.blocks[10].attn.amm is model.blocks[10].attn.amm and bad_model.blocks[9].attn.amm is None
        with torch.no_grad():
            good, bad = (m(x[:3], t[:3], y[:3])[:, :1] for m in (model, bad_model))
        torch.testing.assert_close(guided, bad + SCALE * (good - bad))
        # With classifier-free guidance on top: + (free - 1) (cond - uncond), the ordinary guidance's own term.
        with_free = guided_noise(functools.partial(gv.autoguidance_forward, model, bad_model, 1.5), case)
        ordinary = guided_noise(lambda *a: model.forward_with_cfg(x, t, y, 1.5), case)
        torch.testing.assert_close(with_free, bad + SCALE * (good - bad) + ordinary - good, atol=1e-5, rtol=1e-4)
        # Guided by itself, a model draws its own conditional prediction.
        by_itself = guided_noise(functools.partial(gv.autoguidance_forward, model, model, 1.0), case)
        torch.testing.assert_close(by_itself, good)
        assert (good - bad).abs().max() > 1e-2
    finally:
        model.set_amm([], None, 0.5, "exp")
        bad_model.set_amm([], None, 0.5, "exp")


def test_the_sweep_runs_each_variant_and_records_it(tmp_path, monkeypatch, capsys):
    used = []

    def fake_metrics(images, labels):
        return {"accuracy": 1.0, "per_class_accuracy": [1.0] * 10, "accuracy_real": 0.98,
                "per_class_accuracy_real": [0.98] * 10, "fid": 1.0, "fid_real_floor": 1.0, "ae_fid": 40.0,
                "ae_fid_real_floor": 32.0, **{f"{m}{s}": 0.1 for m in ("mean_ink", "stroke_width", "grey_share")
                                                for s in ("", "_real", "_w1", "_w1_real_floor")},
                "isolated_pixels": 0.0, "isolated_pixels_real": 0.0, "nearest_train_l2": 10.0,
                "nearest_train_l2_held_out": 10.0}

    real_generate = settings_sweep.generate

    def recording_generate(pipe, labels, indices, **kwargs):
        used.append(pipe.transformer.forward_with_cfg.func.__name__)
        return real_generate(pipe, labels, indices, **kwargs)

    monkeypatch.setattr(settings_sweep, "digit_metrics", fake_metrics)
    monkeypatch.setattr(settings_sweep, "generate", recording_generate)
    out = tmp_path / "variant.json"
    sweep = ["--", "assets/edt_t2_digits", "--samplers", "deis-karras:2", "--guidance", "2", "--amm", "off",
             "--per-class", "1", "--json", str(out)]
    gv.main(["frequency", "--high-guidance", "1.2", *sweep])
    report = json.loads(out.read_text())
    assert (report["variant"], report["high_guidance"], report["low_pass_factor"]) == ("frequency", 1.2, 4)
    assert len(report["rows"]) == 1 and report["rows"][0]["cfg"] == 2 and used == ["frequency_forward"]
    gv.main(["layer-skip", "--skip-blocks", "5", "11", *sweep])
    assert json.loads(out.read_text())["skip_blocks"] == [5, 11] and used[-1] == "layer_skip_forward"
    gv.main(["rescale", "--rescale", "0.5", *sweep])
    assert json.loads(out.read_text())["rescale"] == 0.5 and used[-1] == "rescale_forward"

    other_classes, other_blocks = tmp_path / "five_classes", tmp_path / "dit"
    create_model("EDT-T/2", num_classes=5).save_pretrained(other_classes)
    create_model("DiT-T/2").save_pretrained(other_blocks)  # the same classes and size, every block on 16x16
    for bad in (["layer-skip", "--skip-blocks", "12"], ["frequency", "--low-pass-factor", "3"], ["cfg"],
                ["rescale", "--rescale", "1.5"], ["rescale", "--rescale", "-0.1"], ["apg", "--rescale", "0.5"],
                ["autoguidance"], ["autoguidance", "--bad-model", str(tmp_path / "none")],
                ["autoguidance", "--bad-model", str(other_classes)],
                ["autoguidance", "--bad-model", str(other_blocks)]):
        with pytest.raises(SystemExit) as error:
            gv.main([*bad, *sweep])
        assert error.value.code == 2
    assert "blocks on the same grids" in capsys.readouterr().err  # the DiT's, the last of them
    with pytest.raises(SystemExit) as error:
        gv.main(["apg", *sweep[:-2], "--json"])
    assert error.value.code == 2
    euler = [part.replace("deis-karras", "euler-karras") for part in sweep]
    for variant in ("apg", "rescale"):  # x0 from the integer timesteps' schedule: not Euler's
        with pytest.raises(SystemExit) as error:
            gv.main([variant, *euler])
        assert error.value.code == 2 and "the euler samplers step between them" in capsys.readouterr().err
    assert np.isfinite(report["rows"][0]["appearance_ratio"])
