"""Feature-space image metrics (FID, KID, precision/recall) and the feature classifier behind them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_policy.image_gen import classifier as classifier_mod
from diffusion_policy.image_gen.classifier import (
    ClassifierConfig,
    FeatureClassifier,
    accuracy,
    extract_features,
    load_or_train_classifier,
    predicted_labels,
    random_shift_flip,
    train_classifier,
)
from diffusion_policy.image_gen.metrics import (
    ImageQuality,
    evaluate_images,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These models and batches are tiny: with two threads on a busy 2-core machine, OpenMP synchronisation
    made the training test 30x slower than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _exact_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> np.ndarray:
    """n samples whose sample mean and (ddof=1) covariance are exactly `mean` and `cov`."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False))).T)
    return z @ np.linalg.cholesky(cov).T + mean


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).standard_normal((500, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(torch.from_numpy(x).float(), x) == pytest.approx(0.0, abs=1e-5)


def test_fid_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(1)
    d = 8
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    var_a, var_b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    a = _exact_moments(400, mu_a, np.diag(var_a), seed=2)
    b = _exact_moments(300, mu_b, np.diag(var_b), seed=3)
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_matches_general_eigenvalue_route_and_is_symmetric():
    rng = np.random.default_rng(4)
    d = 6
    l_a, l_b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    cov_a, cov_b = l_a @ l_a.T + 0.1 * np.eye(d), l_b @ l_b.T + 0.1 * np.eye(d)
    a = _exact_moments(200, np.zeros(d), cov_a, seed=5)
    b = _exact_moments(250, np.ones(d), cov_b, seed=6)
    # Independent route: eigenvalues of the non-symmetric product S_a S_b.
    trace_sqrt = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real).sum()
    expected = d + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_fid_in_one_dimension():
    a = _exact_moments(50, np.array([1.0]), np.array([[4.0]]), seed=12)
    b = _exact_moments(60, np.array([-1.0]), np.array([[9.0]]), seed=13)
    assert frechet_distance(a, b) == pytest.approx(2.0**2 + (2.0 - 3.0) ** 2, rel=1e-9)


def test_fid_handles_singular_covariance():
    rng = np.random.default_rng(7)
    a = np.zeros((100, 4))
    a[:, 0] = rng.normal(size=100)  # three dead feature dimensions, as after a ReLU
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)


def test_kid_near_zero_for_same_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    same_mean, same_std = kernel_inception_distance(a, b, subsets=5, subset_size=500)
    shifted_mean, _ = kernel_inception_distance(a, b + 0.5, subsets=5, subset_size=500)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 0.1
    assert shifted_mean > 50 * abs(same_mean)


def test_kid_clips_subset_size_and_is_seeded():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    assert kernel_inception_distance(a, b, seed=3) == kernel_inception_distance(a, b, seed=3)


def test_precision_recall_identical_sets():
    x = np.random.default_rng(10).normal(size=(400, 8))
    assert precision_recall(x, x, k=3) == pytest.approx((1.0, 1.0))


def test_precision_recall_detects_mode_collapse():
    rng = np.random.default_rng(11)
    modes = np.array([[-5.0, 0.0], [5.0, 0.0]])
    real = np.concatenate([rng.normal(size=(300, 2)) + modes[0], rng.normal(size=(300, 2)) + modes[1]])
    fake = rng.normal(size=(600, 2)) + modes[0]
    precision, recall = precision_recall(real, fake, k=3, block=128)
    assert precision > 0.9
    assert recall < 0.6


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros((10, 4)), np.zeros((10, 5)), r"\(10, 4\) vs feats_b \(10, 5\)"),
        (np.zeros((1, 4)), np.zeros((10, 4)), r"\(1, 4\): at least 2"),
        (np.zeros(4), np.zeros((10, 4)), r"shape \(4,\)"),
        (np.full((10, 4), np.nan), np.zeros((10, 4)), r"40 non-finite"),
    ],
)
def test_bad_features_raise_with_shapes(a, b, match):
    with pytest.raises(ValueError, match=match):
        frechet_distance(a, b)
    with pytest.raises(ValueError, match=match):
        kernel_inception_distance(a, b)


