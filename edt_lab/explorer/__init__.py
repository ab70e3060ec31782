"""The web explorer's logic as plain functions, and the page that wires them.

models: finding and loading models; controls: choices, presets and request checks; sampling: AMM off/on runs;
views: images, heatmaps, cost and mask figures; app: the Gradio page, laid out by panel, and `edt-lab app`
(imported on its own, so these functions do not pull in Gradio).
"""

from .controls import Request, check_request, class_choices, initial_settings, parse_blocks, preset_blocks, stage_groups
from .models import DEFAULT_NAME, DEMO_NOTE, ModelEntry, ModelStore, demo_pipeline, scan_models
from .sampling import Run, compare, sample
from .views import amm_figure, amm_heatmap, attention_figure, cost_markdown, difference_map, mask_figure

__all__ = ["Request", "check_request", "class_choices", "initial_settings", "parse_blocks", "preset_blocks",
           "stage_groups", "DEFAULT_NAME", "DEMO_NOTE", "ModelEntry", "ModelStore", "demo_pipeline", "scan_models",
           "Run", "compare", "sample", "amm_figure", "amm_heatmap", "attention_figure", "cost_markdown",
           "difference_map", "mask_figure"]
