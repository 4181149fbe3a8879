"""CUDA graphs of the scale loop (skipped without a GPU): the replayed loop gives the reference loop's images and
tokens for the same seed (VAR, HMAR-NSP, HMAR with refinement; fp32 and bf16), the caller's generator goes on as
after an eager call, the cache captures on the second call and follows batch, settings and weights; the default
loop's pieces equal the reference pieces on the device at the real vocabulary size."""
import functools

import pytest
import torch

import hmar_model as hm
from hmar_model import sampling
from hmar_model.sampling import (filter_rows_, filter_top_k_top_p_, release_graphs, sample_tokens,
                                 sample_tokens_sync_free, scale_loop)
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not sampling.graphs_supported("cuda"),
                                 reason="needs a CUDA device and torch.cuda.CUDAGraph.register_generator_state")]
SCHEDULE = [[1], [1, 3], [1, 1, 2, 5], [16]]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"vqvae": tiny_vqvae(device="cuda"),
            **{k: randomize_(tiny_transformer(k, depth=3, width=128, num_heads=2), i).cuda().eval()
               for i, k in enumerate(("var", "hmar_nsp", "hmar"))}}


def captured(model):
    entry = sampling._GRAPHS.get(model)
    return entry is not None and entry["graph"] is not None


def same(a, b):
    (img_a, idx_a), (img_b, idx_b) = a, b
    return torch.equal(img_a, img_b) and all(torch.equal(x, y) for x, y in zip(idx_a, idx_b))


def test_row_chunks_filter_like_the_whole_batch_on_the_device():
    """V = 4096 as the real models; 1200 rows take topk's multi-block path, chunks of 64 rows its one-block path
    (both exact), sort its per-row path (V ≤ 4096)."""
    logits = torch.randn(4, 300, 4096, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0)) * 3
    logits[0, 0, :8] = logits[0, 0, 0]
    for k, p in ((900, 0.96), (0, 0.9), (900, 0.0), (1, 0.5)):
        assert torch.equal(filter_rows_(logits.clone(), k, p, chunk_elements=64 * 4096),
                           filter_top_k_top_p_(logits.clone(), k, p)), (k, p)


@pytest.mark.parametrize("shape", [(32, 1, 4096), (4, 300, 4096), (2, 7, 64)])
def test_sync_free_draw_is_torch_multinomial_on_the_device(shape):
    """Holds where torch.multinomial draws one sample as argmax(p / q), q ~ Exp(1) (the installed torch)."""
    logits = filter_top_k_top_p_(torch.randn(shape, device="cuda") * 3, 900, 0.96)
    for seed in range(5):
        a, b = (torch.Generator(device="cuda").manual_seed(seed) for _ in range(2))
        assert torch.equal(sample_tokens_sync_free(logits, a), sample_tokens(logits, b))
        assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["var", "hmar_nsp", "hmar"])
def test_replayed_loop_gives_the_reference_images(models, kind, dtype):
    model = models[kind]
    release_graphs(model)
    kw = dict(labels=[1, 2, 3, 9], cfg=2.0, top_k=20, top_p=0.9, dtype=dtype, return_indices=True)
    if kind == "hmar":
        kw["mask_schedule"] = SCHEDULE
    for call, seed in enumerate((5, 5, 6, 5)):  # eager warm-up, capture + replay, replays
        reference = hm.sample(model, models["vqvae"], seed=seed, reference=True, **kw)
        assert same(hm.sample(model, models["vqvae"], seed=seed, cuda_graphs=True, **kw), reference), (call, seed)
        assert captured(model) == (call > 0)
    release_graphs(model)
    assert not captured(model)


@pytest.mark.parametrize("settings", [dict(more_smooth=True), dict(refine_guidance=0.0), dict(refine_guidance=3.0),
                                      dict(labels=None, num_images=3)])
def test_replay_with_other_settings(models, settings):
    model = models["hmar"] if "refine_guidance" in settings else models["var"]
    kw = dict(labels=[4, 5, 6], cfg=1.5, top_k=10, top_p=0.95, seed=2, return_indices=True)
    kw.update(settings)
    if "refine_guidance" in settings:
        kw["mask_schedule"] = SCHEDULE
    reference = hm.sample(model, models["vqvae"], reference=True, **kw)
    for _ in range(3):
        assert same(hm.sample(model, models["vqvae"], cuda_graphs=True, **kw), reference)
    assert captured(model)
    release_graphs(model)


def test_replay_with_filter_chunks(models, monkeypatch):
    """Chunks of 3 rows, so that every scale > 1 token is filtered in several pieces inside the graph."""
    monkeypatch.setattr(sampling, "FAST_OPS",
                        sampling.FAST_OPS._replace(filter=functools.partial(filter_rows_, chunk_elements=3 * 64)))
    model = models["hmar"]
    kw = dict(labels=[4, 5, 6, 7, 8], cfg=1.5, top_k=10, top_p=0.95, seed=2, mask_schedule=SCHEDULE,
              dtype=torch.bfloat16, return_indices=True)
    reference = hm.sample(model, models["vqvae"], reference=True, **kw)
    for _ in range(3):
        assert same(hm.sample(model, models["vqvae"], cuda_graphs=True, **kw), reference)
    release_graphs(model)


def test_caller_generator_continues_as_after_eager_calls(models):
    """Three calls on one generator each: the replayed loop hands the advanced state back."""
    model, quantizer = models["hmar"], models["vqvae"].quantize
    labels = torch.tensor([3, 1], device="cuda")
    kw = dict(cfg=1.5, top_k=10, top_p=0.9, mask_schedule=hm.validate_mask_schedule(SCHEDULE, model.patch_nums))
    eager, graphed = (torch.Generator(device="cuda").manual_seed(3) for _ in range(2))
    with torch.no_grad():
        for _ in range(3):
            f_ref, idx_ref = scale_loop(model, quantizer, labels, generator=eager, reference=True, **kw)
            f_hat, idx = scale_loop(model, quantizer, labels, generator=graphed, cuda_graphs=True, **kw)
            assert torch.equal(f_hat, f_ref) and all(torch.equal(x, y) for x, y in zip(idx, idx_ref))
            assert torch.equal(eager.get_state(), graphed.get_state())
    release_graphs(model)


def test_cache_follows_batch_and_weights(models):
    model, vqvae = models["var"], models["vqvae"]
    kw = dict(cfg=1.5, top_k=10, top_p=0.9, seed=4, return_indices=True)
    for labels in ([1, 2], [1, 2], [1, 2, 3], [1, 2, 3]):  # a new batch runs eagerly once, then is captured
        assert same(hm.sample(model, vqvae, labels, cuda_graphs=True, **kw),
                    hm.sample(model, vqvae, labels, reference=True, **kw))
    with torch.no_grad():
        model.head.bias.add_(0.5)  # in place: the graph reads the new values
    assert same(hm.sample(model, vqvae, [1, 2, 3], cuda_graphs=True, **kw),
                hm.sample(model, vqvae, [1, 2, 3], reference=True, **kw))
    model.head.bias = torch.nn.Parameter(model.head.bias.detach() - 0.5)  # a new tensor: eager, then a new capture
    for _ in range(2):
        assert same(hm.sample(model, vqvae, [1, 2, 3], cuda_graphs=True, **kw),
                    hm.sample(model, vqvae, [1, 2, 3], reference=True, **kw))
    assert captured(model)
    release_graphs(model)
