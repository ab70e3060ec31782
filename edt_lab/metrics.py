"""Sample quality: Frechet distance, Inception score, precision/recall, digit-classifier metrics, ADM .npz scoring."""

import json
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from scipy.stats import wasserstein_distance

from edt_lab.assets import CHECKOUT_ASSETS
from edt_lab.checks import finite_number, whole_number
from edt_lab.classifier import load_digit_classifier
from edt_lab.cli import output_file
from edt_lab.data import diffusion_split, load_digits
from edt_lab.precision import PRECISIONS, autocast, resolve_precision
from edt_lab.realism import STATISTICS, digit_statistics, encode_digits, load_digit_autoencoder
from edt_lab.sample import process_device

INCEPTION_FILE = "inception-2015-12-05.pt"
DEFAULT_INCEPTION_PATH = CHECKOUT_ASSETS / INCEPTION_FILE
SFID_NOTE = ("sFID not computed: it needs Inception's spatial mixed_6/conv features, "
             "which the TorchScript Inception file does not expose")


#################################################################################
#                               Generic metrics                                 #
#################################################################################

def feature_statistics(features):
    """Mean (F,) and covariance (F, F), in float64, of features (N, F)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"expected features of shape (N, F) with N >= 2, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2): the FID formula."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: means {mu1.shape} and {mu2.shape}, "
                         f"covariances {sigma1.shape} and {sigma2.shape}")
    with warnings.catch_warnings():  # a singular product is handled below, not worth a warning
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A (near-)singular product has no stable square root: nudge both covariances off singularity.
        offset = np.eye(len(mu1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Round-off gives tiny imaginary parts; a large one means the statistics are broken.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the covariances' product has a complex square root (imaginary part "
                             f"{np.abs(covmean.imag).max():.3g}): are the statistics valid covariances?")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits_or_probs, splits: int = 10):
    """Inception score (mean, std over splits) of class predictions (N, K), given as logits or probabilities."""
    scores = torch.as_tensor(np.asarray(logits_or_probs), dtype=torch.float64)
    if scores.ndim != 2 or not 1 <= splits <= len(scores):
        raise ValueError(f"expected predictions (N, K) with N >= splits = {splits}, got {tuple(scores.shape)}")
    is_probs = bool((scores >= 0).all()) and torch.allclose(scores.sum(1), torch.ones(len(scores), dtype=scores.dtype),
                                                            atol=1e-3)
    probs = scores if is_probs else scores.softmax(dim=1)
    values = []
    for part in torch.tensor_split(probs, splits):
        marginal = part.mean(dim=0, keepdim=True)  # p(y) over the split
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(dim=1).mean()
        values.append(kl.exp().item())
    return float(np.mean(values)), float(np.std(values))


def _knn_radii(points, k: int, batch_size: int):
    """Distance (N,) from each point to its k-th nearest other point of the same set."""
    # The (k + 1)-th smallest distance, since each point is its own nearest neighbour at distance 0.
    return torch.cat([torch.cdist(points[i:i + batch_size], points).kthvalue(k + 1, dim=1).values
                      for i in range(0, len(points), batch_size)])


def _fraction_inside(points, centres, radii, batch_size: int) -> float:
    """Fraction of points (N, F) inside at least one ball (centres (M, F), radii (M,))."""
    inside = [(torch.cdist(points[i:i + batch_size], centres) <= radii).any(dim=1)
              for i in range(0, len(points), batch_size)]
    return torch.cat(inside).float().mean().item()


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 1000):
    """Improved precision and recall (Kynkaanniemi et al. 2019): (precision, recall) from k-NN manifolds.

    Precision: the fraction of fakes inside the real manifold (union of balls reaching each real point's k-th
    neighbour); recall: the fraction of reals inside the fake manifold.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float32)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float32)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1] or min(len(real), len(fake)) <= k:
        raise ValueError(f"expected real (N, F) and fake (M, F) features with more than k = {k} rows each, "
                         f"got {tuple(real.shape)} and {tuple(fake.shape)}")
    precision = _fraction_inside(fake, real, _knn_radii(real, k, batch_size), batch_size)
    recall = _fraction_inside(real, fake, _knn_radii(fake, k, batch_size), batch_size)
    return precision, recall


#################################################################################
#                       Digits judged by the digit classifier                   #
#################################################################################

