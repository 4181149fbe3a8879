"""Progress of sampling and editing: one step per scale plus one for decoding, reported to a callable or a tqdm
bar, the same images with and without it, eager and (on CUDA) through CUDA-graph replays."""
import pytest
import torch

import hmar_model as hm
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae

from conftest import requires_cuda


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return randomize_(tiny_transformer("hmar"), 4).eval(), tiny_vqvae().eval()


def test_sampling_reports_every_scale_and_decoding(models):
    hmar, vqvae = models
    steps = []
    with_progress = hm.sample(hmar, vqvae, labels=[1, 2], seed=5, mask_schedule=[[1], [1, 3], [3, 6], [16]],
                              progress=steps.append)
    assert steps == [1] * (len(hmar.patch_nums) + 1)
    without = hm.sample(hmar, vqvae, labels=[1, 2], seed=5, mask_schedule=[[1], [1, 3], [3, 6], [16]])
    assert torch.equal(with_progress, without)


def test_editing_reports_every_scale_and_decoding(models):
    hmar, vqvae = models
    steps = []
    image, mask = torch.rand(1, 3, 16, 16), torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out = hm.inpaint(hmar, vqvae, image, mask, labels=3, seed=2, refine_steps=2, progress=steps.append)
    assert steps == [1] * (len(hmar.patch_nums) + 1)
    assert torch.equal(out, hm.inpaint(hmar, vqvae, image, mask, labels=3, seed=2, refine_steps=2))


def test_progress_bar_and_bad_values(models, capsys):
    hmar, vqvae = models
    hm.sample(hmar, vqvae, labels=[1], seed=0, progress=True)
    err = capsys.readouterr().err
    assert "sampling" in err and "5/5" in err  # tqdm on stderr: 4 scales + decoding
    for bad in ("yes", 3):
        with pytest.raises(TypeError, match="progress must be True/False or a callable"):
            hm.sample(hmar, vqvae, labels=[1], seed=0, progress=bad)


@requires_cuda
@pytest.mark.gpu
def test_progress_through_cuda_graph_replays(models):
    """Call 1 runs eagerly, call 2 captures, call 3 replays: every call reports all its steps."""
    hmar, vqvae = (m.cuda() for m in models)
    for _ in range(3):
        steps = []
        hm.sample(hmar, vqvae, labels=[1, 2], seed=0, cuda_graphs=True, progress=steps.append)
        assert sum(steps) == len(hmar.patch_nums) + 1
    hm.sampling.release_graphs(hmar)
