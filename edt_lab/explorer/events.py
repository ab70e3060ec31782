"""The explorer's events: what each click or change does, as plain functions of plain values, and the wiring of
the page's components (layout.Page) to them.

A refused request, or a control's bad value, is one message in the status line (`refusal`), which the next run's
timings replace; the other outputs stay as they were. An API client (no page open: `view` is None) gets the same
message as its call's error.
"""

import functools

import gradio as gr

from . import controls, views
from .layout import (ATTENTION_TAB, COMPARE_LABEL, DENOISING_TAB, IMAGES_TAB, MAX_GROUPS, PAIR_COLUMNS,
                     PREVIEWS_LABEL, SAMPLES_COLUMNS, Page, caption_text, describe, model_page)
from .model_folders import DEFAULT_NAME, DEMO_NOTE, ModelStore
from .sampling import compare, sample

# ----------------------------------------------------------------------------------------------------------
# Messages
# ----------------------------------------------------------------------------------------------------------

REFUSED = "⚠️ Refused: "  # how the status line starts when it reports a refusal


def input_error(message: str) -> gr.Error:
    """The error a bad API request becomes, without a traceback in the server's log (a typo is no server fault)."""
    return gr.Error(message, print_exception=False)


def refusal(message: str) -> str:
    """The status line saying why a request or a control's value was refused."""
    return REFUSED + message


def refused(message: str, view, outputs: int, status: int) -> list:
    """The `outputs` values of a refused /generate or /compare: on a page (`view` set), the message in the status
    line (output `status`) and every other output as it was; an API client gets the message as its error."""
    if view is None:
        raise input_error(message)
    values = [gr.skip()] * outputs
    values[status] = refusal(message)
    return values


def reports(outputs: int = 1):
    """For a page-only event whose outputs are followed by the status line: a ValueError becomes the status line's
    message and leaves the other outputs as they were; otherwise the status line stays as it is."""
    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                values = function(*args, **kwargs)
            except ValueError as error:
                return [gr.skip()] * outputs + [refusal(str(error))]
            return [*(values if outputs > 1 else [values]), gr.skip()]
        return wrapper
    return decorate


# ----------------------------------------------------------------------------------------------------------
# Views of the last run
# ----------------------------------------------------------------------------------------------------------

def show_attention(runs, facts, block, row, col):
    """Attention maps of the last run for the query token in `block` (None before any run)."""
    if not runs or block is None:
        return None
    n = facts["grids"][int(block)]
    token = views.map_token(row, col, facts["image_grid"], n)
    return views.attention_figure(views.attention_panels(runs["runs"], int(block)), *token, n, int(block))


def show_views(view, runs, facts, block, row, col) -> tuple:
    """The last run's previews (sheet and caption) or attention figure, whichever tab is open; a closed tab's view
    is drawn when it is opened (`open_tab`), so a run does not draw and send figures that no one sees."""
    if runs and view == DENOISING_TAB:
        previews, caption = views.preview_sheet(runs["previews"]) or (None, PREVIEWS_LABEL)
        caption = caption_text(caption)
    else:
        previews, caption = gr.skip(), gr.skip()
    attention = show_attention(runs, facts, block, row, col) if view == ATTENTION_TAB else gr.skip()
    return previews, caption, attention


def open_tab(runs, facts, block, row, col, event: gr.SelectData) -> tuple:
    """Remember the tab just opened, and draw its view of the last run (then the status line, see `reports`)."""
    return event.value, *reports(3)(show_views)(event.value, runs, facts, block, row, col)


def show_amm(facts, block, row, col, released_radius, amm_radius, amm_scale):
    """The AMM row of the query token on the grid of `block`."""
    n = facts["grids"][int(block)]
    token = views.map_token(row, col, facts["image_grid"], n)
    radius = None if released_radius else controls.check_number("AMM radius R", amm_radius, *controls.RADIUS_RANGE)
    return views.amm_figure(n, *token, radius, controls.check_number("AMM scale k", amm_scale, *controls.SCALE_RANGE))


# ----------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------

def block_words(blocks) -> str:
    """"block 10", "blocks 7, 10" or "no block"."""
    blocks = list(blocks)
    return f"block{'s' if len(blocks) > 1 else ''} {controls.format_blocks(blocks)}" if blocks else "no block"


