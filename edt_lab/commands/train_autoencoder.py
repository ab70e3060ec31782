"""`edt-lab train-autoencoder --out DIR`: train the digit autoencoder whose latents measure how real digits look."""

from .train_classifier import add_fit_arguments, check_fit_options


def add_arguments(parser):
    add_fit_arguments(parser, "autoencoder", epochs=30)


def run(args):
    from ..realism import train_digit_autoencoder

    check_fit_options(args)
    results = train_digit_autoencoder(args.out, epochs=args.epochs, seed=args.seed)
    print(f"saved to {args.out}: held-out reconstruction MSE {results['held_out_mse']:.4f} "
          f"in {results['seconds']:.0f} s")