def to_digit_images(images):
    """Digits as (N, 1, 32, 32) float in [-1, 1], from that or from uint8 (N, 32, 32, 1) or (N, 32, 32) (ADM .npz)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        images = images.unsqueeze(-1) if images.ndim == 3 else images
        images = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, H, W, 1) -> (N, 1, H, W)
    images = images.float()
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 32, 32) or not len(images):
        raise ValueError(f"expected digits of shape (N, 1, 32, 32) in [-1, 1] or uint8 (N, 32, 32, 1), N >= 1, "
                         f"got {tuple(images.shape)}")
    low, high = images.min().item(), images.max().item()
    if not -1.01 <= low <= high <= 1.01:  # also NaN
        raise ValueError(f"expected float digits in [-1, 1], got values in [{low:.3g}, {high:.3g}]")
    if low >= 0:  # digits have a background of -1
        raise ValueError(f"expected float digits in [-1, 1] with a background of -1, got values in [{low:.3g}, "
                         f"{high:.3g}]: images in [0, 1], such as the pipeline's output_type 'pt', go in as "
                         f"images * 2 - 1")
    return images


def digit_labels(labels, num_images: int) -> torch.Tensor:
    """Requested digit classes as a (N,) int64 tensor, one per image, each in 0..9; ValueError otherwise."""
    array = np.asarray(labels)
    if array.dtype.kind not in "iu" or array.size != num_images:
        raise ValueError(f"expected {num_images} integer labels in 0..9, got {array.size} of type {array.dtype}")
    labels = torch.from_numpy(array.astype(np.int64)).flatten()
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"expected {num_images} labels in 0..9, got labels in {labels.min()}..{labels.max()}")
    return labels


@torch.no_grad()
def _classify(classifier, images, batch_size: int = 128, dtype=torch.float32):
    """Logits (N, 10) and penultimate features (N, F), float32, of digits (N, 1, 32, 32) by an eval-mode classifier;
    dtype bf16 runs the classifier under autocast."""
    with autocast(images.device, dtype):
        features = torch.cat([classifier.features(images[i:i + batch_size])
                              for i in range(0, len(images), batch_size)])
        logits = classifier.logits(features)  # in eval mode the logits are the head on the features
    return logits.float(), features.float()


def class_accuracy(logits, labels) -> tuple[float, list]:
    """Accuracy of logits (N, 10) against labels (N,), over all and per class (None for a class not asked for)."""
    correct = (logits.argmax(dim=1) == labels).float()
    per_class = [correct[labels == c].mean().item() if (labels == c).any() else None for c in range(10)]
    return correct.mean().item(), per_class


def nearest_distances(queries, references, batch_size: int = 500):
    """L2 distance (N,) in [-1, 1] pixel space from each query image to its nearest reference image."""
    queries, references = queries.flatten(1).double(), references.flatten(1).double()  # exact 0 for copies
    return torch.cat([torch.cdist(queries[i:i + batch_size], references).min(dim=1).values
                      for i in range(0, len(queries), batch_size)])


def realism_metrics(images, floor, rest, autoencoder=None) -> dict:
    """Realism of digits `images` against real digits `rest`, each beside the same measure for real `floor` digits.

    All three are (N, 1, 32, 32) in [-1, 1]; `floor` and `rest` are disjoint real digits (floor as many as the
    samples where possible). Returns plain numbers: `ae_fid` (Frechet distance of the autoencoder's latents) and
    `ae_fid_real_floor`; for each statistic S of `edt_lab.realism.digit_statistics`: `S` (mean over the samples),
    `S_real` (mean over `rest`), `S_w1` (Wasserstein distance of the samples' values to rest's) and
    `S_w1_real_floor`.
    """
    autoencoder = load_digit_autoencoder() if autoencoder is None else autoencoder
    codes = [encode_digits(autoencoder, x) for x in (images, floor, rest)]
    rest_codes = feature_statistics(codes[2])
    results = {"ae_fid": frechet_distance(*feature_statistics(codes[0]), *rest_codes),
               "ae_fid_real_floor": frechet_distance(*feature_statistics(codes[1]), *rest_codes)}
    sample_stats, floor_stats, rest_stats = (digit_statistics(x) for x in (images, floor, rest))
    for name in STATISTICS:
        results[name] = float(sample_stats[name].mean())
        results[f"{name}_real"] = float(rest_stats[name].mean())
        results[f"{name}_w1"] = float(wasserstein_distance(sample_stats[name], rest_stats[name]))
        results[f"{name}_w1_real_floor"] = float(wasserstein_distance(floor_stats[name], rest_stats[name]))
    return results


def reference_split(num_samples: int, num_reference: int, seed: int = 0):
    """Indices of the real `floor` digits (as many as the samples where possible) and of the `rest` they and the
    samples are both compared against, so the two values of every measure have the same bias."""
    order = torch.randperm(num_reference, generator=torch.Generator().manual_seed(seed))
    num_floor = min(num_samples, num_reference // 2)
    return order[:num_floor], order[num_floor:]


def digit_metrics(images, labels=None, classifier=None, reference=None, seed: int = 0, dtype=torch.float32,
                  autoencoder=None):
    """Judge generated digits with the digit classifier; returns a dict of plain numbers.

    images: (N, 1, 32, 32) in [-1, 1] or uint8 (N, 32, 32, 1); labels: the requested classes (N,) or None.
    reference: real digits for the FID (default: the 500 digits held out from the diffusion model's training).
    The FID is in the classifier's feature space. `fid_real_floor` is the FID of real digits, as many as the
    samples (where the reference allows), against the same reference part, so it is the value a perfect
    generator would get. `nearest_train_l2` is the mean pixel distance of each sample to its nearest digit of
    the diffusion model's 4,500 training digits; `nearest_train_l2_held_out` is the same for the 500 held-out
    digits, the value of new, uncopied digits. `accuracy_real` and `per_class_accuracy_real` are the classifier's
    accuracy on the 500 held-out digits (None with another reference, whose classes are unknown): real digits
    are not all legible either, so this is what a perfect generator's accuracy would be near. dtype bf16 runs the
    classifier under bf16 autocast (the autoencoder of the realism measures always runs in float32).
    """
    images = to_digit_images(images)
    labels = None if labels is None else digit_labels(labels, len(images))
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype!r}")
    classifier = load_digit_classifier() if classifier is None else classifier.eval()
    digits, all_labels = load_digits()
    train, held_out = diffusion_split(all_labels)
    real_labels = all_labels[held_out] if reference is None else None  # another reference's are unknown
    reference = digits[held_out] if reference is None else to_digit_images(reference)
    if len(images) < 2 or len(reference) < 4:
        raise ValueError(f"need at least 2 samples and 4 reference digits, got {len(images)} and {len(reference)}")

    logits, features = _classify(classifier, images, dtype=dtype)
    results = {"num_samples": len(images), "accuracy": None, "per_class_accuracy": None, "accuracy_real": None,
               "per_class_accuracy_real": None}
    if labels is not None:
        results["accuracy"], results["per_class_accuracy"] = class_accuracy(logits, labels)

    reference_logits, reference_features = _classify(classifier, reference, dtype=dtype)
    if real_labels is not None:
        results["accuracy_real"], results["per_class_accuracy_real"] = class_accuracy(reference_logits, real_labels)
    floor, rest = reference_split(len(images), len(reference), seed)
    rest_stats = feature_statistics(reference_features[rest])
    results["fid"] = frechet_distance(*feature_statistics(features), *rest_stats)
    results["fid_real_floor"] = frechet_distance(*feature_statistics(reference_features[floor]), *rest_stats)
    results.update(realism_metrics(images, reference[floor], reference[rest], autoencoder))
    results["nearest_train_l2"] = nearest_distances(images, digits[train]).mean().item()
    results["nearest_train_l2_held_out"] = nearest_distances(digits[held_out], digits[train]).mean().item()
    results["notes"] = ["fid: in the digit classifier's feature space (not Inception), blind to how digits are drawn; "
                        "ae_fid and the *_w1 statistics measure appearance; compare each with its *_real_floor, "
                        "and accuracy with accuracy_real (the classifier on real held-out digits)"]
    return results


#################################################################################
#                      Bootstrap intervals of the digit measures                #
#################################################################################

BOOTSTRAP_MEASURES = ("accuracy", "ae_fid", *(f"{name}_w1" for name in STATISTICS))


def judge_digits(images, labels, classifier=None, autoencoder=None, seed: int = 0) -> dict:
    """What the digit measures of `BOOTSTRAP_MEASURES` are built from, per image, so they can be recomputed on
    resamples without judging the images again: `labels` (N,), `correct` (N,), autoencoder `codes` (N, 32) and
    each statistic (N,), with the real reference part (`reference_split` of the held-out digits, as in
    `digit_metrics`) they are compared against. The classifier-feature FID is left out: it is blind to
    appearance, and its 128-dimensional matrix square root is too slow to resample."""
    images = to_digit_images(images)
    labels = digit_labels(labels, len(images))
    classifier = load_digit_classifier() if classifier is None else classifier.eval()
    autoencoder = load_digit_autoencoder() if autoencoder is None else autoencoder
    digits, all_labels = load_digits()
    reference = digits[diffusion_split(all_labels)[1]]
    _, rest = reference_split(len(images), len(reference), seed)
    logits, _ = _classify(classifier, images)
    return {"labels": labels.numpy(), "correct": (logits.argmax(dim=1) == labels).double().numpy(),
            "codes": encode_digits(autoencoder, images).numpy(), "statistics": digit_statistics(images),
            "rest_codes": feature_statistics(encode_digits(autoencoder, reference[rest]).numpy()),
            "rest_statistics": digit_statistics(reference[rest])}


def measures_of(judgement: dict, index) -> dict:
    """`BOOTSTRAP_MEASURES` of the judged images at `index` (a resample may repeat images)."""
    results = {"accuracy": float(judgement["correct"][index].mean()),
               "ae_fid": frechet_distance(*feature_statistics(judgement["codes"][index]), *judgement["rest_codes"])}
    for name in STATISTICS:
        results[f"{name}_w1"] = float(wasserstein_distance(judgement["statistics"][name][index],
                                                           judgement["rest_statistics"][name]))
    return results


def bootstrap_digit_measures(judgement: dict, baseline: dict | None = None, resamples: int = 300, seed: int = 0,
                             level: float = 0.95) -> dict:
    """measure -> {"value", "low", "high"}: the measure and its percentile bootstrap interval, resampling images
    within each class (the designs are balanced). With a `baseline` judged on the same labels and seeds, the same
    resamples give the paired difference (this minus baseline) as "diff", "diff_low", "diff_high": an interval
    that excludes 0 resolves the difference."""
    if whole_number(resamples, "resamples") < 2 or not 0 < finite_number(level, "level") < 1:
        raise ValueError(f"need at least 2 resamples and a level in (0, 1), e.g. 0.95; got {resamples} and {level}")
    labels = judgement["labels"]
    if baseline is not None and not np.array_equal(baseline["labels"], labels):
        raise ValueError("the baseline must be judged on the same labels, in the same order")
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    generator = np.random.default_rng(seed)
    draws = {m: [] for m in BOOTSTRAP_MEASURES}
    diffs = {m: [] for m in BOOTSTRAP_MEASURES}
    for _ in range(resamples):
        index = np.concatenate([generator.choice(group, len(group)) for group in groups])
        values = measures_of(judgement, index)
        base = measures_of(baseline, index) if baseline is not None else None
        for m in BOOTSTRAP_MEASURES:
            draws[m].append(values[m])
            if base is not None:
                diffs[m].append(values[m] - base[m])
    tail = 100 * (1 - level) / 2
    full = measures_of(judgement, np.arange(len(labels)))
    full_base = measures_of(baseline, np.arange(len(labels))) if baseline is not None else None
    results = {}
    for m in BOOTSTRAP_MEASURES:
        low, high = np.percentile(draws[m], [tail, 100 - tail])
        results[m] = {"value": full[m], "low": float(low), "high": float(high)}
        if baseline is not None:
            low, high = np.percentile(diffs[m], [tail, 100 - tail])
            results[m].update(diff=full[m] - full_base[m], diff_low=float(low), diff_high=float(high))
    return results


#################################################################################
#                         Inception-v3 metrics on ADM .npz                      #
#################################################################################

def _first_line(error) -> str:
    """An exception's message as one line (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def inception_path(path=None) -> Path:
    """The Inception weights file: `path` (--inception) or, when None, the default one; ValueError when missing."""
    if path is None:
        if not DEFAULT_INCEPTION_PATH.is_file():
            raise ValueError(f"no Inception weights at {DEFAULT_INCEPTION_PATH}: put {INCEPTION_FILE} (TorchScript, "
                             f"from the StyleGAN2-ADA metrics) there or pass --inception PATH")
        return DEFAULT_INCEPTION_PATH
    path = Path(path)
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise ValueError(f"--inception {path} {state}: expected the TorchScript {INCEPTION_FILE} of the "
                         f"StyleGAN2-ADA metrics")
    return path


def load_inception(path=None):
    """The TorchScript Inception-v3 of the StyleGAN2-ADA metrics (default: assets/inception-2015-12-05.pt)."""
    path = inception_path(path)
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a TorchScript Inception-v3 file ({_first_line(error)})") from None
    return model.eval()


@torch.no_grad()
def inception_outputs(model, images, return_features: bool, batch_size: int = 64, device="cpu", dtype=torch.float32):
    """Pool features (N, 2048) or class probabilities (N, 1008) of uint8 images (N, H, W, 1 or 3); dtype bf16 runs
    the network under bf16 autocast."""
    outputs = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size]).to(device).permute(0, 3, 1, 2).float()  # (B, C, H, W), 0..255
        x = x.expand(-1, 3, -1, -1)  # grey -> RGB; a no-op for RGB
        # ADM's evaluator and StyleGAN2-ADA's IS both drop the output bias before the softmax.
        with autocast(device, dtype):
            output = model(x, return_features=True) if return_features else model(x, no_output_bias=True)
        outputs.append(output.double().cpu())
    return torch.cat(outputs).numpy()


