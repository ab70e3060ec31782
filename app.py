"""The EDT web explorer: AMM off vs on, attention maps, denoising previews, cost and masks, in the browser.

    python app.py [--host 127.0.0.1] [--port 7860] [--models-dir DIR] [--device auto|cpu|cuda] [--share]
                  [--threads N] [--demo]

This file only wires the page; the logic lives in edt_lab/explorer as plain, tested functions.
API: /generate and /compare (every input has a default), e.g. gradio_client.Client(url).predict(api_name="/compare").
"""

import argparse
import functools
import sys

import gradio as gr
import torch

from edt_lab.explorer import controls, views
from edt_lab.explorer.models import DEFAULT_NAME, DEMO_NOTE, ModelStore, resolve_device
from edt_lab.explorer.sampling import compare, sample
from edt_lab.pipeline import SAMPLERS

MAX_GROUPS = 5  # EDT has five stages; a DiT uses the first group only
INTRO = """# EDT explorer
EDT (Efficient Diffusion Transformer) samples images with a U-shaped token pyramid. Its **Attention Modulation
Matrix (AMM)** multiplies the attention of chosen blocks by a distance-based matrix, without any training:
nearby tokens count more, tokens beyond the radius R not at all. Compare the same noise with AMM off and on,
look at the matrix and at where a token attends, and see what the model costs and how it was trained (masking)."""


