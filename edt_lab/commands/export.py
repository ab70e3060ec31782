"""`edt-lab export RUN_DIR OUT_DIR`: a training run's weights as a pipeline folder."""


def add_arguments(parser):
    parser.add_argument("run_dir", help="the --results-dir of an `edt-lab train` run")
    parser.add_argument("out_dir", help="the pipeline folder to write")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the newest readable)")
    parser.add_argument("--weights", choices=("ema", "raw"), default="ema",
                        help="the EMA weights (default) or the raw weights the optimizer updates")
    parser.add_argument("--force", action="store_true", help="write into an out_dir that already holds files (the "
                        "pipeline's files are replaced, others such as a README stay)")


def run(args):
    from ..export import export

    out_dir = export(args.run_dir, args.out_dir, args.step, args.force, args.weights)
    print(f"wrote {out_dir}")
