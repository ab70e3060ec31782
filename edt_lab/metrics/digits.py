"""Generated digits judged by the project's digit classifier and autoencoder against real held-out digits."""

import numpy as np
import torch
from scipy.stats import wasserstein_distance

from ..classifier import load_digit_classifier
from ..data import diffusion_split, load_digits
from ..precision import autocast
from ..realism import STATISTICS, digit_statistics, encode_digits, load_digit_autoencoder
from .scores import feature_statistics, frechet_distance


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
def classify_digits(classifier, images, batch_size: int = 128, dtype=torch.float32):
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

    logits, features = classify_digits(classifier, images, dtype=dtype)
    results = {"num_samples": len(images), "accuracy": None, "per_class_accuracy": None, "accuracy_real": None,
               "per_class_accuracy_real": None}
    if labels is not None:
        results["accuracy"], results["per_class_accuracy"] = class_accuracy(logits, labels)

    reference_logits, reference_features = classify_digits(classifier, reference, dtype=dtype)
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

