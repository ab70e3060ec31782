"""The explorer's page: Gradio components laid out by panel, each panel a function returning its components by
name, and the values that depend on the model (`model_page`). Events (events.py) wire them to the plain functions
of this package; server.py builds and serves the page.

Labels sit above the images, never on them (gradio's label badge covers an image's top pixels). Number fields are
plain numbers: the request's check (controls.check_request), the same for the page and the API, refuses what is
out of range with its message, where gradio's fields would clamp it or refuse it in their own words.
"""

from dataclasses import dataclass

import gradio as gr

from ..masking import masking_strategies
from ..precision import PRECISIONS
from ..settings import SAMPLERS
from . import controls, views
from .model_folders import DEFAULT_NAME, DEMO_NOTE, ModelStore

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
DIFFERENCE_LABEL = "difference |on − off| (scaled to its maximum)"
SAMPLES_LABEL = "Generate: samples with the AMM blocks as chosen"
INTRO = """# EDT explorer
EDT (Efficient Diffusion Transformer) samples images with a U-shaped token pyramid. Its **Attention Modulation
Matrix (AMM)** multiplies the attention of chosen blocks by a distance-based matrix, without any training:
nearby tokens count more, tokens beyond the radius R not at all. Compare the same noise with AMM off and on,
look at the matrix and at where a token attends, and see what the model costs and how it was trained (masking)."""


def number_field(value, label: str, info: str, **kwargs) -> gr.Number:
    """A number field that leaves every check to the request's: no range of gradio's, which would clamp or refuse
    in its own words, and no rounding (2.5 steps is refused, not run as 2)."""
    return gr.Number(value, label=label, info=info, precision=None, **kwargs)


def caption_text(text: str) -> str:
    """A caption's markdown."""
    return f"**{text}**"


def caption(text: str, **kwargs) -> gr.Markdown:
    """The label of the image or gallery below it, set outside the image."""
    return gr.Markdown(caption_text(text), elem_classes=["caption"], **kwargs)


