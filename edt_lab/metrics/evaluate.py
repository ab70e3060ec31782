"""`edt-lab eval`'s library side: score the samples of an ADM-style .npz and print the results as a table."""

import torch

from ..precision import resolve_precision
from .digits import digit_metrics
from .npz import inception_outputs, load_inception, read_npz
from .scores import feature_statistics, frechet_distance, inception_score, precision_recall

SFID_NOTE = ("sFID not computed: it needs Inception's spatial mixed_6/conv features, "
             "which the TorchScript Inception file does not expose")


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

