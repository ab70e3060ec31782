"""The web explorer's logic as plain functions, and the page that wires them.

model_folders: finding and loading models; controls: choices, presets and request checks; sampling: AMM off/on
runs; views: images, heatmaps, cost and mask figures; layout: the page's components by panel; events: what each
click does, and the wiring; server: the page built and served (the only modules that import Gradio, imported on
their own).
"""

from .controls import Request, check_request, class_choices, initial_settings, parse_blocks, preset_blocks, stage_groups
from .model_folders import DEFAULT_NAME, DEMO_NOTE, ModelEntry, ModelStore, demo_pipeline, scan_models
from .sampling import Run, compare, sample
from .views import amm_figure, amm_heatmap, attention_figure, cost_markdown, difference_map, mask_figure

__all__ = ["Request", "check_request", "class_choices", "initial_settings", "parse_blocks", "preset_blocks",
           "stage_groups", "DEFAULT_NAME", "DEMO_NOTE", "ModelEntry", "ModelStore", "demo_pipeline", "scan_models",
           "Run", "compare", "sample", "amm_figure", "amm_heatmap", "attention_figure", "cost_markdown",
           "difference_map", "mask_figure"]