def model_page(loaded) -> dict:
    """The values of every control and view that depends on the model."""
    model, init = loaded.pipe.transformer, controls.initial_settings(loaded)
    grids = [info["grid"] for info in model.block_info()]
    return {"init": init, "groups": controls.stage_groups(model),
            "group_values": controls.split_by_group(model, init["amm_blocks"]),
            "classes": controls.class_choices(loaded.pipe),
            "blocks": [(controls.block_label(info), info["block"]) for info in model.block_info()],
            "block": init["amm_blocks"][-1] if init["amm_blocks"] else model.num_blocks - 1,
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


@dataclass
class Page:
    """The components that events read or write."""

    model: gr.Dropdown
    note: gr.Markdown
    # the request, named as the sampling settings (edt_lab/settings.py)
    class_name: gr.Dropdown
    seed: gr.Number
    num_images: gr.Number
    sampler: gr.Radio
    num_inference_steps: gr.Number
    guidance_scale: gr.Number
    guidance_interval: gr.Textbox
    precision: gr.Radio
    # AMM
    presets: dict
    boxes: list
    amm_blocks: gr.Textbox
    released_radius: gr.Checkbox
    amm_radius: gr.Number
    amm_scale: gr.Number
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
    previews: gr.Image
    previews_caption: gr.Markdown
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
        return [self.model, self.class_name, self.seed, self.num_images, self.sampler, self.num_inference_steps,
                self.guidance_scale, self.amm_blocks, self.released_radius, self.amm_radius, self.amm_scale,
                self.precision, self.guidance_interval]

    def attention_inputs(self) -> list:
        """The inputs of `show_attention`: the last run and the query token."""
        return [self.runs, self.facts, self.block, self.row, self.col]

    def view_outputs(self) -> list:
        """The views drawn from the last run, in the order `show_views` returns them."""
        return [self.previews, self.previews_caption, self.attention_plot]


def model_panel(store: ModelStore, first) -> dict:
    """The model picker and the line describing the loaded model."""
    return {"model": gr.Dropdown(store.names(), value=DEFAULT_NAME, label="model", scale=1),
            "note": gr.Markdown(describe(store, first), elem_id="model-note")}


def request_panel(values: dict) -> dict:
    """What to sample: class, seed, number of images, sampler, steps, guidance and its timesteps, precision."""
    init, classes = values["init"], values["classes"]
    return {
        "class_name": gr.Dropdown(classes, value=classes[0], label="class", allow_custom_value=True),
        "seed": number_field(0, "seed", f"0..{controls.MAX_SEED}; the same seed gives the same noise"),
        "num_images": number_field(4, "number of images", f"1..{controls.MAX_IMAGES}", elem_id="num-images"),
        "sampler": gr.Radio(list(SAMPLERS), value=init["sampler"], label="sampler"),
        "num_inference_steps": number_field(init["num_inference_steps"], "steps", f"1..{controls.MAX_STEPS}",
                                            elem_id="steps"),
        "guidance_scale": number_field(init["guidance_scale"], "guidance scale",
                                       f"1..{controls.MAX_GUIDANCE:g}; 1 = no guidance", step=0.1),
        "guidance_interval": gr.Textbox(init["guidance_interval"], label="guided timesteps",
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
        low, high = controls.RADIUS_RANGE
        return {
            "presets": presets, "boxes": boxes,
            "amm_blocks": gr.Textbox(controls.format_blocks(init["amm_blocks"]), label="AMM blocks",
                                     elem_id="amm-field",
                                     info="block indices (toggles above: block · token grid · phase); empty = off; "
                                          "applied on Enter or on leaving the field"),
            "released_radius": gr.Checkbox(init["released_radius"], elem_id="released-radius",
                                           label="released radius of each block's grid, R = √((n−1)² + 4)"),
            "amm_radius": number_field(round(init["amm_radius"], 3), "radius R (tokens)",
                                       f"{low:g}..{high:g}; paper default on the 16×16 grid: √229 ≈ "
                                       f"{controls.RADIUS_DEFAULT:.2f}; used for every AMM block when the box above "
                                       f"is off", step=0.01, interactive=not init["released_radius"],
                                       elem_id="radius"),
            "amm_scale": number_field(init["amm_scale"], "scale k",
                                      "{:g}..{:g}; paper default k = {}".format(*controls.SCALE_RANGE,
                                                                               controls.SCALE_DEFAULT), step=0.01),
        }


def run_buttons() -> dict:
    """Generate, Compare and the status line under them: the timings of a run, or why a request was refused."""
    with gr.Row():
        buttons = {"generate_button": gr.Button("Generate", elem_id="generate-button"),
                   "compare_button": gr.Button(COMPARE_LABEL, variant="primary", elem_id="compare-button")}
    # labelled for the API (its output "status"), the label not shown on the page
    return {**buttons, "status": gr.Markdown(label="status", show_label=False, elem_id="status")}


def images_tab() -> dict:
    """AMM off and on side by side, their difference, and Generate's samples, each under its caption."""
    with gr.Tab(IMAGES_TAB):
        galleries = {}
        with gr.Row():
            for side in ("off", "on"):
                with gr.Column():
                    caption(f"AMM {side}")
                    galleries[f"{side}_gallery"] = gr.Gallery(label=f"AMM {side}", show_label=False,
                                                              columns=PAIR_COLUMNS, height=GALLERY_HEIGHT,
                                                              format="png", elem_id=f"{side}-gallery")
        caption(DIFFERENCE_LABEL)
        difference = gr.Image(label=DIFFERENCE_LABEL, show_label=False, type="pil", format="png",
                              elem_id="difference")
        caption(SAMPLES_LABEL)
        samples = gr.Gallery(label=SAMPLES_LABEL, show_label=False, columns=SAMPLES_COLUMNS, height=GALLERY_HEIGHT,
                             format="png", elem_id="samples")
        return {**galleries, "difference": difference, "samples": samples}


def attention_tab(values: dict) -> dict:
    """A block and a query token; the AMM row and the attention of that token."""
    last, middle = values["facts"]["image_grid"] - 1, values["facts"]["image_grid"] // 2
    with gr.Tab(ATTENTION_TAB):
        with gr.Row():
            query = {"block": gr.Dropdown(values["blocks"], value=values["block"], label="block"),
                     "row": gr.Slider(0, last, value=middle, step=1, label="query token row"),
                     "col": gr.Slider(0, last, value=middle, step=1, label="query token column")}
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
        return {"previews_caption": caption(PREVIEWS_LABEL, elem_id="previews-caption"),
                "previews": gr.Image(label=PREVIEWS_LABEL, show_label=False, type="pil", format="png",
                                     interactive=False, elem_id="previews")}


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
                      "mask_seed": number_field(0, "mask seed", f"0..{controls.MAX_SEED}"),
                      "mask_button": gr.Button("Draw masks")}
        return {**inputs, "mask_plot": gr.Plot(label="keep-masks", show_label=False)}


def build_page(store: ModelStore) -> Page:
    """The page's components over the models of `store`, inside an open gr.Blocks; the default model's settings are
    the inputs' (and the API's) defaults."""
    first = store.get(DEFAULT_NAME)
    values = model_page(first)
    gr.Markdown(INTRO)
    with gr.Row():
        parts = model_panel(store, first)
    with gr.Row(elem_id="main-row"):
        with gr.Column(scale=1, min_width=320):
            parts |= request_panel(values) | amm_panel(values)
        with gr.Column(scale=2):
            parts |= run_buttons()  # above the views, where they are in sight without scrolling past the controls
            with gr.Tabs() as tabs:
                parts |= images_tab() | attention_tab(values) | denoising_tab() | cost_tab(values) | masking_tab(values)
    return Page(**parts, tabs=tabs, facts=gr.State(values["facts"]), runs=gr.State(None), view=gr.State(None))
