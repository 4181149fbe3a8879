"""FID, Inception Score and precision/recall against independent numpy computations and known answers."""
import numpy as np
import pytest

from hmar_model.eval.metrics import feature_statistics, frechet_distance, inception_score, precision_recall


def random_features(rng, n, d, shift=0.0, scale=1.0):
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


def fid_by_eigenvalues(f1, f2):
    """Independent FID, Tr (Σ1 Σ2)^½ = Σ sqrt(eig(Σ1^½ Σ2 Σ1^½)); Σ1^½ by a symmetric eigendecomposition."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1.T), np.cov(f2.T)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_fid_matches_independent_computation_and_is_symmetric():
    rng = np.random.default_rng()
    f1, f2 = random_features(rng, 400, 24), random_features(rng, 300, 24, shift=0.3, scale=1.2)
    a, b = feature_statistics(f1), feature_statistics(f2)
    fid = frechet_distance(*a, *b)
    assert fid == pytest.approx(fid_by_eigenvalues(f1, f2), rel=1e-8)
    assert frechet_distance(*b, *a) == pytest.approx(fid, rel=1e-8)
    assert abs(frechet_distance(*a, *a)) < 1e-8


def test_fid_of_gaussians_in_closed_form():
    rng = np.random.default_rng()
    d = 10
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-10)


def test_fid_rejects_bad_statistics():
    rng = np.random.default_rng()
    f = random_features(rng, 50, 8)
    mu, sigma = feature_statistics(f)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    bad = f.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="samples: features contain NaN"):
        feature_statistics(bad, "samples")
    with pytest.raises(ValueError, match="need at least 2"):
        feature_statistics(f[:1])


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_inception_score_on_known_distributions():
    rng = np.random.default_rng()
    classes = 8
    confident = 60.0 * np.eye(classes)[np.arange(4000) % classes]   # one class per image, all classes equally
    assert inception_score(confident) == pytest.approx(classes, rel=1e-6)
    assert inception_score(np.tile(rng.normal(size=classes), (500, 1))) == pytest.approx(1.0, abs=1e-9)
    logits = rng.normal(scale=2.0, size=(12000, classes))
    expected = []
    for part in np.split(softmax(logits)[:10000], 2) + [softmax(logits)[10000:]]:   # splits of 5,000, in order
        marginal = part.mean(0)
        expected.append(np.exp(np.mean((part * np.log(part / marginal)).sum(1))))
    assert inception_score(logits) == pytest.approx(np.mean(expected), rel=1e-10)


def brute_force_precision_recall(ref, sample, k=3):
    d_rr = ((ref[:, None] - ref[None]) ** 2).sum(-1)
    d_ss = ((sample[:, None] - sample[None]) ** 2).sum(-1)
    d_sr = ((sample[:, None] - ref[None]) ** 2).sum(-1)
    r_ref, r_sample = np.sort(d_rr, 1)[:, k], np.sort(d_ss, 1)[:, k]
    return (d_sr <= r_ref[None]).any(1).mean(), (d_sr.T <= r_sample[None]).any(1).mean()


def test_precision_recall_known_overlap():
    rng = np.random.default_rng()
    ref = rng.normal(size=(120, 16))
    far = rng.normal(size=(40, 16)) + 50.0
    # samples = every reference point plus a far cluster: the copies lie on the reference manifold, the far
    # points do not; every reference point has a sample at distance 0
    precision, recall = precision_recall(ref, np.concatenate([ref, far]))
    assert precision == pytest.approx(120 / 160) and recall == 1.0
    precision, recall = precision_recall(ref, far)
    assert precision == 0.0 and recall == 0.0


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng()
    ref = rng.normal(size=(150, 12))
    sample = np.concatenate([rng.normal(size=(100, 12)) * 1.5, rng.normal(size=(60, 12)) + 2.0])
    got = precision_recall(ref, sample, block=37)   # blocks that do not divide the set sizes
    assert got == pytest.approx(brute_force_precision_recall(ref, sample), abs=1e-12)


def test_precision_recall_needs_more_than_k_points():
    rng = np.random.default_rng()
    with pytest.raises(ValueError, match="need at least 4"):
        precision_recall(rng.normal(size=(3, 4)), rng.normal(size=(10, 4)))
