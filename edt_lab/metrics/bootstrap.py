"""Bootstrap intervals of the digit measures: judge the images once, then resample them within each class."""

import numpy as np
from scipy.stats import wasserstein_distance

from ..checks import finite_number, whole_number
from ..classifier import load_digit_classifier
from ..data import diffusion_split, load_digits
from ..realism import STATISTICS, digit_statistics, encode_digits, load_digit_autoencoder
from .digits import classify_digits, digit_labels, reference_split, to_digit_images
from .scores import feature_statistics, frechet_distance


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
    logits, _ = classify_digits(classifier, images)
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

