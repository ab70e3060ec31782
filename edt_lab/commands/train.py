"""`edt-lab train`: its options, and a call of the trainer (edt_lab.training).

A run is a folder (config.json, log.jsonl, checkpoints/, samples/: see edt_lab.training.run_folder); a killed run
resumed from its last checkpoint repeats the losses of an uninterrupted run.
"""

from ..names import MASKING_STRATEGIES, TIMESTEP_SAMPLERS
from ..training.recipe import DEFAULT_LR, NO_MASKING_LR_UPDATE_EVERY, RELEASED_LR


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="EDT-T/2", help="a registered model name such as EDT-S/2, DiT-XL/2 or "
                        "MDTv2-B/2 (default EDT-T/2; `edt-lab flops NAME` prints one's cost)")
    parser.add_argument("--data", default="mnist", help="'mnist' (4,500 of the bundled digits; 500 are held out "
                        "for evaluation), 'images:DIR' (one sub-folder per class, pixel-space models) or "
                        "'features:DIR' (latents from extract-features)")
    parser.add_argument("--results-dir", required=True, help="the run folder: a new or empty one (created), or an "
                        "earlier run's to continue with --resume")
    parser.add_argument("--max-steps", type=int, required=True, help="train until this many optimiser steps")
    parser.add_argument("--batch-size", type=int, default=256, help="samples per optimiser step over all processes")
    parser.add_argument("--ckpt-every", type=int, default=1000, help="checkpoint every K steps (and at the end)")
    parser.add_argument("--keep-checkpoints", type=int, default=3, help="how many newest checkpoints to keep")
    parser.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint")
    parser.add_argument("--init-weights", default=None,
                        help="start a new run from these weights (any file or folder `load_checkpoint` reads, of the "
                        "same model) instead of a fresh initialisation, which leaves the recipe; the EMA starts from "
                        "them too")
    parser.add_argument("--masking", choices=MASKING_STRATEGIES, default=None,
                        help="masked pass: edt (default for EDT), mdt (token removal, default for MDTv2), input-zero "
                        "(MDT's counts zeroed at the input, EDT or DiT) or none (default for DiT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=("adan", "adamw"), default="adan", help="no weight decay either way")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"initial learning rate (default: as released, {RELEASED_LR['EDT-XL/2']:g} for EDT-XL/2, "
                        f"{DEFAULT_LR:g} otherwise)")
    parser.add_argument("--lr-final", type=float, default=5e-5, help="learning rate after the linear decay")
    parser.add_argument("--lr-decay-steps", type=int, default=400_000, help="steps of the linear decay, then flat")
    parser.add_argument("--lr-update-every", type=int, default=None,
                        help="set the decayed rate only every K steps (default: as released, 1 with a masked pass, "
                        f"{NO_MASKING_LR_UPDATE_EVERY} with --masking none, the schedule of the no-masking script)")
    parser.add_argument("--ema-decay", type=float, default=0.9999)
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    parser.add_argument("--timestep-sampler", choices=sorted(TIMESTEP_SAMPLERS), default="loss-second-moment",
                        help="loss-second-moment (as released: t drawn by its recent losses) or uniform (leaves the "
                        "recipe)")
    parser.add_argument("--log-every", type=int, default=100, help="write a log.jsonl line every N steps")
    parser.add_argument("--sample-every", type=int, default=0, help="write an EMA preview every N steps (0: never)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training forward and backward of "
                        "every pass (with CUDA graphs on a GPU)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no",
                        help="bf16 autocast; needs native bf16 hardware (a GPU of compute capability 8 or later, "
                             "or a CPU with avx512_bf16 or amx_bf16)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader worker processes for data read "
                        "from files (in-memory data, the digits and latents, is indexed on the training device)")
    parser.add_argument("--vae", default=None, help="diffusers AutoencoderKL folder of features data: decodes the "
                        "previews and is kept with the run for export")


def run(args) -> None:
    from ..training.loop import train

    train(args)
