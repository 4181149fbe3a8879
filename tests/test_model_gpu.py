"""CUDA paths of the models (skipped without a GPU): KV cache and per-scale steps against the training forward
through the fast attention kernels, bf16/fp16 autocast sampling, determinism on the device generator."""
import pytest
import torch

import hmar_model as hm
from hmar_model.blocks import KVCache
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none found)")]
SCALES = [(0, 1), (1, 5), (5, 14), (14, 30)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"vqvae": tiny_vqvae(device="cuda"),
            **{k: randomize_(tiny_transformer(k, depth=3, width=128, num_heads=2), i).cuda().eval()
               for i, k in enumerate(("var", "hmar"))}}


@pytest.mark.parametrize("kind", ["var", "hmar"])
def test_training_forward_on_fast_kernels_equals_inference_steps(models, kind):
    """head dim 64, bf16 autocast: training logits (hmar_kernels 'auto') vs cached / per-scale steps."""
    m, q = models[kind], models["vqvae"].quantize
    labels = torch.tensor([1, 2, 10], device="cuda")
    indices = [torch.randint(64, (3, p * p), device="cuda") for p in (1, 2, 3, 4)]
    x_in = q.next_scale_inputs(indices)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        train = m(labels, x_in)
        cond, lvl_pos = m.class_emb(labels), m.lvl_pos()
        seq = torch.cat((m.start_tokens(cond, lvl_pos), m.word_tokens(x_in) + lvl_pos[:, 1:]), dim=1)
        state = KVCache(len(m.blocks), 30) if kind == "var" else None
        steps = torch.cat([m.next_scale_logits(seq[:, b:e], cond, state) for b, e in SCALES], dim=1)
    scale = train.abs().max()
    assert torch.isfinite(train).all() and (steps - train).abs().max() <= 0.05 * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_sampling_is_deterministic(models, dtype):
    kw = dict(labels=[1, 2, 3, 4], seed=11, dtype=dtype, mask_schedule=[[1], [1, 3], [1, 3, 5], [16]])
    a = hm.sample(models["hmar"], models["vqvae"], **kw)
    assert torch.equal(a, hm.sample(models["hmar"], models["vqvae"], **kw))
    kw.pop("mask_schedule")
    b = hm.sample(models["var"], models["vqvae"], **kw)
    assert torch.equal(b, hm.sample(models["var"], models["vqvae"], **kw))
    assert a.is_cuda and torch.isfinite(a).all() and torch.isfinite(b).all()


def test_cuda_inpainting_keeps_unmasked_tokens(models):
    image, mask = torch.rand(2, 3, 16, 16, device="cuda"), torch.zeros(1, 1, 16, 16, device="cuda")
    mask[..., 8:, :] = 1
    _, idx = hm.inpaint(models["hmar"], models["vqvae"], image, mask, labels=3, seed=0, dtype=torch.bfloat16,
                        return_indices=True)
    original = models["vqvae"].img_to_indices(image * 2 - 1)
    keep = hm.edit.token_masks(mask.expand(2, -1, -1, -1), (1, 2, 3, 4))
    assert all(torch.equal(n[~m], o[~m]) for n, o, m in zip(idx, original, keep))