NPZ_LAYOUT = "an ADM-style .npz (arr_0: uint8 N x H x W x 3 or x 1)"


def _npz_arrays(path: Path) -> dict:
    """The arrays of the .npz `path`, never unpickled (a file's pickles could run code); ValueError with the reason
    when it is not an archive of plain arrays."""
    def unreadable(reason):
        return ValueError(f"{path}: not a readable .npz of images ({reason})")

    try:
        with open(path, "rb") as file:
            # numpy tries what is not a zip (or an .npy) as a pickle, and its error suggests allow_pickle=True.
            if not zipfile.is_zipfile(file):
                raise unreadable("not a zip archive of .npy arrays")
        arrays = {}
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                try:
                    arrays[name] = data[name]
                except ValueError as error:
                    # Again numpy's message would suggest allow_pickle=True for an array of Python objects.
                    raise unreadable(f"{name} holds Python objects" if "allow_pickle" in str(error)
                                     else f"{name}: {_first_line(error)}") from None
                if not isinstance(arrays[name], np.ndarray):  # a zip member that is not an .npy
                    raise unreadable(f"{name} is not an .npy array")
    except OSError as error:
        raise unreadable(error.strerror or _first_line(error)) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # a damaged archive
        raise unreadable(_first_line(error)) from None
    return arrays


