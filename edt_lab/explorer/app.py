"""The explorer's page: Gradio components laid out by panel and wired to the plain functions of this package.

    edt-lab app [--host 127.0.0.1] [--port 7860] [--models-dir DIR] [--device auto|cpu|cuda] [--share]
                [--threads N] [--demo]

(`python app.py` in a checkout takes the same options.) API: /generate and /compare, every input with a default,
e.g. gradio_client.Client(url).predict(api_name="/compare").
"""

import argparse
import errno
import functools
import math
import os
import socket
import sys
from dataclasses import dataclass

import gradio as gr
import torch

from ..cli import OneLineParser
from ..masking import masking_strategies
from ..pipeline import SAMPLERS
from ..precision import PRECISIONS
from ..sample import process_device
from . import controls, views
from .models import DEFAULT_NAME, DEMO_NOTE, ModelStore
from .sampling import compare, sample

MAX_GROUPS = 5  # EDT has five stages; a DiT uses the first group only
PAIR_COLUMNS, SAMPLES_COLUMNS = 2, 4  # gallery columns up to 4 images: each of AMM off / on, and Generate's gallery
GALLERY_HEIGHT = "fit-content"  # every row in sight: gradio's "auto" caps a gallery at 55 % of the window and scrolls
GALLERIES = ("#off-gallery", "#on-gallery", "#samples")
# Gradio keeps a gallery tile at least 100 px wide (3 or 6 columns then overflow a narrow window) and stretches one
# image over the whole gallery, and shows an empty inner scrollbar: tiles here shrink with the window down to nothing
# and grow to 200 px at most, square. On a narrow screen, where the columns stack, the buttons and images come first.
PAGE_CSS = "\n".join([
    *(f"{g} .grid-wrap {{ overflow-y: auto; }}" for g in GALLERIES),
    *(f"{g} .grid-container {{ grid-template-columns: repeat(var(--grid-cols), minmax(0, 200px)); "
      f"grid-template-rows: none; grid-auto-rows: auto; }}" for g in GALLERIES),
    # stacked (wrapped), the second column on top; side by side, both from the top (wrap-reverse makes that flex-end)
    "#main-row { flex-wrap: wrap-reverse; align-items: flex-end; }",
])
IMAGES_TAB, ATTENTION_TAB, DENOISING_TAB = "Images", "AMM and attention", "Denoising"
COMPARE_LABEL = "Compare AMM off vs on"
PREVIEWS_LABEL = "predicted clean images x̂₀ during sampling (last run; pixel models)"
INTRO = """# EDT explorer
EDT (Efficient Diffusion Transformer) samples images with a U-shaped token pyramid. Its **Attention Modulation
Matrix (AMM)** multiplies the attention of chosen blocks by a distance-based matrix, without any training:
nearby tokens count more, tokens beyond the radius R not at all. Compare the same noise with AMM off and on,
look at the matrix and at where a token attends, and see what the model costs and how it was trained (masking)."""


def input_error(message: str) -> gr.Error:
    """The error a bad input becomes: shown in the page and the API, without a traceback in the server's log (a
    user's typo is not a server fault)."""
    return gr.Error(message, print_exception=False)


def shows_errors(function):
    """Turn a ValueError (a bad input) into an error message in the page and the API; the server keeps serving."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ValueError as error:
            raise input_error(str(error)) from None
    return wrapper


def refuses_non_numbers(component):
    """`component` (a Number or Slider) refusing an API value that is not a finite number by the field's name.

    Gradio compares a value with its field's range before any handler runs: a string there fails with a TypeError
    that the client sees only as an unexplained error. (The check wraps the instance's preprocess: a subclass
    would make gradio write a type-stub file beside this module.)"""
    preprocess = component.preprocess

    def checked(payload):
        number = isinstance(payload, (int, float)) and not isinstance(payload, bool) and math.isfinite(payload)
        if not number and (payload is not None or isinstance(component, gr.Slider)):  # the handlers refuse a None
            raise input_error(f"{component.label} must be a number, got {payload!r}")
        try:
            return preprocess(payload)
        except gr.Error as error:  # gradio's range check, "Value 0 is less than minimum value 1.0.", names no field
            raise input_error(f"{component.label}: {error.message}") from None

    component.preprocess = checked
    return component


def number_field(*args, **kwargs) -> gr.Number:
    return refuses_non_numbers(gr.Number(*args, **kwargs))


def slider_field(*args, **kwargs) -> gr.Slider:
    return refuses_non_numbers(gr.Slider(*args, **kwargs))


def warns(outputs: int = 1):
    """For page-only events: a ValueError becomes a warning and the outputs stay as they were."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except ValueError as error:
                gr.Warning(str(error))
                return gr.skip() if outputs == 1 else [gr.skip()] * outputs
        return wrapper
    return decorate


