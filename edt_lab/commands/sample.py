"""`edt-lab sample`: class-conditional samples to a labelled .png grid or an ADM-layout .npz
(edt_lab.generation), on one process or several (`accelerate launch -m edt_lab.cli sample ...`).

The sampling settings come from the flags, else the model folder's recommended.json, else the fallbacks
(edt_lab.settings, which maps each flag to its setting's name)."""

from pathlib import Path

from ..guidance import GUIDANCE_SCHEDULES
from ..names import PRECISIONS
from ..settings import SAMPLERS


def add_arguments(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="a released .pt, a state dict, a save_pretrained model folder, a pipeline "
                                       "folder or a training checkpoint")
    source.add_argument("--model", choices=["default"], help="the shipped EDT-T/2 digits model")
    parser.add_argument("--vae", help="AutoencoderKL folder (e.g. sd-vae-ft-ema) for latent models")
    parser.add_argument("--classes", default="all", help="'all' or comma-separated class indices or names")
    parser.add_argument("--per-class", type=int, help="images per class (default 1)")
    parser.add_argument("--num-samples", type=int, help="FID-style: this many images in all (an .npz), labels drawn "
                        "from --classes by --label-draw; instead of --per-class")
    # No default here: run() refuses an explicit --label-draw without --num-samples, and then uses "uniform".
    parser.add_argument("--label-draw", choices=("uniform", "balanced"),
                        help="with --num-samples: each label uniformly at random (default, as the released "
                        "generator) or every class equally often")
    parser.add_argument("--steps", type=int, help="sampling steps (default: recommended, else 250)")
    parser.add_argument("--sampler", help=f"{', '.join(SAMPLERS)} (default: recommended, else ddpm)")
    parser.add_argument("--cfg", type=float, help="classifier-free guidance scale, 1 = none")
    parser.add_argument("--cfg-schedule", choices=GUIDANCE_SCHEDULES, help="constant (default: recommended, else "
                        "constant) or power-cos (MDTv2's released schedule, with --guided-channels 3)")
    parser.add_argument("--cfg-interval", type=int, nargs=2, metavar=("LOW", "HIGH"),
                        help="guide only the steps with LOW <= t <= HIGH (training timesteps 0..999), e.g. 300 999 "
                             "(default: recommended, else every step; 0 999 guides every step)")
    parser.add_argument("--amm", help="'preset', 'off' or block indices such as 7,10 (default: recommended, else off)")
    parser.add_argument("--amm-radius", type=float, help="AMM radius in tokens (default: the released one)")
    parser.add_argument("--amm-scale", type=float, help="AMM scale k (default 0.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--guided-channels", type=int, help="channels guided by CFG (3 = released scripts)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32 (TF32 matrix products on a GPU, as the released scripts), bf16 (autocast; needs "
                             "native bf16 hardware) or auto (bf16 where the hardware has it)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer's blocks: a slower start (minutes on a CPU), faster "
                             "steps on a GPU; rounding differs slightly")
    parser.add_argument("--out", required=True, help="FILE.png (labelled grid) or FILE.npz (ADM layout)")


def run(args):
    check_flags(args)
    sample(args, Path(args.out))


