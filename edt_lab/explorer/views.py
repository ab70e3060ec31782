"""The explorer's views as plain values: PIL images, numpy arrays, matplotlib figures and markdown text."""

import math
from functools import cache

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from ..amm import default_radius, modulation_function, modulation_matrix
from ..flops import count_macs, count_params
from ..masking import draw_masks, mask_grids
from ..models import create_model

TILE = 128  # digits are 32 x 32: shown larger, with sharp pixels


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------

def to_pil(image: np.ndarray) -> Image.Image:
    """(H, W, C) in [0, 1] (C = 1 or 3) -> RGB PIL image, small images enlarged with sharp pixels."""
    array = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array
    picture = Image.fromarray(array)
    if max(picture.size) < TILE:
        factor = TILE // max(picture.size)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    return picture


def image_tiles(images: np.ndarray) -> list[Image.Image]:
    """(B, H, W, C) in [0, 1] -> one PIL image each."""
    return [to_pil(image) for image in images]


def montage(images: np.ndarray, columns: int = 4, gap: int = 2) -> Image.Image:
    """(B, H, W, C) in [0, 1] -> one image: a grid of `columns` columns with white gaps."""
    tiles = image_tiles(images)
    if not tiles or columns < 1:
        raise ValueError(f"a montage needs at least one image and one column, got {len(tiles)} and {columns}")
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    width, height = tiles[0].size
    sheet = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    return sheet


def difference_map(off: np.ndarray, on: np.ndarray) -> tuple[Image.Image, float]:
    """|on - off| per pixel (channel mean) as a heat montage scaled to its maximum, and that maximum."""
    if off.shape != on.shape:
        raise ValueError(f"off and on images must have the same shape, got {off.shape} and {on.shape}")
    difference = np.abs(on.astype(np.float64) - off.astype(np.float64)).mean(axis=-1)  # (B, H, W)
    largest = float(difference.max())
    scaled = difference / largest if largest > 0 else difference
    heat = colormaps["magma"](scaled)[..., :3]  # (B, H, W, 3)
    return montage(heat), largest


def preview_sheet(previews: list, count: int = 6) -> tuple[Image.Image, str] | None:
    """About `count` evenly spaced steps (always the last) of per-step previews as one image and its caption, a
    row of the images per step: one file for the page to send rather than one per step; None without previews."""
    if not previews:
        return None
    total = len(previews)
    steps = sorted({round(s) for s in np.linspace(0, total - 1, min(count, total))})
    sheet = montage(np.concatenate([previews[s] for s in steps]), columns=len(previews[0]))
    return sheet, f"predicted clean images, one row per step: after steps {', '.join(str(s + 1) for s in steps)} " \
                  f"of {total}"


# ----------------------------------------------------------------------------------------------------------
# AMM and attention
# ----------------------------------------------------------------------------------------------------------

def map_token(row: int, col: int, from_grid: int, to_grid: int) -> tuple[int, int]:
    """The token of a `to_grid` grid covering token (row, col) of a `from_grid` grid (same image area)."""
    for name, value in (("row", row), ("column", col)):
        if not 0 <= int(value) < from_grid:
            raise ValueError(f"query {name} must lie in 0..{from_grid - 1}, got {value}")
    return int(row) * to_grid // from_grid, int(col) * to_grid // from_grid


def amm_heatmap(n: int, row: int, col: int, radius: float | None = None, scale: float = 0.5) -> np.ndarray:
    """The AMM weights of query token (row, col) over the n x n grid: row row*n+col of the matrix, as (n, n)."""
    map_token(row, col, n, n)  # range check
    return modulation_matrix(n, radius, scale)[int(row) * n + int(col)].reshape(n, n).numpy()