def read_npz(path, images_required: bool = True):
    """The arrays of an ADM-style .npz: `arr_0` uint8 (N, H, W, 1 or 3), optional `arr_1` labels, `mu`, `sigma`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: expected {NPZ_LAYOUT}")
    if not path.is_file():
        raise ValueError(f"{path} does not exist: expected {NPZ_LAYOUT}")
    arrays = _npz_arrays(path)
    images = arrays.get("arr_0")
    if images is None and (images_required or "mu" not in arrays or "sigma" not in arrays):
        needed = "arr_0" if images_required else "arr_0 or mu and sigma"
        raise ValueError(f"{path} holds {sorted(arrays)}; expected {needed}")
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3)):
        raise ValueError(f"{path}: arr_0 is {images.dtype} {images.shape}; expected uint8 (N, H, W, 3 or 1)")
    if images is not None and len(images) == 0:
        raise ValueError(f"{path}: arr_0 holds no images")
    if "arr_1" in arrays and (images is None or arrays["arr_1"].shape != (len(images),)):
        raise ValueError(f"{path}: arr_1 has shape {arrays['arr_1'].shape}; expected one label per image")
    return arrays


def evaluate_npz(samples_npz, ref_npz=None, inception=None, batch_size: int = 64, device="cpu", precision="fp32"):
    """Score the samples of an ADM-style .npz; returns a dict of plain numbers and notes.

    32x32 one-channel digits without Inception weights are judged by the digit classifier (`digit_metrics`,
    reference: the images of ref_npz or the bundled digits). Otherwise Inception-v3 (`inception`: a path or a
    loaded TorchScript module) gives FID against ref_npz (its `mu`/`sigma` when present, as in ADM's reference
    batches, else its images), IS, and precision/recall against the reference images.
    precision: "fp32", "bf16" or "auto" for the networks' forwards (edt_lab.precision); the statistics stay float64.
    """
    dtype = resolve_precision(precision, device)
    samples = read_npz(samples_npz)
    reference = read_npz(ref_npz, images_required=False) if ref_npz is not None else None
    images, labels = samples["arr_0"], samples.get("arr_1")

    if images.shape[1:] == (32, 32, 1) and inception is None:
        if reference is not None and "arr_0" not in reference:
            raise ValueError(f"{ref_npz} holds only Inception statistics: pass --inception to compare against them, "
                             "or give an .npz of real digits")
        return digit_metrics(images, labels, reference=None if reference is None else reference["arr_0"],
                             dtype=dtype)

    if reference is None:
        raise ValueError("Inception metrics need --ref REF.npz (an ADM reference batch or an .npz of real images)")
    model = inception if isinstance(inception, torch.nn.Module) else load_inception(inception)
    model = model.to(device)
    features = inception_outputs(model, images, True, batch_size, device, dtype)
    probs = inception_outputs(model, images, False, batch_size, device, dtype)
    reference_features = None
    if "arr_0" in reference:
        reference_features = inception_outputs(model, reference["arr_0"], True, batch_size, device, dtype)
    if "mu" in reference and "sigma" in reference:
        reference_stats = reference["mu"], reference["sigma"]
    else:
        reference_stats = feature_statistics(reference_features)

    inception_mean, inception_std = inception_score(probs)
    results = {"num_samples": len(images), "fid": frechet_distance(*feature_statistics(features), *reference_stats),
               "inception_score": inception_mean, "inception_score_std": inception_std,
               "precision": None, "recall": None, "sfid": None, "notes": [SFID_NOTE]}
    if reference_features is None:
        results["notes"].append("precision/recall not computed: the reference .npz has no images (arr_0)")
    else:
        results["precision"], results["recall"] = precision_recall(reference_features, features)
    return results


#################################################################################
#                                  The command                                  #
#################################################################################

def format_table(results) -> str:
    """The results as a two-column text table, notes below."""
    rows = []
    for name, value in results.items():
        if name == "notes":
            continue
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list):
            value = " ".join("-" if v is None else f"{v:.2f}" for v in value)
        rows.append((name, "-" if value is None else str(value)))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines + [f"note: {note}" for note in results.get("notes", [])])


def add_arguments(parser):
    parser.add_argument("samples", help="ADM-style .npz of samples (arr_0: uint8 N x H x W x 3 or x 1, arr_1: labels)")
    parser.add_argument("--ref", default=None,
                        help="reference .npz: real images (arr_0) and/or Inception statistics (mu, sigma); "
                             "optional for 32x32 digits (default: the bundled digits)")
    parser.add_argument("--inception", default=None,
                        help=f"TorchScript {INCEPTION_FILE} (default for non-digit samples: {DEFAULT_INCEPTION_PATH})")
    parser.add_argument("--batch-size", type=int, default=64, help="images per Inception forward")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto",
                        help="of the Inception network (auto: the GPU when there is one); digits without "
                             "--inception are judged on the CPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="of the networks' forwards: fp32, bf16 (autocast; needs native bf16 hardware) or auto")
    parser.add_argument("--json", default=None, help="also write the results to this .json file")


def run(args):
    # Every option is checked before the images are read and the networks run.
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = process_device(args.device)  # as `edt-lab sample` checks it
    json_path = output_file(args.json, "--json") if args.json else None
    for option, path in (("the samples", args.samples), ("--ref", args.ref)):
        if json_path is not None and path is not None and json_path.resolve() == Path(path).resolve():
            raise ValueError(f"--json {args.json}: is {option} file, which it would overwrite: choose another name")
    if args.inception is not None:
        inception_path(args.inception)
    results = evaluate_npz(args.samples, args.ref, inception=args.inception, batch_size=args.batch_size,
                           device=device, precision=args.precision)
    print(format_table(results))
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