def check_flags(args) -> None:
    """ValueError for flags no run can use, before anything loads."""
    from ..checks import generator_seed
    from ..settings import flag_values

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise ValueError(f"--out {args.out}: expected a .png or .npz file name")
    if args.per_class is not None and args.num_samples is not None:
        raise ValueError("--per-class and --num-samples exclude each other: give one")
    if args.num_samples is not None and (args.num_samples < 1 or out.suffix != ".npz"):
        raise ValueError(f"--num-samples needs a count of at least 1 and an .npz --out (a .png grid has one row "
                         f"per class: use --per-class), got {args.num_samples} and {out.name}")
    if args.per_class is not None and args.per_class < 1:
        raise ValueError(f"--per-class must be at least 1, got {args.per_class}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    generator_seed(args.seed, "--seed")
    if args.label_draw is not None and args.num_samples is None:
        raise ValueError(f"--label-draw {args.label_draw}: has no effect without --num-samples (--per-class "
                         f"gives every class its images, nothing is drawn)")
    flag_values(args)  # every sampling setting given, in the flags' words


def parse_classes(text: str, pipe) -> list[int]:
    """--classes: "all" or a comma-separated list of class indices or names -> checked class indices."""
    if text.strip() == "all":
        return list(range(pipe.transformer.config.num_classes))
    items = [item.strip() for item in text.split(",")]
    if not all(items):  # "1,,2" is a typo, as in --amm; no item is quietly dropped
        raise ValueError(f"--classes {text!r}: expected 'all' or a comma-separated list such as 0,1,2, without "
                         f"empty items")
    return pipe.class_ids([int(item) if item.lstrip("-").isdigit() else item for item in items])


def refuse_unused(args, keys, why: str, remedy: str) -> None:
    """ValueError naming the options among `keys` that the command line gave although they have no effect `why`
    (the setting that makes them idle), with the `remedy`."""
    given = [f"--{key.replace('_', '-')}" for key in keys if getattr(args, key) is not None]
    if given:
        raise ValueError(f"{' and '.join(given)}: {'has' if len(given) == 1 else 'have'} no effect {why}; {remedy}")


def refuse_idle_flags(args, settings: dict) -> None:
    """Refuse AMM flags with the AMM off and guidance flags without guidance. Only what the user typed counts: a
    recommended.json may well hold a radius next to an AMM that is off."""
    if not settings["amm_blocks"]:
        refuse_unused(args, ("amm_radius", "amm_scale"),
                      "with --amm off" if args.amm is not None else "with the AMM off (this model's default)",
                      "turn the AMM on with --amm preset or block indices such as 7,10")
    if settings["guidance_scale"] == 1:
        refuse_unused(args, ("cfg_schedule", "cfg_interval", "guided_channels"),
                      "at --cfg 1" if args.cfg is not None else "without guidance (this model's default is --cfg 1)",
                      "guide with --cfg above 1")


def sample(args, out: Path) -> None:
    """Load the model, resolve the settings, check the rest, sample and write `out`."""
    import numpy as np
    from accelerate import PartialState

    from .. import accel
    from ..amm import apply_amm
    from ..devices import process_device
    from ..files import output_file
    from ..generation import check_fits_in_memory, draw_labels, generate_shared, label_grid, load_pipeline, save_npz
    from ..pipeline import make_scheduler
    from ..precision import enable_tf32, resolve_precision
    from ..settings import guidance_of, resolve_settings

    state = PartialState(cpu=args.device == "cpu")
    device = process_device(args.device, state)
    resolve_precision(args.precision, device)  # a bad choice fails before the model loads
    if device.type == "cuda":
        enable_tf32()  # as the released sampling scripts
    pipe, recommended = load_pipeline(args.ckpt, args.vae, device)
    settings = resolve_settings(args, recommended)
    pipe.scheduler = make_scheduler(settings["sampler"])
    accel.enable_fast_paths(pipe.transformer, device)
    if args.compile:
        accel.compile_blocks(pipe.transformer, device)
    pipe.set_progress_bar_config(disable=True)
    classes = parse_classes(args.classes, pipe)
    apply_amm(pipe.transformer, settings["amm_blocks"], settings["amm_radius"], settings["amm_scale"],
              settings["guidance_scale"])  # a bad block index fails here, before the sampling
    refuse_idle_flags(args, settings)
    per_class = args.per_class or 1
    if args.num_samples is not None:
        check_fits_in_memory(pipe, args.num_samples, f"--num-samples {args.num_samples}")
        labels = draw_labels(classes, args.num_samples, args.label_draw or "uniform", args.seed)
    else:
        check_fits_in_memory(pipe, len(classes) * per_class, f"--per-class {per_class} of {len(classes)} classes")
        labels = np.repeat(np.array(classes, dtype=np.int64), per_class)  # class-major request order
    output_file(out, "--out")
    images = generate_shared(pipe, labels, state, out, args.seed, args.batch_size, guidance=guidance_of(settings),
                             num_inference_steps=settings["num_inference_steps"], precision=args.precision)
    if state.is_main_process:
        if out.suffix == ".npz":
            save_npz(out, images, labels)
        else:
            label_grid(images, [pipe.id2label.get(c, str(c)) for c in classes]).save(out)
        print(f"wrote {len(images)} images of {len(classes)} classes to {out}")