def _heatmap(axis, array, title, token, cmap="viridis", vmin=None, vmax=None):
    """Draw `array` (n, n) on `axis` with the query token marked; returns the image for a colour bar."""
    picture = axis.imshow(array, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    axis.scatter([token[1]], [token[0]], marker="x", color="red", s=40)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    return picture


def amm_figure(n: int, row: int, col: int, radius: float | None = None, scale: float = 0.5) -> Figure:
    """The AMM of one query token as a heatmap, beside the curve F(d) with the radius R marked."""
    heat = amm_heatmap(n, row, col, radius, scale)
    radius = default_radius(n) if radius is None else radius
    figure = Figure(figsize=(8, 3.4), layout="constrained")
    left, right = figure.subplots(1, 2)
    picture = _heatmap(left, heat, f"AMM for token ({row}, {col}) on the {n}×{n} grid\n"
                                   f"R = {radius:.2f}, k = {scale:g}; 0 beyond R", (row, col), vmin=0)
    figure.colorbar(picture, ax=left, shrink=0.85)
    d_max = (n - 1) * math.sqrt(2)
    d = np.linspace(0, d_max, 200)
    right.plot(d, modulation_function(d, n, scale).numpy(), label="F(d) = k·exp(cos(2πd / 4d_max))")
    kept = d <= radius
    right.fill_between(d[kept], 0, modulation_function(d[kept], n, scale).numpy(), alpha=0.2, label="kept (d ≤ R)")
    right.axvline(radius, color="red", linestyle="--", label=f"R = {radius:.2f}")
    right.set_xlabel("distance d between tokens (grid cells)")
    right.set_ylabel("attention multiplier")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    return figure


def attention_figure(panels: list[tuple[str, np.ndarray]], row: int, col: int, n: int, block: int) -> Figure:
    """Where query token (row, col) of a block attends: one heatmap per (title, (N, N) head-mean map)."""
    if not panels:
        raise ValueError("no attention maps yet: generate or compare first")
    rows = [np.asarray(maps)[row * n + col].reshape(n, n) for _, maps in panels]
    vmax = max(float(r.max()) for r in rows)
    figure = Figure(figsize=(3.2 * len(panels) + 0.8, 3.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for axis, (title, _), heat in zip(axes, panels, rows):
        picture = _heatmap(axis, heat, title, (row, col), cmap="magma", vmin=0, vmax=vmax)
    figure.colorbar(picture, ax=list(axes), shrink=0.85)
    # two lines: one panel is narrower than the one-line title
    figure.suptitle(f"block {block}: attention of token ({row}, {col})\nmean over heads, first image, middle step",
                    fontsize=10)
    return figure


def attention_panels(runs: list[tuple[str, dict]], block: int) -> list[tuple[str, np.ndarray]]:
    """Panels for `attention_figure` from (run name, pipeline attention) pairs: softmax, and x AMM where set."""
    panels = []
    for name, attention in runs:
        if block not in attention:
            raise ValueError(f"no attention recorded for block {block}: generate or compare again")
        maps = attention[block]
        panels.append((f"{name}: softmax (without AMM)", maps["attention"]))
        if maps["modulated"] is not None:
            panels.append((f"{name}: softmax ⊙ AMM (with AMM)", maps["modulated"]))
    return panels


# ----------------------------------------------------------------------------------------------------------
# Cost and masks
# ----------------------------------------------------------------------------------------------------------

def stage_params(model, report) -> dict[str, int]:
    """Trainable parameters per stage of `report` (a `count_macs` report), by the modules' state-dict prefixes."""
    stage_of = {item.module: item.stage for item in report.items}
    counts = dict.fromkeys(report.by_stage(), 0)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = name.split(".")
        module = ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]  # "blocks.3", "pos_embed"
        stage = stage_of.get(module, "embed")  # embedders and MDTv2's learned position tables and mask token
        counts[stage] += p.numel()
    return counts


@cache
def released_costs() -> tuple[tuple[str, float, int], ...]:
    """(name, GFLOPs, trainable parameters) of the released sizes of EDT, DiT and MDTv2, counted on the meta device."""
    rows = []
    for size in ("S", "B", "XL"):
        for family in ("EDT", "DiT", "MDTv2"):
            with torch.device("meta"):
                model = create_model(f"{family}-{size}/2")
            rows.append((f"{family}-{size}/2", count_macs(model).gflops, count_params(model)["trainable"]))
    return tuple(rows)


def cost_markdown(model) -> str:
    """The model's parameters and GFLOPs with the per-stage breakdown, then the released sizes of EDT, DiT and MDTv2
    side by side, as markdown tables."""
    report, params = count_macs(model), count_params(model)
    per_stage = stage_params(model, report)
    lines = [f"**{report.gflops:.4f} GFLOPs** (GFLOPs = multiply-accumulates, one sample; matrix products only, "
             f"as the DiT/EDT papers count) · **{params['trainable']:,}** trainable parameters "
             f"({params['total']:,} with the fixed position tables)", "",
             "| stage | GFLOPs | share | parameters |", "|---|---:|---:|---:|"]
    for stage, macs in report.by_stage().items():
        lines.append(f"| {stage} | {macs / 1e9:.4f} | {macs / report.total:.1%} | {per_stage[stage]:,} |")
    lines += ["", "**The released sizes side by side** (256×256 ImageNet latents, 16×16 tokens; same convention)", "",
              "| model | GFLOPs | parameters |", "|---|---:|---:|"]
    lines += [f"| {name} | {gflops:.3f} | {count:,} |" for name, gflops, count in released_costs()]
    return "\n".join(lines)


def mask_figure(model, seed: int = 0, strategy: str = "edt", image: np.ndarray | None = None) -> Figure:
    """The keep-masks one masked training pass would draw (first sample), over `image` (H, W, C) when given."""
    generator = torch.Generator().manual_seed(int(seed))
    grids = mask_grids(draw_masks(strategy, model, 1, generator, "cpu"), model)
    if not grids:
        raise ValueError(f"masking strategy {strategy!r} draws no masks")
    figure = Figure(figsize=(3.2 * len(grids), 3.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(grids)))
    for axis, (place, keep) in zip(axes, grids.items()):
        keep = keep[0]  # (n, n): 1 keep, 0 drop
        if image is not None:
            size = image.shape[0]
            shade = np.kron(keep, np.ones((size // len(keep), size // len(keep))))[..., None]  # token -> pixels
            gray = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
            red = np.array([0.85, 0.1, 0.1])
            axis.imshow(np.clip(gray * shade + (1 - shade) * (0.35 * gray + 0.65 * red), 0, 1),
                        interpolation="nearest")
        else:
            axis.imshow(keep, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"{place}: {len(keep)}×{len(keep)} tokens\n{1 - keep.mean():.0%} dropped", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    dropped = "red = dropped" if image is not None else "black = dropped"
    figure.suptitle(f"{strategy.upper()} masks of one masked\ntraining pass (seed {seed}; {dropped})", fontsize=10)
    return figure
