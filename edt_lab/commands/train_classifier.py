"""`edt-lab train-classifier --out DIR`: train the digit classifier that judges generated digits."""


def add_fit_arguments(parser, what: str, epochs: int) -> None:
    """The options train-classifier and train-autoencoder share; `what` names the model saved."""
    parser.add_argument("--out", required=True, help=f"folder to save the {what} in (safetensors + config.json)")
    parser.add_argument("--epochs", type=int, default=epochs, help="passes over the 4,000 training digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="write into an --out folder that already holds files "
                        "(its config.json, weights and README.md are replaced)")


def check_fit_options(args) -> None:
    """Check the command line of train-classifier or train-autoencoder before the training: ValueError for a bad
    value. Creates the --out folder, so one that cannot be is refused now, not after the training; one that holds
    files (another model, say) needs --force, as with export."""
    from ..files import make_parent_folder, output_folder

    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 <= args.seed < 2 ** 31:  # as `edt-lab train`
        raise ValueError(f"--seed must lie in [0, 2**31), got {args.seed}")
    out = output_folder(args.out, args.force, "--out")
    make_parent_folder(out / "config.json", "--out")


def add_arguments(parser):
    add_fit_arguments(parser, "classifier", epochs=12)


def run(args):
    from ..classifier import train_digit_classifier

    check_fit_options(args)
    results = train_digit_classifier(args.out, epochs=args.epochs, seed=args.seed)
    print(f"saved to {args.out}: held-out accuracy {100 * results['val_accuracy']:.2f} % "
          f"in {results['seconds']:.0f} s")