def model_page(loaded) -> dict:
    """The values of every control and view that depends on the model."""
    model, init = loaded.pipe.transformer, controls.initial_settings(loaded)
    grids = [info["grid"] for info in model.block_info()]
    return {"init": init, "groups": controls.stage_groups(model),
            "group_values": controls.split_by_group(model, init["blocks"]),
            "classes": controls.class_choices(loaded.pipe),
            "blocks": [(controls.block_label(info), info["block"]) for info in model.block_info()],
            "block": init["blocks"][-1] if init["blocks"] else model.num_blocks - 1,
            "cost": views.cost_markdown(model),
            "strategies": [name for name in masking_strategies(model) if name != "none"],  # "none" draws nothing
            # what the views need later without loading the model again
            "facts": {"grids": grids, "image_grid": max(grids)}}


def describe(store: ModelStore, loaded) -> str:
    """The line under the model picker: what is loaded, and which entries cannot be used."""
    model = loaded.pipe.transformer
    grid = max(info["grid"] for info in model.block_info())
    text = (f"**{loaded.note}**: {type(model).__name__}, {model.num_blocks} blocks, {grid}×{grid} tokens, "
            f"{model.config.num_classes} classes")
    if loaded.is_demo:
        text = (f"⚠️ **{DEMO_NOTE}**, an EDT-T/2: its images are noise. The page switches to the trained "
                f"digits model by itself once that model is exported into the project.")
    problems = store.problems()
    return text + ("\n\nModels that cannot be used: " + "; ".join(problems) if problems else "")


# ----------------------------------------------------------------------------------------------------------
# Layout: one function per panel, each returning its components by name
# ----------------------------------------------------------------------------------------------------------

@dataclass
class Page:
    """The components that events read or write."""

    model: gr.Dropdown
    note: gr.Markdown
    # the request
    class_name: gr.Dropdown
    seed: gr.Number
    num_images: gr.Slider
    sampler: gr.Radio
    steps: gr.Slider
    guidance: gr.Slider
    guided_timesteps: gr.Textbox
    precision: gr.Radio
    # AMM
    presets: dict
    boxes: list
    amm_field: gr.Textbox
    released_radius: gr.Checkbox
    radius: gr.Slider
    scale: gr.Slider
    generate_button: gr.Button
    compare_button: gr.Button
    status: gr.Markdown
    # the tabs
    off_gallery: gr.Gallery
    on_gallery: gr.Gallery
    difference: gr.Image
    samples: gr.Gallery
    block: gr.Dropdown
    row: gr.Slider
    col: gr.Slider
    amm_plot: gr.Plot
    attention_plot: gr.Plot
    previews: gr.Gallery
    cost: gr.Markdown
    strategy: gr.Radio
    mask_seed: gr.Number
    mask_button: gr.Button
    mask_plot: gr.Plot
    tabs: gr.Tabs
    # what the views need: the model's token grids; the last run's attention, previews and first image; the open tab
    facts: gr.State
    runs: gr.State
    view: gr.State  # None where no page is open (an API client): then nothing is recorded for the views

    def request_inputs(self) -> list:
        """The inputs of /generate and /compare, in their API order."""
        return [self.model, self.class_name, self.seed, self.num_images, self.sampler, self.steps, self.guidance,
                self.amm_field, self.released_radius, self.radius, self.scale, self.precision, self.guided_timesteps]

    def attention_inputs(self) -> list:
        """The inputs of `show_attention`: the last run and the query token."""
        return [self.runs, self.facts, self.block, self.row, self.col]

    def view_outputs(self) -> list:
        """The views drawn from the last run, in the order `show_views` returns them."""
        return [self.previews, self.attention_plot]