def shows_errors(function):
    """Turn a ValueError (a bad input) into an error message in the page and the API; the server keeps serving."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except ValueError as error:
            raise gr.Error(str(error)) from None
    return wrapper


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
            # what the views need later without loading the model again
            "facts": {"grids": grids, "image_grid": max(grids)}}


def build_app(store: ModelStore) -> gr.Blocks:
    """The page over the models of `store`; the default model's settings are the inputs' (and the API's) defaults."""

    def describe(loaded) -> str:
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

    first = store.get(DEFAULT_NAME)
    page = model_page(first)
    init, groups, classes, facts = page["init"], page["groups"], page["classes"], page["facts"]
    middle = facts["image_grid"] // 2

    with gr.Blocks(title="EDT explorer", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            model_picker = gr.Dropdown(store.names(), value=DEFAULT_NAME, label="model", scale=1)
            model_note = gr.Markdown(describe(first), elem_id="model-note")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                class_picker = gr.Dropdown(classes, value=classes[0], label="class", allow_custom_value=True)
                seed_box = gr.Number(0, label="seed (the same seed gives the same noise)", precision=0, minimum=0,
                                     maximum=controls.MAX_SEED)
                count_slider = gr.Slider(1, controls.MAX_IMAGES, value=4, step=1, label="number of images")
                sampler_radio = gr.Radio(list(SAMPLERS), value=init["sampler"], label="sampler")
                steps_slider = gr.Slider(1, controls.MAX_STEPS, value=init["steps"], step=1, label="steps")
                guidance_slider = gr.Slider(1.0, controls.MAX_GUIDANCE, value=init["guidance"], step=0.1,
                                            label="guidance scale (1 = no guidance)")
                precision_radio = gr.Radio(list(controls.PRECISIONS), value=controls.PRECISION_DEFAULT,
                                           label="precision", info="auto: bf16 where the hardware computes it "
                                                                   "natively (faster), else fp32")
                with gr.Accordion("AMM: which blocks, radius R and scale k", open=True):
                    with gr.Row():
                        preset_buttons = {key: gr.Button(text, size="sm") for key, text in controls.PRESETS.items()}
                    boxes = [gr.CheckboxGroup(g["choices"], value=v, label=g["label"])
                             for g, v in zip(groups, page["group_values"])]
                    boxes += [gr.CheckboxGroup([], value=[], visible=False) for _ in range(MAX_GROUPS - len(groups))]
                    amm_field = gr.Textbox(controls.format_blocks(init["blocks"]), label="AMM blocks",
                                           info="block indices (toggles above: block · token grid · phase); "
                                                "empty = off; press Enter to apply")
                    released_box = gr.Checkbox(init["released_radius"],
                                               label="released radius of each block's grid, R = √((n−1)² + 4)")
                    radius_slider = gr.Slider(*controls.RADIUS_RANGE, value=round(init["radius"], 3), step=0.001,
                                              label="radius R (tokens)",
                                              info=f"paper default on the 16×16 grid: √229 ≈ "
                                                   f"{controls.RADIUS_DEFAULT:.2f}; used for every AMM block when "
                                                   f"the box above is off")
                    scale_slider = gr.Slider(*controls.SCALE_RANGE, value=init["scale"], step=0.01, label="scale k",
                                             info=f"paper default k = {controls.SCALE_DEFAULT}")
                with gr.Row():
                    generate_button = gr.Button("Generate", elem_id="generate-button")
                    compare_button = gr.Button("Compare AMM off vs on", variant="primary", elem_id="compare-button")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Images"):
                        with gr.Row():
                            off_gallery = gr.Gallery(label="AMM off", columns=2, height="auto", format="png",
                                                     elem_id="off-gallery")
                            on_gallery = gr.Gallery(label="AMM on", columns=2, height="auto", format="png",
                                                    elem_id="on-gallery")
                        difference = gr.Image(label="difference |on − off| (scaled to its maximum)", type="pil",
                                              format="png", elem_id="difference")
                        samples = gr.Gallery(label="Generate: samples with the AMM blocks as chosen", columns=4,
                                             height="auto", format="png", elem_id="samples")
                    with gr.Tab("AMM and attention"):
                        with gr.Row():
                            block_picker = gr.Dropdown(page["blocks"], value=page["block"], label="block")
                            row_slider = gr.Slider(0, facts["image_grid"] - 1, value=middle, step=1,
                                                   label="query token row")
                            col_slider = gr.Slider(0, facts["image_grid"] - 1, value=middle, step=1,
                                                   label="query token column")
                        gr.Markdown("The query token is on the image's token grid; a block with a coarser grid uses "
                                    "the token that covers the same place.")
                        amm_plot = gr.Plot(label="the AMM row of the query token (current R and k)", show_label=False)
                        attention_plot = gr.Plot(label="attention of the query token (last Generate or Compare)",
                                                 show_label=False)
                    with gr.Tab("Denoising"):
                        previews = gr.Gallery(label="predicted clean images x̂₀ during sampling (last run; pixel "
                                                    "models)", columns=2, height="auto", object_fit="contain",
                                              format="png")
                    with gr.Tab("Cost"):
                        cost = gr.Markdown(page["cost"])
                    with gr.Tab("Masking (training)"):
                        gr.Markdown("EDT trains with a second, masked pass: tokens entering each down-sampling module "
                                    "are dropped at random, so the blocks before must spread information across "
                                    "tokens. These are the masks one such pass would draw (over the last image).")
                        with gr.Row():
                            strategy_radio = gr.Radio(["edt", "mdt"], value="edt", label="strategy")
                            mask_seed_box = gr.Number(0, label="mask seed", precision=0, minimum=0)
                            mask_button = gr.Button("Draw masks")
                        mask_plot = gr.Plot(label="keep-masks", show_label=False)
        facts_state = gr.State(facts)
        runs_state = gr.State(None)  # {"runs": [(name, attention)], "image": (H, W, C)} of the last run

        # -- model ---------------------------------------------------------------------------------------------
        def show_model(name):
            """Every control and view that depends on the model; a model that fails to load gives the default."""
            try:
                loaded = store.get(name)
            except ValueError as error:
                if name == DEFAULT_NAME:
                    raise gr.Error(str(error)) from None
                gr.Warning(str(error))
                return show_model(DEFAULT_NAME)  # the broken entry leaves the picker
            page = model_page(loaded)
            init, groups = page["init"], page["groups"]
            group_updates = [gr.update(label=g["label"], choices=g["choices"], value=v, visible=True)
                             for g, v in zip(groups, page["group_values"])]
            group_updates += [gr.update(choices=[], value=[], visible=False)] * (MAX_GROUPS - len(groups))
            last = page["facts"]["image_grid"] - 1
            return [gr.update(choices=store.names(), value=name), describe(loaded),
                    gr.update(choices=page["classes"], value=page["classes"][0]), init["sampler"], init["steps"],
                    init["guidance"], *group_updates, controls.format_blocks(init["blocks"]), init["released_radius"],
                    round(init["radius"], 3), init["scale"], gr.update(choices=page["blocks"], value=page["block"]),
                    gr.update(maximum=last, value=last // 2), gr.update(maximum=last, value=last // 2),
                    page["cost"], page["facts"]]

        model_outputs = [model_picker, model_note, class_picker, sampler_radio, steps_slider, guidance_slider, *boxes,
                         amm_field, released_box, radius_slider, scale_slider, block_picker, row_slider, col_slider,
                         cost, facts_state]
        model_picker.select(show_model, model_picker, model_outputs, concurrency_id="model", api_visibility="private")
        demo.load(show_model, model_picker, model_outputs, concurrency_id="model", api_visibility="private")

        # -- AMM blocks: toggles, presets and the text field stay in step --------------------------------------------
        def boxes_to_field(*group_values):
            """The AMM field from the toggles."""
            return controls.format_blocks(b for values in group_values for b in values)

        @warns(outputs=MAX_GROUPS + 1)
        def field_to_boxes(name, amm_blocks, guidance_scale, preset=None):
            """The toggles (and the tidied field) from the AMM field, or from a preset."""
            model = store.get(name).pipe.transformer
            blocks = (controls.preset_blocks(model, preset, guidance_scale) if preset
                      else controls.parse_blocks(amm_blocks, model, guidance_scale))
            values = controls.split_by_group(model, blocks)
            return [*values, *[[]] * (MAX_GROUPS - len(values)), controls.format_blocks(blocks)]

        for box in boxes:
            box.input(boxes_to_field, boxes, amm_field, queue=False, api_visibility="private")  # instant
        field_inputs = [model_picker, amm_field, guidance_slider]
        amm_field.submit(field_to_boxes, field_inputs, [*boxes, amm_field], api_visibility="private")
        for key, button in preset_buttons.items():
            button.click(functools.partial(field_to_boxes, preset=key), field_inputs, [*boxes, amm_field],
                         api_visibility="private")

        # -- sampling ------------------------------------------------------------------------------------------
        def checked(model, *values):
            """The loaded model and the checked request of the page's values."""
            loaded = store.get(model)
            return loaded, controls.check_request(loaded.pipe, *values)

        def summary(loaded, timings: str) -> str:
            """The status line under the buttons."""
            return f"{timings} · {DEMO_NOTE if loaded.is_demo else loaded.note}"

        @shows_errors
        def generate(model, class_name, seed, num_images, sampler, steps, guidance_scale, amm_blocks,
                     released_radius, radius, scale, precision, progress=gr.Progress()):
            """Images of one class with AMM in the chosen blocks; also denoising previews and a status line."""
            loaded, request = checked(model, class_name, seed, num_images, sampler, steps, guidance_scale,
                                      amm_blocks, released_radius, radius, scale, precision)
            run = sample(loaded.pipe, request, progress=lambda done, text: progress(done, desc=text))
            runs = {"runs": [(f"AMM in {controls.format_blocks(run.amm_blocks) or 'no block'}", run.attention)],
                    "image": run.images[0]}
            return (views.image_tiles(run.images), views.preview_strips(run.previews),
                    summary(loaded, f"{len(run.images)} images in {run.seconds:.2f} s"), runs)

        @shows_errors
        def compare_amm(model, class_name, seed, num_images, sampler, steps, guidance_scale, amm_blocks,
                        released_radius, radius, scale, precision, progress=gr.Progress()):
            """The same noise with AMM off and on: both image sets, their difference, previews and a status line."""
            loaded, request = checked(model, class_name, seed, num_images, sampler, steps, guidance_scale,
                                      amm_blocks, released_radius, radius, scale, precision)
            off, on = compare(loaded.pipe, request, progress=lambda done, text: progress(done, desc=text))
            heat, largest = views.difference_map(off.images, on.images)
            runs = {"runs": [("AMM off", off.attention), ("AMM on", on.attention)], "image": on.images[0]}
            timings = (f"AMM off {off.seconds:.2f} s · AMM on {on.seconds:.2f} s · "
                       f"largest |on − off| = {largest:.3f}")
            return (views.image_tiles(off.images), views.image_tiles(on.images), heat,
                    views.preview_strips(on.previews), summary(loaded, timings), runs)

        request_inputs = [model_picker, class_picker, seed_box, count_slider, sampler_radio, steps_slider,
                          guidance_slider, amm_field, released_box, radius_slider, scale_slider, precision_radio]

        # -- views of the last run and of the AMM ---------------------------------------------------------------
        @warns()
        def show_attention(runs, facts, block, row, col):
            """Attention maps of the last run for the query token in `block` (None before any run)."""
            if not runs or block is None:
                return None
            n = facts["grids"][int(block)]
            token = views.map_token(row, col, facts["image_grid"], n)
            return views.attention_figure(views.attention_panels(runs["runs"], int(block)), *token, n, int(block))

        @warns()
        def show_amm(facts, block, row, col, released_radius, radius, scale):
            """The AMM row of the query token on the grid of `block`."""
            n = facts["grids"][int(block)]
            token = views.map_token(row, col, facts["image_grid"], n)
            return views.amm_figure(n, *token, None if released_radius else radius, scale)

        @warns()
        def show_masks(model, strategy, seed, runs):
            """The training masks of one masked pass, over the last image."""
            image = runs["image"] if runs else None
            return views.mask_figure(store.get(model).pipe.transformer, seed, strategy, image)

        attention_inputs = [runs_state, facts_state, block_picker, row_slider, col_slider]
        amm_inputs = [facts_state, block_picker, row_slider, col_slider, released_box, radius_slider, scale_slider]
        generate_button.click(generate, request_inputs, [samples, previews, status, runs_state], api_name="generate",
                              concurrency_id="model").then(
            show_attention, attention_inputs, attention_plot, api_visibility="private")
        compare_outputs = [off_gallery, on_gallery, difference, previews, status, runs_state]
        compare_button.click(compare_amm, request_inputs, compare_outputs, api_name="compare",
                             concurrency_id="model").then(
            show_attention, attention_inputs, attention_plot, api_visibility="private")
        for control in (block_picker, row_slider, col_slider):
            control.change(show_attention, attention_inputs, attention_plot, api_visibility="private")
        for control in (block_picker, row_slider, col_slider, released_box, radius_slider, scale_slider):
            control.change(show_amm, amm_inputs, amm_plot, api_visibility="private")
        demo.load(show_amm, amm_inputs, amm_plot, api_visibility="private")
        mask_button.click(show_masks, [model_picker, strategy_radio, mask_seed_box, runs_state], mask_plot,
                          concurrency_id="model", api_visibility="private")
    return demo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="The EDT web explorer.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--models-dir", help="folder of pipeline folders and .pt/.pth/.safetensors files "
                                             "(a latent model's VAE in vae/ beside them)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is faster "
                                                    "for the tiny digits model on a busy machine)")
    parser.add_argument("--demo", action="store_true",
                        help=f"serve the {DEMO_NOTE} as the default even when the trained one exists (tests)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        store = ModelStore(args.models_dir, resolve_device(args.device), demo=args.demo)
    except ValueError as error:  # like every command of the project: one line and exit code 2
        print(f"app.py: error: {error}", file=sys.stderr)
        return 2
    demo = build_app(store)
    demo.queue(default_concurrency_limit=1, max_size=32)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # local fonts only: the page works offline
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, theme=theme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
