"""Scores of generated images from network features: Frechet distance (FID), Inception score, precision/recall."""

import warnings

import numpy as np
import scipy.linalg
import torch


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