def model_panel(store: ModelStore, first) -> dict:
    """The model picker and the line describing the loaded model."""
    return {"model": gr.Dropdown(store.names(), value=DEFAULT_NAME, label="model", scale=1),
            "note": gr.Markdown(describe(store, first), elem_id="model-note")}


def request_panel(values: dict) -> dict:
    """What to sample: class, seed, number of images, sampler, steps, guidance and its timesteps, precision."""
    init, classes = values["init"], values["classes"]
    return {
        "class_name": gr.Dropdown(classes, value=classes[0], label="class", allow_custom_value=True),
        "seed": number_field(0, label="seed (the same seed gives the same noise)", precision=0, minimum=0,
                          maximum=controls.MAX_SEED),
        "num_images": slider_field(1, controls.MAX_IMAGES, value=4, step=1, label="number of images",
                                   elem_id="num-images"),
        "sampler": gr.Radio(list(SAMPLERS), value=init["sampler"], label="sampler"),
        "steps": slider_field(1, controls.MAX_STEPS, value=init["steps"], step=1, label="steps"),
        "guidance": slider_field(1.0, controls.MAX_GUIDANCE, value=init["guidance"], step=0.1,
                              label="guidance scale (1 = no guidance)"),
        "guided_timesteps": gr.Textbox(init["guided_timesteps"], label="guided timesteps",
                                       info="all, or LOW-HIGH: guide only the steps whose timestep t lies in it "
                                            "(999 = pure noise); the others run the conditional model alone"),
        "precision": gr.Radio(list(PRECISIONS), value=controls.PRECISION_DEFAULT, label="precision",
                              info="auto: bf16 where the hardware computes it natively (faster), else fp32"),
    }


def amm_panel(values: dict) -> dict:
    """Where the AMM acts (presets, one toggle group per stage, the block field) and its radius and scale."""
    init, groups = values["init"], values["groups"]
    with gr.Accordion("AMM: which blocks, radius R and scale k", open=True):
        with gr.Row():
            presets = {key: gr.Button(text, size="sm") for key, text in controls.PRESETS.items()}
        boxes = [gr.CheckboxGroup(g["choices"], value=v, label=g["label"])
                 for g, v in zip(groups, values["group_values"])]
        boxes += [gr.CheckboxGroup([], value=[], visible=False) for _ in range(MAX_GROUPS - len(groups))]
        return {
            "presets": presets, "boxes": boxes,
            "amm_field": gr.Textbox(controls.format_blocks(init["blocks"]), label="AMM blocks", elem_id="amm-field",
                                    info="block indices (toggles above: block · token grid · phase); empty = off; "
                                         "applied on Enter or on leaving the field"),
            "released_radius": gr.Checkbox(init["released_radius"], elem_id="released-radius",
                                           label="released radius of each block's grid, R = √((n−1)² + 4)"),
            "radius": slider_field(*controls.RADIUS_RANGE, value=round(init["radius"], 3), step=0.001,
                                label="radius R (tokens)", interactive=not init["released_radius"], elem_id="radius",
                                info=f"paper default on the 16×16 grid: √229 ≈ {controls.RADIUS_DEFAULT:.2f}; "
                                     f"used for every AMM block when the box above is off"),
            "scale": slider_field(*controls.SCALE_RANGE, value=init["scale"], step=0.01, label="scale k",
                               info=f"paper default k = {controls.SCALE_DEFAULT}"),
        }


def run_buttons() -> dict:
    """Generate, Compare and the status line under them."""
    with gr.Row():
        buttons = {"generate_button": gr.Button("Generate", elem_id="generate-button"),
                   "compare_button": gr.Button(COMPARE_LABEL, variant="primary", elem_id="compare-button")}
    return {**buttons, "status": gr.Markdown(elem_id="status")}


