"""`edt-lab export-diffusers CKPT OUT_DIR`: a DiT as a diffusers DiTTransformer2DModel folder."""


def add_arguments(parser):
    parser.add_argument("ckpt", help="a DiT: released .pt, state dict, training checkpoint, model or pipeline folder")
    parser.add_argument("out_dir", help="the DiTTransformer2DModel folder to write")
    parser.add_argument("--allow-timestep-change", action="store_true",
                        help="write a DiT with DiT's own timestep frequencies, which diffusers computes differently")
    parser.add_argument("--force", action="store_true", help="write into an out_dir that already holds files (the "
                        "model's files are replaced, others such as a README stay)")


def run(args):
    from ..checkpoints import load_checkpoint
    from ..diffusers_dit import save_diffusers_dit
    from ..files import output_folder

    out_dir = output_folder(args.out_dir, args.force)  # as `edt-lab export`: nothing overwritten unasked
    out_dir = save_diffusers_dit(load_checkpoint(args.ckpt), out_dir, args.allow_timestep_change)
    print(f"wrote {out_dir}: load it with diffusers.DiTTransformer2DModel.from_pretrained")