def count_words(count: int, noun: str) -> str:
    """"1 step", "25 steps"."""
    return f"{count} {noun}{'s' if count != 1 else ''}"


def gallery_columns(num_images, columns: int) -> dict:
    """The columns of a gallery about to show `num_images` images: `columns` up to 4 images, half as many again
    beyond, so that 16 images fit the page's height in tiles of a readable size (a bad count: as it is)."""
    try:
        many = float(num_images) > 4
    except (TypeError, ValueError):  # the run refuses it, in the status line
        return gr.skip()
    return gr.update(columns=columns * 3 // 2 if many else columns)


def status_line(loaded, request, timings: str) -> str:
    """The timings, the sampler, its steps and the guidance with its shape (a schedule the model's folder recommends,
    the guided timesteps) and which model ran."""
    guidance = request.guidance
    guided = guidance.scale > 1
    shape = [f"{guidance.schedule} schedule, as the model recommends"] \
        if guided and guidance.schedule != "constant" else []
    if guided and guidance.interval is not None:
        shape.append("guided at t {}-{} only".format(*guidance.interval))
    words = f"guidance {guidance.scale:g}" if guided else "no guidance"
    shape = f" ({', '.join(shape)})" if shape else ""
    return (f"{timings} · {request.sampler}, {count_words(request.num_inference_steps, 'step')}, {words}{shape} · "
            f"{DEMO_NOTE if loaded.is_demo else loaded.note}")


def generate(store: ModelStore, values: list, view, progress=None) -> list:
    """/generate: the images of one class with AMM in the chosen blocks, the status line and what the views need
    (`values`: the request's raw values, `Page.request_inputs`' order); a refused request: `refused`."""
    try:
        loaded = store.get(values[0])
        request = controls.check_request(loaded.pipe, *values[1:], recommended=loaded.recommended)
        run = sample(loaded.pipe, request, progress=progress, record_views=view is not None)
    except ValueError as error:
        return refused(str(error), view, outputs=3, status=1)
    amm = f"AMM in {block_words(run.amm_blocks)}" if run.amm_blocks else "AMM off"
    runs = {"runs": [(amm, run.attention)], "previews": run.previews, "image": run.images[0]}
    timings = f"{count_words(len(run.images), 'image')} in {run.seconds:.2f} s · {amm}"
    return [views.image_tiles(run.images), status_line(loaded, request, timings), runs]


def compare_amm(store: ModelStore, values: list, view, progress=None) -> list:
    """/compare: the same noise with AMM off and on, both image sets, their difference, the status line and what
    the views need; a refused request: `refused`."""
    try:
        loaded = store.get(values[0])
        request = controls.check_request(loaded.pipe, *values[1:], recommended=loaded.recommended)
        off, on = compare(loaded.pipe, request, progress=progress, record_views=view is not None)
    except ValueError as error:
        return refused(str(error), view, outputs=5, status=3)
    heat, largest = views.difference_map(off.images, on.images)
    runs = {"runs": [("AMM off", off.attention), ("AMM on", on.attention)], "previews": on.previews,
            "image": on.images[0]}
    timings = (f"AMM off {off.seconds:.2f} s · AMM on ({block_words(on.amm_blocks)}) {on.seconds:.2f} s · "
               f"largest |on − off| = {largest:.3f}")
    return [views.image_tiles(off.images), views.image_tiles(on.images), heat, status_line(loaded, request, timings),
            runs]


def compare_button_state(amm_blocks: str):
    """Compare needs AMM blocks to compare with: without any, the button says so and waits."""
    chosen = str(amm_blocks).strip().lower() not in controls.AMM_OFF
    label = COMPARE_LABEL if chosen else f"{COMPARE_LABEL}: choose AMM blocks first"
    return gr.update(interactive=chosen, value=label)


# ----------------------------------------------------------------------------------------------------------
# Wiring
# ----------------------------------------------------------------------------------------------------------

def wire_model_picker(demo: gr.Blocks, store: ModelStore, page: Page) -> None:
    """Choosing a model (and loading the page) sets every control and view that depends on the model."""

    def show_model(name, status=gr.skip()):
        """A model that fails to load leaves the picker, the page shows the default and the status line why."""
        try:
            loaded = store.get(name)
        except ValueError as error:
            if name == DEFAULT_NAME:
                raise gr.Error(str(error)) from None
            return show_model(DEFAULT_NAME, refusal(str(error)))
        values = model_page(loaded)
        init, groups = values["init"], values["groups"]
        group_updates = [gr.update(label=g["label"], choices=g["choices"], value=v, visible=True)
                         for g, v in zip(groups, values["group_values"])]
        group_updates += [gr.update(choices=[], value=[], visible=False)] * (MAX_GROUPS - len(groups))
        last = values["facts"]["image_grid"] - 1
        return [gr.update(choices=store.names(), value=name), describe(store, loaded),
                gr.update(choices=values["classes"], value=values["classes"][0]), init["sampler"],
                init["num_inference_steps"], init["guidance_scale"], init["guidance_interval"], *group_updates,
                controls.format_blocks(init["amm_blocks"]), init["released_radius"], round(init["amm_radius"], 3),
                init["amm_scale"], gr.update(choices=values["blocks"], value=values["block"]),
                gr.update(maximum=last, value=last // 2), gr.update(maximum=last, value=last // 2),
                values["cost"], values["facts"], gr.update(choices=values["strategies"], value=values["strategies"][0]),
                status]

    outputs = [page.model, page.note, page.class_name, page.sampler, page.num_inference_steps, page.guidance_scale,
               page.guidance_interval, *page.boxes, page.amm_blocks, page.released_radius, page.amm_radius,
               page.amm_scale, page.block, page.row, page.col, page.cost, page.facts, page.strategy, page.status]
    page.model.select(show_model, page.model, outputs, concurrency_id="model", api_visibility="private")
    demo.load(show_model, page.model, outputs, concurrency_id="model", api_visibility="private")


def wire_amm_blocks(store: ModelStore, page: Page) -> None:
    """The per-stage toggles, the presets and the AMM text field stay in step."""

    def boxes_to_field(*group_values):
        return controls.format_blocks(b for values in group_values for b in values)

    @reports(outputs=MAX_GROUPS + 1)
    def field_to_boxes(name, amm_blocks, guidance_scale, preset=None):
        """The toggles (and the tidied field) from the AMM field, or from a preset."""
        loaded = store.get(name)
        model = loaded.pipe.transformer
        guidance_scale = controls.check_number("guidance scale", guidance_scale, 1.0, controls.MAX_GUIDANCE)
        blocks = (controls.preset_blocks(model, preset, guidance_scale,
                                         controls.initial_settings(loaded)["amm_blocks"])
                  if preset else controls.parse_blocks(amm_blocks, model, guidance_scale))
        values = controls.split_by_group(model, blocks)
        return [*values, *[[]] * (MAX_GROUPS - len(values)), controls.format_blocks(blocks)]

    for box in page.boxes:
        box.input(boxes_to_field, page.boxes, page.amm_blocks, queue=False, api_visibility="private")  # instant
    page.amm_blocks.change(compare_button_state, page.amm_blocks, page.compare_button, queue=False,
                           api_visibility="private")
    inputs, outputs = [page.model, page.amm_blocks, page.guidance_scale], [*page.boxes, page.amm_blocks, page.status]
    page.amm_blocks.submit(field_to_boxes, inputs, outputs, api_visibility="private")
    # Generate reads the field as it is, so leaving it applies it too: the toggles never show other blocks
    page.amm_blocks.blur(field_to_boxes, inputs, outputs, api_visibility="private")
    for key, button in page.presets.items():
        button.click(functools.partial(field_to_boxes, preset=key), inputs, outputs, api_visibility="private")
    # the released radius of each block's grid replaces the field's: the field waits while it is ticked
    page.released_radius.change(lambda released: gr.update(interactive=not released), page.released_radius,
                                page.amm_radius, queue=False, api_visibility="private")


def wire_sampling(store: ModelStore, page: Page) -> None:
    """Generate and Compare (the /generate and /compare API), then the open tab's view of the new run."""

    # A page records every run's attention and previews (one step's explicit attention, about 1 % of a call on
    # the digits model), so the attention and denoising tabs show the last run whenever they are opened; an API
    # client (no page, view None) has no view to show them. The parameters are the API's names.
    def generate_images(model, class_name, seed, num_images, sampler, num_inference_steps, guidance_scale,
                        amm_blocks, released_radius, amm_radius, amm_scale, precision, guidance_interval, view,
                        progress=gr.Progress()):
        """Images of one class with AMM in the chosen blocks, and a status line."""
        values = [model, class_name, seed, num_images, sampler, num_inference_steps, guidance_scale, amm_blocks,
                  released_radius, amm_radius, amm_scale, precision, guidance_interval]
        return generate(store, values, view, lambda done, text: progress(done, desc=text))

    def compare_images(model, class_name, seed, num_images, sampler, num_inference_steps, guidance_scale,
                       amm_blocks, released_radius, amm_radius, amm_scale, precision, guidance_interval, view,
                       progress=gr.Progress()):
        """The same noise with AMM off and on: both image sets, their difference and a status line."""
        values = [model, class_name, seed, num_images, sampler, num_inference_steps, guidance_scale, amm_blocks,
                  released_radius, amm_radius, amm_scale, precision, guidance_interval]
        return compare_amm(store, values, view, lambda done, text: progress(done, desc=text))

    # A click also sets the columns of the galleries it fills, on the page only (the API's outputs stay plain lists
    # of images) and at once, so the new images arrive in their layout.
    page.generate_button.click(functools.partial(gallery_columns, columns=SAMPLES_COLUMNS), page.num_images,
                               page.samples, queue=False, api_visibility="private")
    page.compare_button.click(lambda num_images: [gallery_columns(num_images, PAIR_COLUMNS)] * 2, page.num_images,
                              [page.off_gallery, page.on_gallery], queue=False, api_visibility="private")
    inputs, view_inputs = [*page.request_inputs(), page.view], [page.view, *page.attention_inputs()]
    view_outputs = [*page.view_outputs(), page.status]
    page.generate_button.click(generate_images, inputs, [page.samples, page.status, page.runs], api_name="generate",
                               concurrency_id="model").then(
        reports(3)(show_views), view_inputs, view_outputs, api_visibility="private")
    compare_outputs = [page.off_gallery, page.on_gallery, page.difference, page.status, page.runs]
    page.compare_button.click(compare_images, inputs, compare_outputs, api_name="compare",
                              concurrency_id="model").then(
        reports(3)(show_views), view_inputs, view_outputs, api_visibility="private")


def wire_views(demo: gr.Blocks, store: ModelStore, page: Page) -> None:
    """The AMM, attention and mask figures follow the query token, the AMM settings and the mask controls."""

    @reports()
    def show_masks(model, strategy, seed, runs):
        """The training masks of one masked pass, over the last image."""
        image = runs["image"] if runs else None
        return views.mask_figure(store.get(model).pipe.transformer, controls.check_seed(seed, "mask seed"), strategy,
                                 image)

    query = (page.block, page.row, page.col)
    for control in query:
        control.change(reports()(show_attention), page.attention_inputs(), [page.attention_plot, page.status],
                       api_visibility="private")
    amm_inputs = [page.facts, *query, page.released_radius, page.amm_radius, page.amm_scale]
    for control in (*query, page.released_radius, page.amm_radius, page.amm_scale):
        control.change(reports()(show_amm), amm_inputs, [page.amm_plot, page.status], api_visibility="private")
    demo.load(reports()(show_amm), amm_inputs, [page.amm_plot, page.status], api_visibility="private")
    demo.load(lambda: IMAGES_TAB, None, page.view, api_visibility="private")  # a page is open: record for its views
    page.tabs.select(open_tab, page.attention_inputs(), [page.view, *page.view_outputs(), page.status],
                     api_visibility="private")
    page.mask_button.click(show_masks, [page.model, page.strategy, page.mask_seed, page.runs],
                           [page.mask_plot, page.status], concurrency_id="model", api_visibility="private")


def wire(demo: gr.Blocks, store: ModelStore, page: Page) -> None:
    """Every event of the page."""
    wire_model_picker(demo, store, page)
    wire_amm_blocks(store, page)
    wire_sampling(store, page)
    wire_views(demo, store, page)
