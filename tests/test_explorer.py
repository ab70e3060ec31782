"""The web explorer's plain functions: model scanning and loading, request checks, AMM off/on runs, views."""

import argparse

import gradio as gr
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from diffusers import AutoencoderKL
from PIL import Image
from safetensors.torch import save_file

from edt_lab.amm import modulation_matrix
from edt_lab.explorer import controls, views
from edt_lab.explorer.events import (REFUSED, compare_button_state, gallery_columns, open_tab, show_views,
                                    status_line)
from edt_lab.explorer.layout import (ATTENTION_TAB, COMPARE_LABEL, DENOISING_TAB, IMAGES_TAB, PREVIEWS_LABEL,
                                     model_page)
from edt_lab.explorer.model_folders import (DEFAULT_NAME, DEMO_NOTE, LoadedModel, ModelStore, demo_pipeline,
                                            imagenet_class_names, randomize_weights, scan_models)
from edt_lab.explorer.server import QUEUE_POLL_S, build_app, queue_requests
from edt_lab.explorer.sampling import compare, sample
from edt_lab.guidance import Guidance
from edt_lab.models import create_model
from edt_lab.models.attention import capture_attention
from edt_lab.pipeline import EDTPipeline, make_scheduler


def tiny_edt(num_classes: int = 10):
    """A random pixel-space EDT with the 12-block S/B layout on a 16 x 16 token grid, small widths."""
    torch.manual_seed(0)
    model = create_model("EDT-T/2", dims=(16, 24, 32, 24, 16), num_heads=(1, 1, 1, 1, 1), num_classes=num_classes)
    return randomize_weights(model, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    pipe = EDTPipeline(tiny_edt(), make_scheduler("ddim"), None, {i: str(i) for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def request(pipe, **changes):
    values = dict(class_name="3", seed=0, num_images=2, sampler="ddim", num_inference_steps=4, guidance_scale=1.0,
                  amm_blocks="7, 10", released_radius=True, amm_radius=15.0, amm_scale=0.5)
    values.update(changes)
    return controls.check_request(pipe, **values)


# ----------------------------------------------------------------------------------------------------------
# Models folder
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A pipeline folder, a released-format .pt, a safetensors file, a broken .pt and a file that is no model."""
    folder = tmp_path_factory.mktemp("models")
    model = tiny_edt()
    EDTPipeline(model, make_scheduler("ddpm"), None, {i: f"digit {i}" for i in range(10)}).save_pretrained(
        folder / "tiny-pipeline")
    released = {"model": model.state_dict(), "ema": model.state_dict(), "opt": {},
                "args": argparse.Namespace(model="EDT-T/2")}
    torch.save(released, folder / "released-edt.pt")
    save_file(model.state_dict(), folder / "weights.safetensors")
    (folder / "broken.pt").write_bytes(b"this is not a checkpoint")
    (folder / "README.txt").write_text("notes")
    return folder


def test_scanner_finds_pipelines_and_released_files_and_reports_broken_ones(models_dir):
    entries = {entry.name: entry for entry in scan_models(models_dir)}
    assert set(entries) == {"tiny-pipeline", "released-edt.pt", "weights.safetensors", "broken.pt"}
    assert entries["tiny-pipeline"].kind == "pipeline" and entries["tiny-pipeline"].error is None
    assert entries["released-edt.pt"].kind == "checkpoint" and entries["released-edt.pt"].error is None
    assert "not a PyTorch checkpoint" in entries["broken.pt"].error


def test_store_offers_names_only_and_loads_each_entry(models_dir):
    store = ModelStore(models_dir, demo=True)
    assert store.names() == [DEFAULT_NAME, "released-edt.pt", "tiny-pipeline", "weights.safetensors"]
    assert store.problems() == ["broken.pt: not a PyTorch checkpoint (torch.save writes a zip archive)"]
    released = store.get("released-edt.pt")
    assert released.pipe.transformer.num_blocks == 12 and released.pipe.id2label[3] == "3"  # digit names given
    assert store.get("tiny-pipeline").pipe.id2label[3] == "digit 3"
    assert store.get("released-edt.pt") is released  # loaded once, then kept
    assert store.get(DEFAULT_NAME).is_demo and store.get(DEFAULT_NAME).note == DEMO_NOTE
    for name, words in (("broken.pt", "not a PyTorch checkpoint"), ("../etc/passwd", "unknown model")):
        with pytest.raises(ValueError, match=words):
            store.get(name)


def test_store_reports_a_file_that_fails_to_load_without_naming_server_folders(models_dir, tmp_path):
    state = tiny_edt().state_dict()
    state.pop("final_layer.linear.weight")
    torch.save({"ema": state}, tmp_path / "cut.pt")
    store = ModelStore(tmp_path, demo=True)
    with pytest.raises(ValueError) as error:
        store.get("cut.pt")
    assert "cut.pt" in str(error.value) and str(tmp_path) not in str(error.value)
    assert store.names() == [DEFAULT_NAME] and store.problems()[0].startswith("cut.pt: ")


def test_latent_checkpoint_takes_the_vae_beside_it(tmp_path):
    torch.manual_seed(0)
    model = create_model("EDT-T/2", dims=(16, 24, 32, 24, 16), num_heads=(1, 1, 1, 1, 1), in_channels=4,
                         input_size=16, num_classes=1000)
    torch.save({"ema": model.state_dict()}, tmp_path / "latent.pt")
    with pytest.raises(ValueError, match="a latent model needs its VAE"):
        ModelStore(tmp_path).get("latent.pt")
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4,
                  norm_num_groups=4).save_pretrained(tmp_path / "vae")
    store = ModelStore(tmp_path)
    assert store.names() == [DEFAULT_NAME, "latent.pt"]  # vae/ is not a model
    pipe = store.get("latent.pt").pipe
    assert controls.class_choices(pipe)[:2] == ["tench", "goldfish"]  # ImageNet names for 1000 classes
    run = sample(pipe, request(pipe, class_name="goldfish", num_images=1, num_inference_steps=2, amm_blocks="preset"))
    assert run.images.shape == (1, 128, 128, 3) and run.previews == []  # no per-step VAE decoding


def test_default_switches_from_demo_to_the_trained_model_once_it_exists(tmp_path, monkeypatch):
    folder = tmp_path / "edt_t2_digits"
    monkeypatch.setattr("edt_lab.pipeline.DEFAULT_MODEL_DIR", folder)
    monkeypatch.setattr("edt_lab.explorer.model_folders.DEFAULT_MODEL_DIR", folder)
    store = ModelStore()
    assert store.get(DEFAULT_NAME).is_demo
    EDTPipeline(tiny_edt(), make_scheduler("ddim"), None, {i: str(i) for i in range(10)}).save_pretrained(folder)
    (folder / "recommended.json").write_text('{"sampler": "ddim", "num_inference_steps": 20, "guidance_scale": 1.5, '
                                             '"amm_blocks": "preset"}')
    loaded = store.get(DEFAULT_NAME)
    assert not loaded.is_demo and loaded.note == "trained EDT-T/2 digits model"
    assert controls.initial_settings(loaded)["num_inference_steps"] == 20
    assert ModelStore(demo=True).get(DEFAULT_NAME).is_demo  # --demo keeps the demo model


def test_missing_models_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        scan_models(tmp_path / "nowhere")


def test_imagenet_names_are_the_standard_thousand():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names.values())) == 1000
    assert (names[0], names[1], names[207], names[999]) == ("tench", "goldfish", "golden retriever", "toilet tissue")


def test_demo_model_is_untrained_edt_t2_with_digit_names():
    pipe = demo_pipeline()
    assert type(pipe.transformer).__name__ == "EDT" and pipe.transformer.config.num_classes == 10
    assert controls.class_choices(pipe) == [str(i) for i in range(10)]


# ----------------------------------------------------------------------------------------------------------
# Controls
# ----------------------------------------------------------------------------------------------------------

def test_stage_groups_show_stage_grid_and_phase(pipe):
    groups = controls.stage_groups(pipe.transformer)
    assert [g["label"] for g in groups] == [
        "stage 0 · 16×16 tokens · down", "stage 1 · 8×8 tokens · down", "stage 2 · 4×4 tokens · middle",
        "stage 3 · 8×8 tokens · up", "stage 4 · 16×16 tokens · up"]
    assert groups[3]["choices"] == [("6 · 8×8 · up", 6), ("7 · 8×8 · up", 7), ("8 · 8×8 · up", 8)]
    assert controls.split_by_group(pipe.transformer, [7, 10]) == [[], [], [], [7], [10]]


def test_the_mask_seed_is_named_in_its_error():
    with pytest.raises(ValueError, match="mask seed is empty: enter a number"):
        controls.check_seed(None, "mask seed")
    with pytest.raises(ValueError, match="mask seed must lie in 0..2147483647, got -1"):
        controls.check_seed(-1, "mask seed")


def test_presets(pipe):
    model = pipe.transformer
    assert controls.preset_blocks(model, "released", 1.0) == [7, 10]
    assert controls.preset_blocks(model, "released", 4.0) == [8]
    assert controls.preset_blocks(model, "off", 1.0) == []
    assert controls.preset_blocks(model, "up", 1.0) == [6, 7, 8, 9, 10, 11]
    assert controls.preset_blocks(model, "recommended", 4.0, [10]) == [10]  # the page's start, at any guidance
    with pytest.raises(ValueError, match="no up-sampling blocks"):
        controls.preset_blocks(create_model("DiT-T/2", depth=2, hidden_size=12, num_heads=1), "up", 1.0)


def test_parse_blocks(pipe):
    model = pipe.transformer
    assert controls.parse_blocks(" 10, 7,7", model) == [7, 10]
    assert controls.parse_blocks("", model) == controls.parse_blocks("off", model) == []
    assert controls.parse_blocks("preset", model, 2.0) == [8]
    assert controls.parse_blocks([10, 7], model) == [7, 10]


def test_check_request_accepts_names_and_indices(pipe):
    checked = request(pipe, released_radius=False, amm_radius=5.5)
    assert (checked.class_index, checked.amm_blocks, checked.amm_radius, checked.amm_scale) == (3, [7, 10], 5.5, 0.5)
    assert request(pipe).amm_radius is None  # released radius per grid
    names_pipe = EDTPipeline(pipe.transformer, pipe.scheduler, None, {i: f"digit {i}" for i in range(10)})
    assert request(names_pipe, class_name="digit 4").class_index == 4
    assert request(names_pipe, class_name="4").class_index == 4


@pytest.mark.parametrize("change, words", [
    (dict(class_name="banana"), "unknown class 'banana'"),
    (dict(class_name="10"), "unknown class '10'"),
    (dict(num_inference_steps=10000), "steps must lie in 1..250"),
    (dict(num_inference_steps=0), "steps must lie in 1..250"),
    (dict(num_inference_steps=2.5), "steps must be a whole number"),
    (dict(num_images=17), "number of images must lie in 1..16"),
    (dict(seed=-1), "seed must lie in"),
    (dict(seed="abc"), "seed must be a number"),
    (dict(seed=None), "seed is empty: enter a number"),
    (dict(guidance_scale=0.5), "guidance scale must lie in"),
    (dict(guidance_scale=float("nan")), "guidance scale must lie in"),
    (dict(sampler="euler"), "unknown sampler 'euler'"),
    (dict(amm_blocks="7, x"), "expected comma-separated block indices"),
    (dict(amm_blocks="12"), "AMM block 12 is out of range"),
    (dict(released_radius=False, amm_radius=0), "AMM radius R must lie in"),
    (dict(amm_scale=-1), "AMM scale k must lie in"),
    (dict(precision="fp16"), "unknown precision 'fp16'"),
    (dict(guidance_interval="800-0"), "guided timesteps must be all, or LOW-HIGH with 0 <= LOW <= HIGH <= 999"),
    (dict(guidance_interval="0-1000"), r"LOW <= HIGH <= 999 \(e.g. 0-800\), got '0-1000'"),
    (dict(guidance_interval="-5-10"), "guided timesteps must be all, or LOW-HIGH"),
    (dict(guidance_interval="800"), "guided timesteps must be all, or LOW-HIGH"),
    (dict(guidance_interval="some"), "guided timesteps must be all, or LOW-HIGH"),
])
def test_bad_inputs_raise_clear_value_errors(pipe, change, words):
    with pytest.raises(ValueError, match=words):
        request(pipe, **change)


def test_initial_settings_follow_the_recommendation():
    class Loaded:
        pipe = demo_pipeline()
        recommended = {"sampler": "ddpm", "num_inference_steps": 1000, "guidance_scale": 4.0,
                       "guidance_interval": (0, 800), "amm_blocks": "preset", "amm_scale": 0.6}

    settings = controls.initial_settings(Loaded)
    assert settings == {"sampler": "ddpm", "num_inference_steps": controls.MAX_STEPS, "guidance_scale": 4.0,
                        "guidance_interval": "0-800", "amm_blocks": [8], "released_radius": True,
                        "amm_radius": controls.RADIUS_DEFAULT, "amm_scale": 0.6}
    Loaded.recommended = {}
    assert controls.initial_settings(Loaded)["guidance_interval"] == "all"
    assert abs(controls.RADIUS_DEFAULT - 229**0.5) < 1e-12


# ----------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------

def test_compare_gives_same_noise_different_images(pipe):
    steps = []
    off, on = compare(pipe, request(pipe), progress=lambda done, text: steps.append((done, text)))
    assert off.images.shape == on.images.shape == (2, 32, 32, 1)
    assert off.amm_blocks == [] and on.amm_blocks == [7, 10]
    assert np.abs(off.images - on.images).max() > 1e-3  # AMM changes the images
    again = sample(pipe, request(pipe), amm_blocks=[])
    np.testing.assert_array_equal(again.images, off.images)  # the same seed gives the same noise
    assert steps[3] == (0.5, "AMM off: step 4/4") and steps[-1] == (1.0, "AMM on: step 4/4")
    assert len(on.previews) == 4 and on.previews[-1].shape == (2, 32, 32, 1)
    assert on.attention[10]["modulated"] is not None and off.attention[10]["modulated"] is None
    assert pipe.transformer.amm_blocks == ()  # the call's AMM does not stay on the shared model


def test_views_are_recorded_only_when_asked(pipe, monkeypatch):
    captures = []
    monkeypatch.setattr("edt_lab.callbacks.capture_attention",
                        lambda *args, _real=capture_attention: captures.append(args) or _real(*args))
    plain = sample(pipe, request(pipe), record_views=False)
    assert plain.attention == {} and plain.previews == [] and captures == []  # no capture step at all
    viewed = sample(pipe, request(pipe))
    assert len(captures) == 1 and sorted(viewed.attention) == list(range(12)) and len(viewed.previews) == 4
    # the same images, up to rounding: the capture step computes attention explicitly rather than fused
    np.testing.assert_allclose(plain.images, viewed.images, atol=1e-5)


def test_precision_reaches_the_pipeline(pipe, monkeypatch):
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: False)
    with pytest.raises(ValueError, match="precision bf16: .* lacks native bf16"):
        request(pipe, precision="bf16")
    assert request(pipe, precision="auto").precision == "auto"
    # emulated where the CPU lacks it
    monkeypatch.setattr("edt_lab.accel.supports", lambda feature, device: feature == "bf16")
    fp32, bf16 = (sample(pipe, request(pipe, precision=p)).images for p in ("fp32", "bf16"))
    assert np.abs(fp32 - bf16).max() > 0 and np.abs(fp32 - bf16).mean() < 0.02  # rounding, not another image


def test_recommended_guidance_interval_and_schedule_reach_the_pipeline(pipe, monkeypatch):
    plain = request(pipe)
    assert plain.guidance == Guidance(1.0)
    recommended = {"guidance_interval": (300, 999), "guidance_schedule": "power-cos"}
    shaped = request(pipe, guidance_scale=3.0, recommended=recommended)
    assert shaped.guidance == Guidance(3.0, (300, 999), "power-cos")
    calls = []
    real_call = type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *args, **kwargs: calls.append(kwargs)
                        or real_call(self, *args, **kwargs))
    late = sample(pipe, request(pipe, guidance_scale=3.0, recommended={"guidance_interval": (600, 999)}),
                  record_views=False)
    assert calls[-1]["guidance"] == Guidance(3.0, (600, 999))
    # guiding only the noisiest steps draws other images than guiding every step, from the same noise
    every = sample(pipe, request(pipe, guidance_scale=3.0), record_views=False)
    assert calls[-1]["guidance"].interval is None and np.abs(late.images - every.images).max() > 1e-3
    loaded = LoadedModel("default", pipe, "trained EDT-T/2 digits model")
    assert status_line(loaded, shaped, "2 images in 0.10 s") == ("2 images in 0.10 s · ddim, 4 steps, guidance 3 "
                                                                 "(power-cos schedule, as the model recommends, "
                                                                 "guided at t 300-999 only) · trained EDT-T/2 digits "
                                                                 "model")
    assert status_line(loaded, plain, "x") == "x · ddim, 4 steps, no guidance · trained EDT-T/2 digits model"
    one_step = request(pipe, num_inference_steps=1)
    assert status_line(loaded, one_step, "x") == "x · ddim, 1 step, no guidance · trained EDT-T/2 digits model"
    # without guidance there is no guided interval or schedule to report
    unguided = request(pipe, guidance_scale=1.0, recommended={"guidance_interval": (0, 800),
                                                              "guidance_schedule": "power-cos"})
    assert unguided.guidance.interval == (0, 800)
    assert status_line(loaded, unguided, "x") == "x · ddim, 4 steps, no guidance · trained EDT-T/2 digits model"


def test_guided_timesteps_on_the_page_replace_the_recommended_ones(pipe):
    recommended = {"guidance_interval": (300, 999), "guidance_schedule": "power-cos"}
    assert request(pipe, recommended=recommended).guidance.interval == (300, 999)  # no page value: the folder's
    for text, interval in (("all", None), ("", None), (" ALL ", None), ("0-800", (0, 800)), (" 5 - 5 ", (5, 5)),
                           ("0-999", (0, 999))):
        checked = request(pipe, guidance_interval=text, recommended=recommended)
        assert (checked.guidance.interval, checked.guidance.schedule) == (interval, "power-cos")
    assert [controls.format_interval(i) for i in (None, (0, 800))] == ["all", "0-800"]
    assert controls.parse_interval(controls.format_interval((120, 640))) == (120, 640)


def test_compare_needs_amm_blocks(pipe):
    with pytest.raises(ValueError, match="AMM is off in every block"):
        compare(pipe, request(pipe, amm_blocks=""))


# ----------------------------------------------------------------------------------------------------------
# Views
# ----------------------------------------------------------------------------------------------------------

def test_amm_heatmap_is_the_matrix_row_of_the_token():
    heat = views.amm_heatmap(16, 3, 5, radius=8.0, scale=0.7)
    expected = modulation_matrix(16, 8.0, 0.7)[3 * 16 + 5].reshape(16, 16).numpy()
    np.testing.assert_array_equal(heat, expected)
    assert heat[3, 5] == heat.max() and heat[15, 15] == 0  # strongest at the token, zero beyond R
    with pytest.raises(ValueError, match="query row must lie in 0..7"):
        views.amm_heatmap(8, 8, 0)


def test_map_token_to_a_coarser_grid():
    assert views.map_token(15, 6, 16, 8) == (7, 3)
    assert views.map_token(15, 6, 16, 16) == (15, 6)


def test_difference_map_and_images():
    off = np.zeros((3, 32, 32, 1))
    on = off.copy()
    on[1, 4, 4] = 0.25
    heat, largest = views.difference_map(off, on)
    assert largest == 0.25 and isinstance(heat, Image.Image)
    assert heat.size == (3 * 128 + 2 * 2, 128)  # three enlarged tiles in a row with gaps
    tiles = views.image_tiles(on)
    assert len(tiles) == 3 and tiles[0].size == (128, 128) and tiles[0].mode == "RGB"


def test_preview_sheet_picks_evenly_spaced_steps_ending_at_the_last():
    assert views.preview_sheet([]) is None  # a latent model records none
    previews = [np.full((2, 32, 32, 1), s / 9) for s in range(10)]
    sheet, caption = views.preview_sheet(previews, count=4)
    assert caption == "predicted clean images, one row per step: after steps 1, 4, 7, 10 of 10"
    rows = np.asarray(sheet)[:, 0, 0]  # the first pixel column: one grey level per row of tiles (white gaps)
    levels = sorted(set(rows.tolist()) - {255})
    assert levels == [round(s / 9 * 255) for s in (0, 3, 6)]  # step 10 is white (1.0), like the gaps
    assert sheet.size[0] == 2 * views.TILE + 2 and sheet.size[1] == 4 * views.TILE + 3 * 2


def test_figures(pipe):
    off, on = compare(pipe, request(pipe))
    panels = views.attention_panels([("AMM off", off.attention), ("AMM on", on.attention)], 10)
    assert [title for title, _ in panels] == ["AMM off: softmax (without AMM)", "AMM on: softmax (without AMM)",
                                              "AMM on: softmax ⊙ AMM (with AMM)"]
    assert isinstance(views.attention_figure(panels, 2, 3, 16, 10), Figure)
    assert isinstance(views.amm_figure(8, 2, 3, None, 0.5), Figure)
    assert isinstance(views.mask_figure(pipe.transformer, 0, "edt", on.images[0]), Figure)
    with pytest.raises(ValueError, match="EDT masking needs an EDT model"):
        views.mask_figure(create_model("DiT-T/2", depth=2, hidden_size=12, num_heads=1), 0, "edt")


def test_cost_markdown_names_the_convention():
    text = views.cost_markdown(create_model("EDT-T/2"))
    assert "GFLOPs = multiply-accumulates, one sample" in text
    assert "| stage 4 |" in text and "trainable parameters" in text


# ----------------------------------------------------------------------------------------------------------
# The page's events (called as Gradio calls them, without a server)
# ----------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page_events():
    """The functions behind the page's events over the demo model (by name; /generate and /compare by their API
    name), the page itself, and the model's facts for the views."""
    store = ModelStore(None, "cpu", demo=True)
    demo = build_app(store)
    events = {getattr(block_fn.fn, "__name__", None): block_fn.fn for block_fn in demo.fns.values()}
    events |= {block_fn.api_name: block_fn.fn for block_fn in demo.fns.values()
               if block_fn.api_name in ("generate", "compare")}
    return events | {"demo": demo, "facts": model_page(store.get(DEFAULT_NAME))["facts"]}


QUICK = dict(model=DEFAULT_NAME, class_name="0", seed=0, num_images=2, sampler="dpm", num_inference_steps=3,
             guidance_scale=3.0, amm_blocks="", released_radius=True, amm_radius=15.0, amm_scale=0.5,
             precision="fp32", guidance_interval="all")


@pytest.fixture
def messages(monkeypatch):
    """The toasts (errors raised, warnings and notes shown) an event gives besides its outputs."""
    shown = []
    for kind in ("Warning", "Info"):
        monkeypatch.setattr(gr, kind, lambda message, *args, _kind=kind, **kwargs: shown.append((_kind, message)))
    return shown


def test_an_api_request_out_of_range_is_an_error_without_a_server_traceback(page_events):
    for change, words in ((dict(class_name="banana"), "unknown class 'banana'"),
                          (dict(num_inference_steps=0), "steps must lie in 1..250, got 0")):
        with pytest.raises(gr.Error) as error:
            page_events["generate"](**QUICK | change, view=None)
        assert words in error.value.message and not error.value.print_exception


@pytest.mark.parametrize("change, words", [
    (dict(num_inference_steps=0), "steps must lie in 1..250, got 0"),  # not clamped to 1 step
    (dict(num_inference_steps=2.5), "steps must be a whole number, got 2.5"),  # not rounded
    (dict(num_images=17), "number of images must lie in 1..16, got 17"),
    (dict(guidance_scale=0.5), "guidance scale must lie in 1.0..10.0, got 0.5"),
    (dict(seed=-1), "seed must lie in 0..2147483647, got -1"),
    (dict(amm_blocks="99"), "AMM block 99 is out of range"),
])
def test_a_refused_run_is_one_message_in_the_status_line_until_the_next_run(page_events, messages, change, words):
    for name, status in (("generate", 1), ("compare", 3)):
        outputs = page_events[name](**QUICK | {"amm_blocks": "10"} | change, view=IMAGES_TAB)
        assert outputs[status].startswith(REFUSED + words)
        others = [out for k, out in enumerate(outputs) if k != status]
        assert all(isinstance(out, type(gr.skip())) for out in others)  # the last images stay as they were
    assert messages == []  # no toast beside it
    _, status, _ = page_events["generate"](**QUICK, view=IMAGES_TAB)
    assert status.startswith("2 images in ") and REFUSED not in status  # the next run replaces the message


def test_the_page_sends_numbers_unchanged_to_the_request_check(page_events):
    """Gradio's sliders clamp a typed number and its fields round or refuse it in their own words: the request's
    numbers are plain fields whose values reach `check_request` as typed, for the page as for the API."""
    demo = page_events["demo"]
    generate = next(block_fn for block_fn in demo.fns.values() if block_fn.api_name == "generate")
    numbers = [c for c in generate.inputs if isinstance(c, (gr.Number, gr.Slider))]
    assert [c.label for c in numbers] == ["seed", "number of images", "steps", "guidance scale",
                                          "radius R (tokens)", "scale k"]
    for component in numbers:
        assert not isinstance(component, gr.Slider) and component.minimum is component.maximum is None
        assert [component.preprocess(v) for v in (0, 2.5, -1, "abc", None)] == [0, 2.5, -1, "abc", None]


def test_a_bad_amm_field_is_one_message_in_the_status_line(page_events, messages):
    outputs = page_events["field_to_boxes"](DEFAULT_NAME, "99", 3.0)
    assert outputs[-1] == REFUSED + "AMM block 99 is out of range: this model has blocks 0..11"
    assert all(isinstance(out, type(gr.skip())) for out in outputs[:-1]) and messages == []
    outputs = page_events["field_to_boxes"](DEFAULT_NAME, " 10, 7", 3.0)
    assert outputs[-2] == "7, 10" and isinstance(outputs[-1], type(gr.skip()))  # a good field keeps the status
    assert page_events["show_amm"](page_events["facts"], 11, 8, 8, False, 0, 0.5)[-1].startswith(
        REFUSED + "AMM radius R must lie in")
    assert page_events["show_masks"](DEFAULT_NAME, "edt", -1, None)[-1] == (
        REFUSED + "mask seed must lie in 0..2147483647, got -1")


def test_the_api_names_its_outputs(page_events):
    endpoints = page_events["demo"].get_api_info()["named_endpoints"]
    assert sorted(endpoints) == ["/compare", "/generate"]
    assert [r["label"] for r in endpoints["/generate"]["returns"]] == [
        "Generate: samples with the AMM blocks as chosen", "status"]
    assert [r["label"] for r in endpoints["/compare"]["returns"]] == [
        "AMM off", "AMM on", "difference |on − off| (scaled to its maximum)", "status"]
    assert [p["parameter_name"] for p in endpoints["/generate"]["parameters"]] == [*QUICK]  # the settings' names


def test_labels_sit_above_the_images_not_on_them(page_events):
    """Gradio's label badge covers an image's top pixels: every image and gallery hides it, under a caption."""
    blocks = list(page_events["demo"].blocks.values())
    captions = {b.value for b in blocks if isinstance(b, gr.Markdown) and "caption" in (b.elem_classes or [])}
    pictures = [b for b in blocks if isinstance(b, (gr.Image, gr.Gallery))]
    assert len(pictures) == 5
    for picture in pictures:
        assert picture.show_label is False and f"**{picture.label}**" in captions, picture.label


def test_a_click_sets_the_gallery_columns_for_the_images_it_asks_for():
    assert [gallery_columns(n, 4)["columns"] for n in (1, 4, 5, 16)] == [4, 4, 6, 6]
    assert gallery_columns(16, 2)["columns"] == 3
    assert isinstance(gallery_columns("abc", 4), type(gr.skip()))  # the run refuses it, in the status line


def test_runs_record_the_views_only_for_a_page(page_events):
    generate = page_events["generate"]
    tiles, status, api_runs = generate(**QUICK, view=None)  # an API client: no view to show
    assert len(tiles) == 2 and status.startswith("2 images in ") and " s · AMM off" in status
    _, status, _ = generate(**{**QUICK, "num_images": 1, "amm_blocks": "7, 10"}, view=None)
    assert status.startswith("1 image in ") and " s · AMM in blocks 7, 10" in status
    assert api_runs["runs"][0][1] == {} and api_runs["previews"] == []
    _, _, runs = generate(**QUICK, view=IMAGES_TAB)  # a page, on another tab: its views can be opened later
    assert len(runs["runs"][0][1]) == 12 and len(runs["previews"]) == 3


def test_only_the_open_tab_draws_its_view(page_events):
    _, _, runs = page_events["generate"](**QUICK, view=IMAGES_TAB)
    query = (runs, page_events["facts"], 11, 8, 8)
    assert all(isinstance(out, type(gr.skip())) for out in show_views(IMAGES_TAB, *query))
    previews, caption, attention = show_views(DENOISING_TAB, *query)
    assert caption.endswith("of 3**") and previews.size == (2 * views.TILE + 2, 3 * views.TILE + 4)
    assert isinstance(attention, type(gr.skip()))
    previews, caption, attention = show_views(ATTENTION_TAB, *query)
    assert isinstance(attention, Figure) and isinstance(previews, type(gr.skip()))
    view, previews, caption, _, status = open_tab(*query, gr.SelectData(None, {"index": 2, "value": DENOISING_TAB}))
    assert view == DENOISING_TAB and caption.endswith("of 3**")  # opening a tab draws the last run's view
    assert isinstance(status, type(gr.skip()))
    latent = {**runs, "previews": []}  # a latent model records no previews: the sheet is emptied
    assert show_views(DENOISING_TAB, latent, *query[1:])[:2] == (None, f"**{PREVIEWS_LABEL}**")


def test_queue_polls_calmly():
    """The served page queues one request at a time and polls at QUEUE_POLL_S, not gradio's 1 ms."""
    demo = build_app(ModelStore(None, "cpu", demo=True))
    demo.queue()
    defaults = {name: getattr(demo._queue, name) for name in QUEUE_POLL_S}  # gradio's own, to compare with
    queue_requests(demo)
    for name, seconds in QUEUE_POLL_S.items():
        assert getattr(demo._queue, name) == seconds > defaults[name]
    assert demo._queue.default_concurrency_limit == 1 and demo._queue.max_size == 32


def test_compare_button_waits_for_amm_blocks():
    store = ModelStore(None, "cpu", demo=True)
    demo = build_app(store)
    wired = [block_fn for block_fn in demo.fns.values() if block_fn.fn is compare_button_state]
    assert len(wired) == 1 and [c.elem_id for c in wired[0].outputs] == ["compare-button"]
    for text, chosen in (("", False), ("off", False), (" None ", False), ("7, 10", True), ("preset", True)):
        update = compare_button_state(text)
        assert update["interactive"] is chosen
        assert update["value"] == COMPARE_LABEL if chosen else update["value"].endswith("choose AMM blocks first")


def test_montage_and_model_store_refuse_what_they_cannot_use(monkeypatch):
    with pytest.raises(ValueError, match="a montage needs at least one image and one column, got 0 and 4"):
        views.montage(np.zeros((0, 8, 8, 1)))
    with pytest.raises(ValueError, match="a montage needs at least one image and one column, got 2 and 0"):
        views.montage(np.zeros((2, 8, 8, 1)), columns=0)
    with pytest.raises(ValueError, match="keep must be at least 1 \\(the model in use\\), got 0"):
        ModelStore(keep=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="^device cuda: no CUDA device is available$"):
        ModelStore(device="cuda")

