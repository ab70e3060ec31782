"""`edt-lab extract-features`: encode a folder of class images into VAE latents to train on.

    edt-lab extract-features --data images:DIR --image-size 256 --vae VAE_DIR --out FEATURES_DIR
    edt-lab train --model EDT-S/2 --data features:FEATURES_DIR --vae VAE_DIR ...
"""


def add_arguments(parser):
    parser.add_argument("--data", required=True, help="images:DIR, one sub-folder of images per class")
    parser.add_argument("--image-size", type=int, default=256, help="centre-crop size; latents are 1/8 of it")
    parser.add_argument("--vae", required=True, help="diffusers AutoencoderKL folder (e.g. sd-vae-ft-ema)")
    parser.add_argument("--out", required=True, help="the feature folder to write (latents.safetensors, meta.json)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seeds the draw from the VAE's posterior")
    parser.add_argument("--no-flip", action="store_true",
                        help="encode every image as it is (default, as released: each flipped left-right with "
                        "probability 1/2, once)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                        help="where the VAE encodes (auto: a CUDA GPU when there is one)")
    parser.add_argument("--force", action="store_true", help="write into an --out folder that already holds files")


def run(args):
    from ..checks import generator_seed
    from ..data import extract_features, make_dataset
    from ..devices import process_device
    from ..files import output_folder
    from ..pipeline import load_vae

    if not str(args.data).startswith("images:"):
        raise ValueError(f"--data {args.data!r}: expected images:DIR (one sub-folder of images per class)")
    if args.image_size < 8 or args.image_size % 8:
        raise ValueError(f"--image-size must be a positive multiple of 8 (the VAE's down-sampling), "
                         f"got {args.image_size}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    generator_seed(args.seed, "--seed")
    device = process_device(args.device)
    output_folder(args.out, args.force, "--out")
    dataset = make_dataset(args.data, image_size=args.image_size)
    features = extract_features(dataset, load_vae(args.vae), args.out, args.batch_size, device, args.seed,
                                flip=not args.no_flip)
    print(f"wrote {len(features)} latents of shape {tuple(features.latents.shape[1:])} "
          f"({len(features.classes)} classes) to {args.out}")
