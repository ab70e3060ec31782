"""Other ways to combine the guided predictions, swept and judged like `settings_sweep.py`.

Each variant replaces how the transformer's `forward_with_cfg` mixes its predictions, for this script's pipeline
only; everything else (the 200 images, the metrics, the rule) is `settings_sweep.py`'s, whose arguments follow the
variant's own. `--guidance` is the variant's main scale.

- `apg`: adaptive projected guidance (Sadat et al. 2024, "Eliminating oversaturation and artifacts of high
  guidance scales"): the guidance update on the clean-image prediction x0 loses `--parallel-weight` of its part
  parallel to the conditional x0 (0 = only the orthogonal part), the part the authors blame for oversaturation.
  The projection is diffusers' `normalized_guidance`; 1 is ordinary guidance.
- `rescale`: guidance rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed",
  section 3.4): ordinary guidance on x0, whose per-image standard deviation is then moved by the fraction
  `--rescale` back to the conditional x0's (diffusers' `rescale_noise_cfg`; 0 is ordinary guidance), against
  over-exposure.
- `autoguidance`: Karras et al. 2024, "Guiding a diffusion model with a bad version of itself": the bad version is
  another, less trained model of the same data and classes (`--bad-model`, a model folder or checkpoint), and the guided
  noise is eps_bad + scale * (eps - eps_bad), both conditional; no unconditional prediction unless
  `--free-guidance` adds classifier-free guidance on top. The bad model runs with the good one's AMM, so its
  blocks must lie on the same grids.
- `layer-skip`: autoguidance with the bad version made, as in diffusers' `AutoGuidance`, by skipping blocks
  (`--skip-blocks`) of the same conditional model.
- `frequency`: frequency-decoupled guidance (Sadigh et al. 2025): the guidance difference is split by a low-pass
  (average pooling by `--low-pass-factor`, bilinear back up); the low part gets `--guidance`, the rest
  `--high-guidance`.

    python benchmarks/guidance_variants.py apg --parallel-weight 0 -- assets/edt_t2_digits \\
        --samplers deis-karras:25 --guidance 2.5 3 4 --amm 10 --json docs/bench/guidance_variants/apg_parallel_0.json
"""

import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.guiders.adaptive_projected_guidance import normalized_guidance
from diffusers.guiders.guider_utils import rescale_noise_cfg

from edt_lab.checkpoints import load_checkpoint
from edt_lab.cli import OneLineParser, output_file, run_script

sys.path.insert(0, str(Path(__file__).parent))
import settings_sweep  # noqa: E402  (a sibling script)
from options import at_least  # noqa: E402

# Each variant's own options (argparse's dest) -> (the variant, the default): another variant's option is refused.
VARIANT_OPTIONS = {"parallel_weight": ("apg", 0.0), "rescale": ("rescale", 0.7), "bad_model": ("autoguidance", None),
                   "free_guidance": ("autoguidance", 1.0), "skip_blocks": ("layer-skip", [5]),
                   "low_pass_factor": ("frequency", 4), "high_guidance": ("frequency", 1.5)}


def split_prediction(model, out):
    """(B, out_channels, H, W) -> the noise channels and the rest (the learned variance, if any)."""
    channels = model.config.in_channels
    return out[:, :channels], out[:, channels:]


def guided_output(guided, rest):
    """The guided noise (B, C, H, W) in both halves, as `forward_with_cfg` returns it."""
    return torch.cat([torch.cat([guided, guided]), torch.cat([rest, rest])], dim=1)


