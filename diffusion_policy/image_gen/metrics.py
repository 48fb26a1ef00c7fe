"""Sample-quality metrics for generated images, measured in a classifier's feature space.

FID (Heusel et al. 2017), KID (Bińkowski et al. 2018) and improved precision/recall (Kynkäänniemi et al.
2019) are computed here on the penultimate features of our own `FeatureClassifier` (trained on the same
small data set), not on Inception-v3 pool features. The numbers are therefore only comparable with each
other -- same classifier weights, same reference images, same sample counts -- and are NOT comparable
with the Inception-FID/KID numbers reported in papers.

The distance functions take feature matrices `(N, D)` as numpy arrays or torch tensors and compute in
float64; `evaluate_images` extracts the features and runs all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffusion_policy.image_gen.classifier import FeatureClassifier, extract_features, predicted_labels

Features = np.ndarray | Tensor


def _as_float64(name: str, feats: Features) -> np.ndarray:
    x = feats.detach().cpu().numpy() if isinstance(feats, Tensor) else np.asarray(feats)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) feature matrix, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} has shape {x.shape}: at least 2 samples are needed")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} of shape {x.shape} has {int((~np.isfinite(x)).sum())} non-finite values")
    return x


def _pair(
    feats_a: Features, feats_b: Features, names: tuple[str, str] = ("feats_a", "feats_b")
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_float64(names[0], feats_a), _as_float64(names[1], feats_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {names[0]} {a.shape} vs {names[1]} {b.shape}")
    return a, b


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    # Round-off makes zero eigenvalues of a singular covariance slightly negative.
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(feats_a: Features, feats_b: Features) -> float:
    """Fréchet distance between Gaussians fitted to `feats_a (N, D)` and `feats_b (M, D)`:

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})   (Heusel et al. 2017, eq. 6).

    Tr (S_a S_b)^{1/2} is the sum of square roots of the eigenvalues of S_a S_b, which equal those of the
    symmetric PSD matrix S_a^{1/2} S_b S_a^{1/2}; two symmetric eigendecompositions avoid the unstable
    general matrix square root, including for singular covariances.
    """
    a, b = _pair(feats_a, feats_b)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    # atleast_2d: with D == 1, np.cov returns a 0-d array.
    s_a = np.atleast_2d(np.cov(a, rowvar=False, ddof=1))
    s_b = np.atleast_2d(np.cov(b, rowvar=False, ddof=1))
    root_a = _psd_sqrt(s_a)
    middle = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    fid = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_sqrt)
    # The exact value is >= 0; round-off on identical sets can give -1e-12.
    return max(fid, 0.0)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    # The diagonal k(x_i, x_i) is left out of the within-set means; that is what makes MMD^2 unbiased.
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(
    feats_a: Features, feats_b: Features, *, subsets: int = 10, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID of `feats_a (N, D)` vs `feats_b (M, D)`: the unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / D + 1)^3 (Bińkowski et al. 2018), averaged over `subsets` random subsets of
    `min(subset_size, N, M)` rows of each set drawn without replacement. Returns (mean, std over subsets).

    Unlike FID it is unbiased, so it can be slightly negative when the two sets match.
    """
    a, b = _pair(feats_a, feats_b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets={subsets} must be >= 1 and subset_size={subset_size} >= 2")
    size = min(subset_size, a.shape[0], b.shape[0])
    rng = np.random.default_rng(seed)
    values = [
        _unbiased_mmd2(a[rng.choice(a.shape[0], size, replace=False)], b[rng.choice(b.shape[0], size, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def _knn_radii(x: Tensor, k: int, block: int) -> Tensor:
    # k + 1 because each point's nearest neighbour within its own set is itself at distance 0.
    return torch.cat([torch.cdist(x[i : i + block], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), block)])


def _inside_manifold(query: Tensor, support: Tensor, radii: Tensor, block: int) -> Tensor:
    return torch.cat(
        [(torch.cdist(query[i : i + block], support) <= radii).any(dim=1) for i in range(0, len(query), block)]
    )


def precision_recall(real: Features, fake: Features, *, k: int = 3, block: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of `fake (M, D)` against `real (N, D)`.

    Each set's manifold is the union of balls around its samples with radius the distance to the k-th
    nearest neighbour in the same set. Precision is the fraction of fake samples inside the real manifold
    (fidelity); recall the fraction of real samples inside the fake manifold (coverage). Distances are
    computed `block` rows at a time, so memory is O(block * max(N, M)).
    """
    r, f = _pair(real, fake, names=("real", "fake"))
    if not 1 <= k < min(r.shape[0], f.shape[0]):
        raise ValueError(f"k={k} must be in [1, min(N, M)) for real {r.shape} and fake {f.shape}")
    if block < 1:
        raise ValueError(f"block={block} must be >= 1")
    r_t, f_t = torch.from_numpy(r), torch.from_numpy(f)
    real_radii, fake_radii = _knn_radii(r_t, k, block), _knn_radii(f_t, k, block)
    precision = _inside_manifold(f_t, r_t, real_radii, block).double().mean().item()
    recall = _inside_manifold(r_t, f_t, fake_radii, block).double().mean().item()
    return precision, recall


@dataclass(frozen=True)
class ImageQuality:
    """All metrics of one set of generated images (see the module docstring for their scope)."""

    fid: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float
    class_accuracy: float | None  # classifier accuracy on the fakes vs. their conditioning labels
    n_samples: int


def evaluate_images(
    classifier: FeatureClassifier,
    fake: Tensor,
    real: Tensor,
    fake_labels: Tensor | None = None,
    *,
    k: int = 3,
    kid_subsets: int = 10,
    kid_subset_size: int = 1000,
    batch_size: int = 500,
) -> ImageQuality:
    """Score generated images `fake (M, C, H, W)` against reference images `real (N, C, H, W)`, both in
    [-1, 1]. `fake_labels (M,)`, the classes the fakes were conditioned on, adds `class_accuracy`.
    """
    if fake_labels is not None and tuple(fake_labels.shape) != (fake.shape[0],):
        raise ValueError(
            f"fake_labels {tuple(fake_labels.shape)} must be ({fake.shape[0]},) for fake {tuple(fake.shape)}"
        )
    feats_fake = extract_features(classifier, fake, batch_size)
    feats_real = extract_features(classifier, real, batch_size)
    kid_mean, kid_std = kernel_inception_distance(
        feats_real, feats_fake, subsets=kid_subsets, subset_size=kid_subset_size
    )
    precision, recall = precision_recall(feats_real, feats_fake, k=k)
    class_accuracy = None
    if fake_labels is not None:
        class_accuracy = (predicted_labels(classifier, fake, batch_size) == fake_labels.cpu()).double().mean().item()
    return ImageQuality(
        fid=frechet_distance(feats_real, feats_fake),
        kid_mean=kid_mean,
        kid_std=kid_std,
        precision=precision,
        recall=recall,
        class_accuracy=class_accuracy,
        n_samples=int(fake.shape[0]),
    )