def images_tab() -> dict:
    """AMM off and on side by side, their difference, and Generate's samples."""
    with gr.Tab(IMAGES_TAB):
        with gr.Row():
            galleries = {f"{side}_gallery": gr.Gallery(label=f"AMM {side}", columns=PAIR_COLUMNS, height=GALLERY_HEIGHT,
                                                         format="png", elem_id=f"{side}-gallery")
                         for side in ("off", "on")}
        return {**galleries,
                "difference": gr.Image(label="difference |on − off| (scaled to its maximum)", type="pil",
                                       format="png", elem_id="difference"),
                "samples": gr.Gallery(label="Generate: samples with the AMM blocks as chosen", columns=SAMPLES_COLUMNS,
                                      height=GALLERY_HEIGHT, format="png", elem_id="samples")}


def attention_tab(values: dict) -> dict:
    """A block and a query token; the AMM row and the attention of that token."""
    last, middle = values["facts"]["image_grid"] - 1, values["facts"]["image_grid"] // 2
    with gr.Tab(ATTENTION_TAB):
        with gr.Row():
            query = {"block": gr.Dropdown(values["blocks"], value=values["block"], label="block"),
                     "row": slider_field(0, last, value=middle, step=1, label="query token row"),
                     "col": slider_field(0, last, value=middle, step=1, label="query token column")}
        gr.Markdown("The query token is on the image's token grid; a block with a coarser grid uses the token that "
                    "covers the same place. The AMM row follows the controls at once; the attention below it is "
                    "that of the last Generate or Compare (none before the first).")
        return {**query,
                "amm_plot": gr.Plot(label="the AMM row of the query token (current R and k)", show_label=False),
                "attention_plot": gr.Plot(label="attention of the query token (last Generate or Compare)",
                                          show_label=False, elem_id="attention-plot")}


def denoising_tab() -> dict:
    """The predicted clean images after each sampling step."""
    with gr.Tab(DENOISING_TAB):
        gr.Markdown("The model's prediction of the clean image after each sampling step of the last Generate or "
                    "Compare (none before the first): one row per step, one column per image.")
        # an Image, not a Gallery: a gallery crops a tall sheet to its tile and hides the last steps
        return {"previews": gr.Image(label=PREVIEWS_LABEL, type="pil", format="png", interactive=False,
                                     elem_id="previews")}


def cost_tab(values: dict) -> dict:
    """The model's cost by stage."""
    with gr.Tab("Cost"):
        return {"cost": gr.Markdown(values["cost"])}


def masking_tab(values: dict) -> dict:
    """The keep-masks of one masked training pass."""
    with gr.Tab("Masking (training)"):
        gr.Markdown("EDT trains with a second, masked pass: tokens entering each down-sampling module are dropped at "
                    "random, so the blocks before must spread information across tokens; MDTv2 removes tokens from "
                    "its encoder instead (mdt). These are the masks one such pass would draw (over the last image).")
        with gr.Row():
            inputs = {"strategy": gr.Radio(values["strategies"], value=values["strategies"][0], label="strategy",
                                           info="the masked passes this model can train with", elem_id="strategy"),
                      "mask_seed": number_field(0, label="mask seed", precision=0, minimum=0,
                                                maximum=controls.MAX_SEED),
                      "mask_button": gr.Button("Draw masks")}
        return {**inputs, "mask_plot": gr.Plot(label="keep-masks", show_label=False)}


# ----------------------------------------------------------------------------------------------------------
# Events: one function per concern
# ----------------------------------------------------------------------------------------------------------

@warns()
def show_attention(runs, facts, block, row, col):
    """Attention maps of the last run for the query token in `block` (None before any run)."""
    if not runs or block is None:
        return None
    n = facts["grids"][int(block)]
    token = views.map_token(row, col, facts["image_grid"], n)
    return views.attention_figure(views.attention_panels(runs["runs"], int(block)), *token, n, int(block))