def test_precision_recall_rejects_k_too_large():
    with pytest.raises(ValueError, match=r"k=5 .* \(5, 2\)"):
        precision_recall(np.zeros((5, 2)), np.zeros((8, 2)), k=5)


def _blob_dataset(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes of noisy 32x32 images in [-1, 1]: class c is a Gaussian blob at cell c of a 2 x 5 grid."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    rows, cols = 8.0 + 16.0 * (labels // 5), 4.0 + 6.0 * (labels % 5)
    coord = torch.arange(32.0)
    dist2 = (coord[None, :, None] - rows[:, None, None]) ** 2 + (coord[None, None, :] - cols[:, None, None]) ** 2
    images = 2 * torch.exp(-dist2 / (2 * 2.5**2)) - 1 + 0.3 * torch.randn(len(labels), 32, 32, generator=g)
    return images.clamp(-1, 1).unsqueeze(1), labels


def test_random_shift_flip_keeps_shape_and_content():
    x = torch.randn(6, 2, 32, 32)
    g = torch.Generator().manual_seed(0)
    out = random_shift_flip(x, g, max_shift=0)
    flipped = out.flip(-1)
    for i in range(len(x)):
        assert torch.equal(out[i], x[i]) or torch.equal(flipped[i], x[i])
    assert random_shift_flip(x, g).shape == x.shape


def test_classifier_learns_separable_patterns_and_exposes_features():
    x, y = _blob_dataset(40, seed=0)
    x_test, y_test = _blob_dataset(20, seed=1)
    # No augmentation: a flipped blob would belong to another class.
    model = train_classifier(
        x, y, epochs=3, batch_size=32, augment=False, config=ClassifierConfig(width=8), progress=False
    )
    assert accuracy(model, x_test, y_test) > 0.9
    assert extract_features(model, x_test[:7], batch_size=3).shape == (7, 128)
    assert predicted_labels(model, x_test[:7]).shape == (7,)
    with pytest.raises(ValueError, match=r"\(2, 1, 28, 28\)"):
        model(torch.zeros(2, 1, 28, 28))


def test_classifier_config_and_labels_validation_names_value():
    with pytest.raises(ValueError, match="image_size=28"):
        FeatureClassifier(image_size=28)
    x, y = _blob_dataset(2, seed=5)
    with pytest.raises(ValueError, match=r"\[0, 9\], outside \[0, 5\)"):
        train_classifier(x, y, epochs=1, config=ClassifierConfig(num_classes=5), progress=False)


def test_load_or_train_classifier_caches(tmp_path, monkeypatch):
    train = _blob_dataset(10, seed=2)
    test = _blob_dataset(5, seed=3)
    model, info = load_or_train_classifier(tmp_path, train, test, epochs=1, progress=False)
    assert not info["from_cache"]
    assert (tmp_path / "classifier.safetensors").is_file() and (tmp_path / "classifier.json").is_file()
    assert info["n_train"] == 100 and info["epochs"] == 1 and 0.0 <= info["test_accuracy"] <= 1.0

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been reloaded")

    monkeypatch.setattr(classifier_mod, "train_classifier", no_training)
    reloaded, info2 = load_or_train_classifier(tmp_path, train, test, epochs=1, progress=False)
    assert info2["from_cache"] and info2["test_accuracy"] == info["test_accuracy"]
    assert torch.equal(extract_features(reloaded, test[0]), extract_features(model, test[0]))
    with pytest.raises(AssertionError, match="reloaded"):
        load_or_train_classifier(tmp_path, train, test, epochs=2, progress=False)


def test_evaluate_images_scores_real_against_real():
    x, y = _blob_dataset(12, seed=4)
    model = FeatureClassifier(ClassifierConfig(width=8)).eval()
    quality = evaluate_images(model, x, x, fake_labels=y, kid_subset_size=50)
    assert isinstance(quality, ImageQuality) and quality.n_samples == 120
    assert quality.fid == pytest.approx(0.0, abs=1e-4)
    assert quality.precision == 1.0 and quality.recall == 1.0
    assert 0.0 <= quality.class_accuracy <= 1.0
    with pytest.raises(ValueError, match=r"fake_labels \(3,\)"):
        evaluate_images(model, x, x, fake_labels=y[:3])