def x0_guided_forward(model, alphas_cumprod, combine, x, t, y):
    """Guidance on x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar): `combine(x0_cond, x0_uncond)` -> the guided x0
    (B/2, C, H, W), mapped back to a noise prediction."""
    half, t_half = x[: len(x) // 2], t[: len(x) // 2]
    eps, rest = split_prediction(model, model(torch.cat([half, half]), t, y).float())
    cond, uncond = eps.chunk(2)
    abar = alphas_cumprod.to(x.device)[t_half.long()].view(-1, 1, 1, 1).double()
    noise_scale, signal_scale, x_t = (1 - abar).sqrt(), abar.sqrt(), half.double()
    x0_cond, x0_uncond = ((x_t - noise_scale * e.double()) / signal_scale for e in (cond, uncond))
    x0 = combine(x0_cond, x0_uncond)
    return guided_output(((x_t - signal_scale * x0) / noise_scale).float(), rest.chunk(2)[0])


def apg_forward(model, alphas_cumprod, parallel_weight, x, t, y, cfg_scale, *args, **kwargs):
    """APG on x0 (diffusers' `normalized_guidance`)."""
    def combine(x0_cond, x0_uncond):
        return normalized_guidance(x0_cond, x0_uncond, cfg_scale, eta=parallel_weight)
    return x0_guided_forward(model, alphas_cumprod, combine, x, t, y)


def rescale_forward(model, alphas_cumprod, rescale, x, t, y, cfg_scale, *args, **kwargs):
    """Ordinary guidance on x0, then its per-image standard deviation pulled toward the conditional x0's by the
    fraction `rescale` (diffusers' `rescale_noise_cfg`, here on x0)."""
    def combine(x0_cond, x0_uncond):
        return rescale_noise_cfg(x0_uncond + cfg_scale * (x0_cond - x0_uncond), x0_cond, rescale)
    return x0_guided_forward(model, alphas_cumprod, combine, x, t, y)


def autoguidance_forward(model, bad_model, free_guidance, x, t, y, cfg_scale, *args, **kwargs):
    """Autoguidance by a separately trained bad model, which draws with the good model's AMM; free_guidance > 1
    adds classifier-free guidance on top: + (free_guidance - 1) * (eps - eps_uncond)."""
    half, t_half, y_half = x[: len(x) // 2], t[: len(x) // 2], y[: len(x) // 2]
    if free_guidance > 1:
        eps, rest = split_prediction(model, model(torch.cat([half, half]), t, y).float())
        (eps, uncond), rest = eps.chunk(2), rest.chunk(2)[0]
    else:
        eps, rest = split_prediction(model, model(half, t_half, y_half).float())
        uncond = eps  # no classifier-free term
    for good_block, bad_block in zip(model.blocks, bad_model.blocks):
        bad_block.attn.amm = good_block.attn.amm
    bad, _ = split_prediction(bad_model, bad_model(half, t_half, y_half).float())
    return guided_output(bad + cfg_scale * (eps - bad) + (free_guidance - 1) * (eps - uncond), rest)


def layer_skip_forward(model, skip_blocks, x, t, y, cfg_scale, *args, **kwargs):
    """Autoguidance with the conditional model minus `skip_blocks` (each made the identity) as the bad model."""
    half, t_half, y_half = x[: len(x) // 2], t[: len(x) // 2], y[: len(x) // 2]
    eps, rest = split_prediction(model, model(half, t_half, y_half).float())
    hooks = [model.blocks[b].register_forward_hook(lambda module, inputs, output: inputs[0]) for b in skip_blocks]
    try:
        bad, _ = split_prediction(model, model(half, t_half, y_half).float())
    finally:
        for hook in hooks:
            hook.remove()
    return guided_output(bad + cfg_scale * (eps - bad), rest)


def frequency_forward(model, factor, high_guidance, x, t, y, cfg_scale, *args, **kwargs):
    """Guidance `cfg_scale` on the low frequencies of cond - uncond and `high_guidance` on the rest."""
    half = x[: len(x) // 2]
    eps, rest = split_prediction(model, model(torch.cat([half, half]), t, y).float())
    cond, uncond = eps.chunk(2)
    difference = cond - uncond
    low = F.interpolate(F.avg_pool2d(difference, factor), scale_factor=factor, mode="bilinear", align_corners=False)
    return guided_output(uncond + cfg_scale * low + high_guidance * (difference - low), rest.chunk(2)[0])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    own, sweep_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = OneLineParser(description=__doc__.splitlines()[0],
                           usage="%(prog)s VARIANT [options] -- SETTINGS_SWEEP_ARGUMENTS")
    parser.add_argument("variant", choices=("apg", "rescale", "autoguidance", "layer-skip", "frequency"))
    # The variants' own options default to None here, so that one given to another variant shows (VARIANT_OPTIONS).
    parser.add_argument("--parallel-weight", type=float, help="apg: weight of the parallel part (default 0)")
    parser.add_argument("--rescale", type=float,
                        help="rescale: the fraction of the way to the conditional x0's spread (0 to 1, default 0.7)")
    parser.add_argument("--bad-model", help="autoguidance: the bad model (as edt-lab sample --ckpt)")
    parser.add_argument("--free-guidance", type=at_least(1.0, float),
                        help="autoguidance: classifier-free guidance added on top (default 1 = none)")
    parser.add_argument("--skip-blocks", type=int, nargs="+", help="layer-skip: blocks to skip (default 5)")
    parser.add_argument("--low-pass-factor", type=int, help="frequency: pooling factor of the low part (default 4)")
    parser.add_argument("--high-guidance", type=float, help="frequency: guidance of the high part (default 1.5)")
    args = parser.parse_args(own)
    for dest, (owner, default) in VARIANT_OPTIONS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)
        elif owner != args.variant:
            parser.error(f"--{dest.replace('_', '-')} is an option of {owner}, not of {args.variant}")
    if args.variant == "rescale" and not 0 <= args.rescale <= 1:
        parser.error(f"--rescale {args.rescale}: expected a fraction from 0 to 1")
    if args.variant == "autoguidance" and args.bad_model is None:
        parser.error("autoguidance needs --bad-model FOLDER")
    if args.variant in ("apg", "rescale") and any(arg.startswith("euler") for arg in sweep_args):
        parser.error(f"{args.variant} reads x0 off the training schedule at integer timesteps; the euler samplers "
                     f"step between them")
    json_path = None
    if "--json" in sweep_args:  # this script writes the JSON, with the variant beside the rows
        at = sweep_args.index("--json")
        if at + 1 == len(sweep_args):
            parser.error("--json needs a file name")
        json_path, sweep_args = sweep_args[at + 1], sweep_args[:at] + sweep_args[at + 2:]
        output_file(json_path, "--json")
    variant = {"variant": args.variant}

    def prepare(pipe):
        model = pipe.transformer
        if args.variant == "apg":
            variant["parallel_weight"] = args.parallel_weight
            # the folder's training noise schedule, which every sampler of the sweep shares
            forward = functools.partial(apg_forward, model, pipe.scheduler.alphas_cumprod, args.parallel_weight)
        elif args.variant == "rescale":
            variant["rescale"] = args.rescale
            forward = functools.partial(rescale_forward, model, pipe.scheduler.alphas_cumprod, args.rescale)
        elif args.variant == "autoguidance":
            try:
                bad_model = load_checkpoint(args.bad_model).eval()
            except (OSError, ValueError) as error:
                parser.error(f"--bad-model {args.bad_model}: {error}")
            shape = ("num_classes", "in_channels", "input_size")
            grids = [[block["grid"] for block in m.block_info()] for m in (model, bad_model)]
            if any(bad_model.config[key] != model.config[key] for key in shape) or grids[0] != grids[1]:
                parser.error("--bad-model must draw the same classes at the same size with blocks on the same grids "
                             "as the model (it runs with the model's AMM)")
            variant.update(bad_model=args.bad_model, free_guidance=args.free_guidance)
            forward = functools.partial(autoguidance_forward, model, bad_model, args.free_guidance)
        elif args.variant == "layer-skip":
            if not all(0 <= b < model.num_blocks for b in args.skip_blocks):
                parser.error(f"--skip-blocks: this model has blocks 0..{model.num_blocks - 1}")
            variant["skip_blocks"] = args.skip_blocks
            forward = functools.partial(layer_skip_forward, model, args.skip_blocks)
        else:
            if args.low_pass_factor < 2 or model.config.input_size % args.low_pass_factor:
                parser.error(f"--low-pass-factor must be at least 2 and divide {model.config.input_size}")
            variant.update(low_pass_factor=args.low_pass_factor, high_guidance=args.high_guidance)
            forward = functools.partial(frequency_forward, model, args.low_pass_factor, args.high_guidance)
        model.forward_with_cfg = forward  # this pipeline's model only

    rows, chosen = settings_sweep.main(sweep_args, prepare_pipeline=prepare)
    if json_path:
        Path(json_path).write_text(json.dumps({**variant, "rows": rows, "chosen": chosen}, indent=2) + "\n")
    return variant, rows


if __name__ == "__main__":
    sys.exit(run_script(main))
