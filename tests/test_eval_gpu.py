"""hmar-eval on a CUDA device: resumed generation through CUDA graphs, and GPU features/metrics against the CPU."""
import numpy as np
import pytest
import torch

pytest.importorskip("scipy", reason="hmar_model.eval needs scipy")
pytest.importorskip("tqdm", reason="hmar_model.eval needs tqdm")

from hmar_model.eval import generate as gen  # noqa: E402
from hmar_model.eval.features import extract_features  # noqa: E402
from hmar_model.eval.inception import random_inception  # noqa: E402
from hmar_model.eval.metrics import precision_recall  # noqa: E402
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae  # noqa: E402
from test_eval_generate import crash_sample_after, load  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_resume_through_cuda_graphs_gives_the_same_file(tmp_path, monkeypatch):
    """With the default (compiled) sampler: each of the three runs makes its own compiled pair."""
    torch._dynamo.reset()  # earlier tests' cache entries must not push these past Dynamo's recompile limit
    torch.manual_seed(0)
    model = randomize_(tiny_transformer("hmar"), 3).cuda().eval()
    vqvae = tiny_vqvae().cuda().eval()
    kwargs = dict(classes=list(range(8)), per_class=3, batch_size=4, cfg=1.5, top_k=10, top_p=0.9, seed=1,
                  progress=False)
    gen.generate_samples(model, vqvae, str(tmp_path / "whole.npz"), **kwargs)   # eager, capture, then replays
    _, real_sample = crash_sample_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_samples(model, vqvae, str(tmp_path / "resumed.npz"), **kwargs)
    monkeypatch.setattr(gen, "sample", real_sample)
    gen.generate_samples(model, vqvae, str(tmp_path / "resumed.npz"), **kwargs)
    for a, b in zip(load(tmp_path / "whole.npz"), load(tmp_path / "resumed.npz")):
        np.testing.assert_array_equal(a, b)


def test_gpu_features_and_precision_recall_match_the_cpu():
    rng = np.random.default_rng()
    images = rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    cpu = extract_features([images], random_inception(seed=1), progress=False)
    gpu = extract_features([images[:4], images[4:]], random_inception(seed=1, device="cuda"), progress=False)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    ref, sample = rng.normal(size=(300, 32)), rng.normal(size=(250, 32)) + 0.3
    assert precision_recall(ref, sample, device="cuda") == pytest.approx(precision_recall(ref, sample), abs=0.01)