def show_views(view, runs, facts, block, row, col) -> tuple:
    """The last run's previews or attention figure, whichever tab is open; a closed tab's view is drawn when it is
    opened (`open_tab`), so a run does not draw and send figures that no one sees."""
    if runs and view == DENOISING_TAB:
        sheet = views.preview_sheet(runs["previews"])
        previews = gr.update(value=sheet[0], label=sheet[1]) if sheet else gr.update(value=None, label=PREVIEWS_LABEL)
    else:
        previews = gr.skip()
    attention = show_attention(runs, facts, block, row, col) if view == ATTENTION_TAB else gr.skip()
    return previews, attention


def open_tab(runs, facts, block, row, col, event: gr.SelectData) -> tuple:
    """Remember the tab just opened and draw its view of the last run."""
    return event.value, *show_views(event.value, runs, facts, block, row, col)


@warns()
def show_amm(facts, block, row, col, released_radius, radius, scale):
    """The AMM row of the query token on the grid of `block`."""
    n = facts["grids"][int(block)]
    token = views.map_token(row, col, facts["image_grid"], n)
    return views.amm_figure(n, *token, None if released_radius else radius, scale)


def wire_model_picker(demo: gr.Blocks, store: ModelStore, page: Page) -> None:
    """Choosing a model (and loading the page) sets every control and view that depends on the model."""

    def show_model(name):
        """A model that fails to load leaves the picker, and the page shows the default."""
        try:
            loaded = store.get(name)
        except ValueError as error:
            if name == DEFAULT_NAME:
                raise gr.Error(str(error)) from None
            gr.Warning(str(error))
            return show_model(DEFAULT_NAME)
        values = model_page(loaded)
        init, groups = values["init"], values["groups"]
        group_updates = [gr.update(label=g["label"], choices=g["choices"], value=v, visible=True)
                         for g, v in zip(groups, values["group_values"])]
        group_updates += [gr.update(choices=[], value=[], visible=False)] * (MAX_GROUPS - len(groups))
        last = values["facts"]["image_grid"] - 1
        return [gr.update(choices=store.names(), value=name), describe(store, loaded),
                gr.update(choices=values["classes"], value=values["classes"][0]), init["sampler"], init["steps"],
                init["guidance"], init["guided_timesteps"], *group_updates, controls.format_blocks(init["blocks"]),
                init["released_radius"], round(init["radius"], 3), init["scale"],
                gr.update(choices=values["blocks"], value=values["block"]),
                gr.update(maximum=last, value=last // 2), gr.update(maximum=last, value=last // 2),
                values["cost"], values["facts"], gr.update(choices=values["strategies"], value=values["strategies"][0])]

    outputs = [page.model, page.note, page.class_name, page.sampler, page.steps, page.guidance,
               page.guided_timesteps, *page.boxes, page.amm_field, page.released_radius, page.radius, page.scale,
               page.block, page.row, page.col, page.cost, page.facts, page.strategy]
    page.model.select(show_model, page.model, outputs, concurrency_id="model", api_visibility="private")
    demo.load(show_model, page.model, outputs, concurrency_id="model", api_visibility="private")


def compare_button_state(amm_blocks: str):
    """Compare needs AMM blocks to compare with: without any, the button says so and waits."""
    chosen = str(amm_blocks).strip().lower() not in controls.AMM_OFF
    label = COMPARE_LABEL if chosen else f"{COMPARE_LABEL}: choose AMM blocks first"
    return gr.update(interactive=chosen, value=label)


def wire_amm_blocks(store: ModelStore, page: Page) -> None:
    """The per-stage toggles, the presets and the AMM text field stay in step."""

    def boxes_to_field(*group_values):
        return controls.format_blocks(b for values in group_values for b in values)

    @warns(outputs=MAX_GROUPS + 1)
    def field_to_boxes(name, amm_blocks, guidance_scale, preset=None):
        """The toggles (and the tidied field) from the AMM field, or from a preset."""
        loaded = store.get(name)
        model = loaded.pipe.transformer
        blocks = (controls.preset_blocks(model, preset, guidance_scale, controls.initial_settings(loaded)["blocks"])
                  if preset else controls.parse_blocks(amm_blocks, model, guidance_scale))
        values = controls.split_by_group(model, blocks)
        return [*values, *[[]] * (MAX_GROUPS - len(values)), controls.format_blocks(blocks)]

    for box in page.boxes:
        box.input(boxes_to_field, page.boxes, page.amm_field, queue=False, api_visibility="private")  # instant
    page.amm_field.change(compare_button_state, page.amm_field, page.compare_button, queue=False,
                          api_visibility="private")
    inputs, outputs = [page.model, page.amm_field, page.guidance], [*page.boxes, page.amm_field]
    page.amm_field.submit(field_to_boxes, inputs, outputs, api_visibility="private")
    # Generate reads the field as it is, so leaving it applies it too: the toggles never show other blocks
    page.amm_field.blur(field_to_boxes, inputs, outputs, api_visibility="private")
    for key, button in page.presets.items():
        button.click(functools.partial(field_to_boxes, preset=key), inputs, outputs, api_visibility="private")
    # the released radius of each block's grid replaces the slider's: the slider waits while it is ticked
    page.released_radius.change(lambda released: gr.update(interactive=not released), page.released_radius,
                                page.radius, queue=False, api_visibility="private")


def block_words(blocks) -> str:
    """"block 10", "blocks 7, 10" or "no block"."""
    blocks = list(blocks)
    return f"block{'s' if len(blocks) > 1 else ''} {controls.format_blocks(blocks)}" if blocks else "no block"


def gallery_columns(num_images, columns: int) -> dict:
    """The columns of a gallery about to show `num_images` images: `columns` up to 4 images, half as many again
    beyond, so that 16 images fit the page's height in tiles of a readable size."""
    return gr.update(columns=columns if num_images <= 4 else columns * 3 // 2)


def status_line(loaded, request, timings: str) -> str:
    """The timings, the sampler, its steps and the guidance with its shape (a schedule the model's folder recommends,
    the guided timesteps) and which model ran."""
    guided = request.guidance > 1
    shape = [f"{request.cfg_schedule} schedule, as the model recommends"] \
        if guided and request.cfg_schedule != "constant" else []
    if guided and request.guidance_interval is not None:
        shape.append("guided at t {}-{} only".format(*request.guidance_interval))
    guidance = f"guidance {request.guidance:g}" if guided else "no guidance"
    shape = f" ({', '.join(shape)})" if shape else ""
    return (f"{timings} · {request.sampler}, {request.steps} steps, {guidance}{shape} · "
            f"{DEMO_NOTE if loaded.is_demo else loaded.note}")


def wire_sampling(store: ModelStore, page: Page) -> None:
    """Generate and Compare (the /generate and /compare API), then the open tab's view of the new run."""

    def checked(model, *values):
        loaded = store.get(model)
        return loaded, controls.check_request(loaded.pipe, *values, recommended=loaded.recommended)

    # A page records every run's attention and previews (one step's explicit attention, about 1 % of a call on
    # the digits model), so the attention and denoising tabs show the last run whenever they are opened; an API
    # client (no page, view None) has no view to show them.
    @shows_errors
    def generate(model, class_name, seed, num_images, sampler, steps, guidance_scale, amm_blocks,
                 released_radius, radius, scale, precision, guided_timesteps, view, progress=gr.Progress()):
        """Images of one class with AMM in the chosen blocks, and a status line."""
        loaded, request = checked(model, class_name, seed, num_images, sampler, steps, guidance_scale,
                                  amm_blocks, released_radius, radius, scale, precision, guided_timesteps)
        run = sample(loaded.pipe, request, progress=lambda done, text: progress(done, desc=text),
                     record_views=view is not None)
        amm = f"AMM in {block_words(run.amm_blocks)}" if run.amm_blocks else "AMM off"
        runs = {"runs": [(amm, run.attention)], "previews": run.previews, "image": run.images[0]}
        count = len(run.images)
        timings = f"{count} image{'s' if count > 1 else ''} in {run.seconds:.2f} s · {amm}"
        return views.image_tiles(run.images), status_line(loaded, request, timings), runs

    @shows_errors
    def compare_amm(model, class_name, seed, num_images, sampler, steps, guidance_scale, amm_blocks,
                    released_radius, radius, scale, precision, guided_timesteps, view, progress=gr.Progress()):
        """The same noise with AMM off and on: both image sets, their difference and a status line."""
        loaded, request = checked(model, class_name, seed, num_images, sampler, steps, guidance_scale,
                                  amm_blocks, released_radius, radius, scale, precision, guided_timesteps)
        off, on = compare(loaded.pipe, request, progress=lambda done, text: progress(done, desc=text),
                          record_views=view is not None)
        heat, largest = views.difference_map(off.images, on.images)
        runs = {"runs": [("AMM off", off.attention), ("AMM on", on.attention)], "previews": on.previews,
                "image": on.images[0]}
        timings = (f"AMM off {off.seconds:.2f} s · AMM on ({block_words(on.amm_blocks)}) {on.seconds:.2f} s · "
                   f"largest |on − off| = {largest:.3f}")
        status = status_line(loaded, request, timings)
        return views.image_tiles(off.images), views.image_tiles(on.images), heat, status, runs

    # A click also sets the columns of the galleries it fills, on the page only (the API's outputs stay plain lists
    # of images) and at once, so the new images arrive in their layout.
    page.generate_button.click(functools.partial(gallery_columns, columns=SAMPLES_COLUMNS), page.num_images,
                               page.samples, queue=False, api_visibility="private")
    page.compare_button.click(lambda num_images: [gallery_columns(num_images, PAIR_COLUMNS)] * 2, page.num_images,
                              [page.off_gallery, page.on_gallery], queue=False, api_visibility="private")
    inputs, view_inputs = [*page.request_inputs(), page.view], [page.view, *page.attention_inputs()]
    page.generate_button.click(generate, inputs, [page.samples, page.status, page.runs], api_name="generate",
                               concurrency_id="model").then(
        show_views, view_inputs, page.view_outputs(), api_visibility="private")
    compare_outputs = [page.off_gallery, page.on_gallery, page.difference, page.status, page.runs]
    page.compare_button.click(compare_amm, inputs, compare_outputs, api_name="compare", concurrency_id="model").then(
        show_views, view_inputs, page.view_outputs(), api_visibility="private")


def wire_views(demo: gr.Blocks, store: ModelStore, page: Page) -> None:
    """The AMM, attention and mask figures follow the query token, the AMM settings and the mask controls."""

    @warns()
    def show_masks(model, strategy, seed, runs):
        """The training masks of one masked pass, over the last image."""
        image = runs["image"] if runs else None
        return views.mask_figure(store.get(model).pipe.transformer, controls.check_seed(seed, "mask seed"), strategy,
                                 image)

    query = (page.block, page.row, page.col)
    for control in query:
        control.change(show_attention, page.attention_inputs(), page.attention_plot, api_visibility="private")
    amm_inputs = [page.facts, *query, page.released_radius, page.radius, page.scale]
    for control in (*query, page.released_radius, page.radius, page.scale):
        control.change(show_amm, amm_inputs, page.amm_plot, api_visibility="private")
    demo.load(show_amm, amm_inputs, page.amm_plot, api_visibility="private")
    demo.load(lambda: IMAGES_TAB, None, page.view, api_visibility="private")  # a page is open: record for its views
    page.tabs.select(open_tab, page.attention_inputs(), [page.view, *page.view_outputs()], api_visibility="private")
    page.mask_button.click(show_masks, [page.model, page.strategy, page.mask_seed, page.runs], page.mask_plot,
                           concurrency_id="model", api_visibility="private")


def build_app(store: ModelStore) -> gr.Blocks:
    """The page over the models of `store`; the default model's settings are the inputs' (and the API's) defaults."""
    first = store.get(DEFAULT_NAME)
    values = model_page(first)
    with gr.Blocks(title="EDT explorer", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            parts = model_panel(store, first)
        with gr.Row(elem_id="main-row"):
            with gr.Column(scale=1, min_width=320):
                parts |= request_panel(values) | amm_panel(values)
            with gr.Column(scale=2):
                parts |= run_buttons()  # above the views, where they are in sight without scrolling past the controls
                with gr.Tabs() as tabs:
                    parts |= (images_tab() | attention_tab(values) | denoising_tab() | cost_tab(values)
                              | masking_tab(values))
        page = Page(**parts, tabs=tabs, facts=gr.State(values["facts"]), runs=gr.State(None), view=gr.State(None))
        wire_model_picker(demo, store, page)
        wire_amm_blocks(store, page)
        wire_sampling(store, page)
        wire_views(demo, store, page)
    return demo


# ----------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (0..65535)")
    parser.add_argument("--models-dir", help="folder of pipeline folders and .pt/.pth/.safetensors files "
                                             "(a latent model's VAE in vae/ beside them)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is faster "
                                                    "for the tiny digits model on a busy machine)")
    parser.add_argument("--demo", action="store_true",
                        help=f"serve the {DEMO_NOTE} as the default even when the trained one exists (tests)")


# Gradio's queue checks for new requests every 1 ms and for progress every 10 ms, even while a request is running.
# The sampling thread shares the GIL and, on a small CPU, the cores with that loop, which slows sampling
# (benchmarks/queue_polling.py, docs/performance.md). Polling every 20 ms delays a request's start by at
# most that, and progress still updates 20 times a second.
QUEUE_POLL_S = {"sleep_when_free": 0.02, "progress_update_sleep_when_free": 0.05}


def set_queue_polling(demo: gr.Blocks, intervals: dict) -> None:
    """Set the polling intervals (seconds, by QUEUE_POLL_S's names) of `demo`'s queue, after demo.queue().

    They are attributes of gradio's Queue, not options of queue(); a gradio without them is an error here (and in
    the tests), rather than a silent return to 1 ms polling."""
    for name, seconds in intervals.items():
        if not hasattr(demo._queue, name):
            raise RuntimeError(f"gradio {gr.__version__}'s queue has no {name}: update QUEUE_POLL_S")
        setattr(demo._queue, name, seconds)


def queue_requests(demo: gr.Blocks) -> None:
    """One request at a time (the model is shared), at most 32 waiting, the queue polling every QUEUE_POLL_S."""
    demo.queue(default_concurrency_limit=1, max_size=32)
    set_queue_polling(demo, QUEUE_POLL_S)


def check_address(host: str, port: int) -> None:
    """Bind host:port once and let it go, so that an address that is not this machine's, or a busy port, is one
    line before the models load (at launch, uvicorn would print its own error first)."""
    if ":" in host:  # gradio writes the server's URL as http://HOST:PORT, which an IPv6 address breaks
        raise ValueError(f"--host {host}: IPv6 addresses are not supported (gradio's server URL has no brackets); "
                         f"use 127.0.0.1, 0.0.0.0 or a host name")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            # as uvicorn binds: a port left in TIME_WAIT by a server just stopped is free, one with a listener not
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        why = "the port is in use" if error.errno == errno.EADDRINUSE else "not an address of this machine"
        raise ValueError(f"cannot serve on {host}:{port}: {why}") from None


def run(args: argparse.Namespace) -> None:
    """Serve the page until interrupted; ValueError for options no server can use."""
    if args.threads is not None and not 1 <= args.threads <= os.cpu_count():
        raise ValueError(f"--threads must lie in 1..{os.cpu_count()} (this machine's CPUs), got {args.threads}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must lie in 0..65535, got {args.port}")
    check_address(args.host, args.port)
    if args.threads:
        torch.set_num_threads(args.threads)
    store = ModelStore(args.models_dir, process_device(args.device), demo=args.demo)
    demo = build_app(store)
    queue_requests(demo)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # local fonts only: the page works offline
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=theme, css=PAGE_CSS)
    except OSError:  # taken since check_address; gradio reports every failed bind as "Cannot find empty port"
        raise ValueError(f"cannot serve on {args.host}:{args.port}: the port is in use, or the address is not one "
                         f"of this machine's") from None


def main(argv=None, prog: str = "app.py") -> int:
    """`python app.py ...`: like every command of the project, a bad option is one line and exit code 2."""
    parser = OneLineParser(prog=prog, description="The EDT web explorer.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0
