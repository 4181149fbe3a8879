"""Sampler: determinism, the CFG ramp, top-k/top-p against a brute-force float64 filter, mask-schedule
validation and refinement semantics, the refinement guidance parameter, labels; the default loop's pieces and
the whole loop against the reference loop (same tokens, bit for bit), the loop options, the benchmark script."""
import contextlib
import functools

import numpy as np
import pytest
import torch

import hmar_model as hm
from hmar_model import sampling
from hmar_model.sampling import (cfg_mix, cfg_mix_lean, filter_rows_, filter_top_k_top_p_, guidance_ratio,
                                 least_confident, sample_tokens, sample_tokens_sync_free)
from hmar_model.schedules import default_mask_schedule, validate_mask_schedule
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae

SCHEDULE = [[1], [1, 3], [1, 1, 2, 5], [16]]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"vqvae": tiny_vqvae(), **{k: randomize_(tiny_transformer(k), i).eval()
                                      for i, k in enumerate(("var", "hmar_nsp", "hmar"))}}


@pytest.mark.parametrize("kind", ["var", "hmar_nsp", "hmar"])
def test_same_seed_same_images_other_seed_other_images(models, kind):
    kw = dict(labels=[1, 2, 10], cfg=2.0, top_k=20, top_p=0.9)
    if kind == "hmar":
        kw["mask_schedule"] = SCHEDULE
    a, ia = hm.sample(models[kind], models["vqvae"], seed=5, return_indices=True, **kw)
    b, ib = hm.sample(models[kind], models["vqvae"], seed=5, return_indices=True, **kw)
    c, ic = hm.sample(models[kind], models["vqvae"], seed=6, return_indices=True, **kw)
    assert a.shape == (3, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ia, ib))
    assert not all(torch.equal(x, y) for x, y in zip(ia, ic))


def test_more_smooth_is_deterministic_and_changes_images(models):
    kw = dict(labels=[3, 4], seed=1, top_k=0, top_p=0)
    smooth = hm.sample(models["var"], models["vqvae"], more_smooth=True, **kw)
    assert torch.equal(smooth, hm.sample(models["var"], models["vqvae"], more_smooth=True, **kw))
    assert not torch.equal(smooth, hm.sample(models["var"], models["vqvae"], **kw))


def test_cfg_ramp_and_mix():
    assert [guidance_ratio(si, 5) for si in range(5)] == [0, 0.25, 0.5, 0.75, 1.0]
    cond, uncond = torch.randn(2, 2, 3, 7, dtype=torch.float64).unbind(0)  # (B=2, l=3, V=7) each
    torch.testing.assert_close(cfg_mix(torch.cat((cond, uncond)), 1.5), 2.5 * cond - 1.5 * uncond)


def brute_force_filter(row, k, p):
    row = row.copy()
    if k > 0:
        row[row < np.sort(row)[::-1][min(k, row.size) - 1]] = -np.inf
    if p > 0:
        order = np.argsort(row, kind="stable")
        probs = np.exp(row[order] - row[order][-1])
        cum = np.cumsum(probs / probs.sum())
        for j, idx in enumerate(order[:-1]):
            if cum[j] <= 1 - p:
                row[idx] = -np.inf
    return row


@pytest.mark.parametrize("k,p", [(5, 0.0), (0, 0.7), (8, 0.9), (100, 0.5)])
def test_top_k_top_p_matches_brute_force(k, p):
    logits = torch.randn(2, 3, 40, dtype=torch.float64) * 2
    if p == 0:  # ties at the threshold are kept by top-k (top-p's order among ties is unspecified, as upstream)
        logits[0, 0, :4] = logits[0, 0, logits[0, 0].argsort()[-k]]
    expected = np.stack([brute_force_filter(r, k, p) for r in logits.view(-1, 40).numpy()]).reshape(2, 3, 40)
    out = filter_top_k_top_p_(logits.clone(), k, p)
    assert np.array_equal(np.isinf(out.numpy()), np.isinf(expected))
    assert torch.isfinite(out).any(-1).all()


def test_least_confident_picks_lowest_among_candidates():
    prob = torch.tensor([[0.9, 0.1, 0.5, 0.2, 0.05], [0.3, 0.2, 0.1, 0.4, 0.6]])
    cand = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    out = least_confident(prob, cand, torch.tensor([2, 3]))
    assert out.tolist() == [[False, True, False, True, False], [True, True, True, False, False]]


@pytest.mark.parametrize("schedule,message", [
    ([[1], [1, 2], [9], [16]], r"mask_schedule\[1\] = \[1, 2\] sums to 3 but scale 1 \(2×2\) has 4 tokens"),
    ([[1], [4], [9]], "has 3 entries but patch_nums"),
    ([[1], [5, -1], [9], [16]], "non-negative"),
    ([[0, 1], [4], [9], [16]], "scale 0 holds the start token"),
    ([[1], [4], [], [16]], r"mask_schedule\[2\] must be a non-empty list"),
    ("often", "'default', None or a per-scale list"),
])
def test_bad_mask_schedules_raise(models, schedule, message):
    with pytest.raises(ValueError, match=message):
        hm.sample(models["hmar"], models["vqvae"], labels=[1], seed=0, mask_schedule=schedule)


@pytest.mark.parametrize("schedule,message", [
    ([[1], [1.5, 2.5], [9], [16]], r"mask_schedule\[1\] = \[1.5, 2.5\] must hold non-negative ints, got 1.5"),
    ([[1], [True, 3], [9], [16]], "must hold non-negative ints, got True"),
    ([[1], "4", [9], [16]], r"mask_schedule\[1\] must be a non-empty list of counts"),
])
def test_mask_schedules_of_the_wrong_type_raise_type_error(models, schedule, message):
    with pytest.raises(TypeError, match=message):
        hm.sample(models["hmar"], models["vqvae"], labels=[1], seed=0, mask_schedule=schedule)


def test_refinement_needs_the_composite_model(models):
    with pytest.raises(ValueError, match="no masked-prediction path"):
        hm.sample(models["var"], models["vqvae"], labels=[1], seed=0, mask_schedule=SCHEDULE)


def test_official_schedules_validate():
    for px, pn in hm.PATCH_NUMS.items():
        assert validate_mask_schedule(default_mask_schedule(pn), pn) == tuple(map(tuple, default_mask_schedule(pn)))
    assert default_mask_schedule(hm.PATCH_NUMS[256]) == hm.DEFAULT_MASK_SCHEDULE_256


def test_refinement_passes_follow_the_schedule(models):
    """[1, 1, 2, 5] at 3×3: pass 1 re-predicts 8 tokens, then 7, then 5; guidance 0 skips the uncond half."""
    hmar = models["hmar"]
    seen = []
    original = hmar.mask_tokens

    def spy(ctx, own, masked):
        seen.append(masked.sum(1).tolist())
        return original(ctx, own, masked)
    hmar.mask_tokens = spy
    calls = []
    original_logits = hmar.mask_logits
    hmar.mask_logits = lambda tokens, cond: calls.append(tokens.shape[0]) or original_logits(tokens, cond)
    try:
        hm.sample(hmar, models["vqvae"], labels=[1, 2], seed=0, mask_schedule=SCHEDULE)
        assert seen == [[3, 3], [8, 8], [7, 7], [5, 5]] and calls == [4, 4, 4, 4]
        seen.clear(), calls.clear()
        hm.sample(hmar, models["vqvae"], labels=[1, 2], seed=0, mask_schedule=SCHEDULE, refine_guidance=0.0)
        assert calls == [2, 2, 2, 2]
    finally:
        del hmar.mask_tokens, hmar.mask_logits


def test_refine_guidance_is_a_real_parameter(models):
    kw = dict(labels=[1, 2, 3, 4], seed=2, mask_schedule=[[1], [0, 4], [0, 9], [16]], top_k=0, top_p=0)
    _, official = hm.sample(models["hmar"], models["vqvae"], return_indices=True, **kw)
    _, strong = hm.sample(models["hmar"], models["vqvae"], return_indices=True, refine_guidance=8.0, **kw)
    assert torch.equal(official[0], strong[0])  # scale 0 is not refined
    assert not (torch.equal(official[1], strong[1]) and torch.equal(official[2], strong[2]))


def test_labels(models):
    with pytest.raises(ValueError, match="labels must be in"):
        hm.sample(models["var"], models["vqvae"], labels=[11], seed=0)
    with pytest.raises(ValueError, match="give num_images"):
        hm.sample(models["var"], models["vqvae"], labels=3, seed=0)
    imgs = hm.sample(models["var"], models["vqvae"], labels=None, num_images=2, seed=0)
    assert imgs.shape[0] == 2


# ---- the default loop against the reference loop ----
@pytest.mark.parametrize("t", [0.0, 1.5e-6, 0.75, 1.5])
def test_lean_guidance_mix_rounds_like_the_reference(t):
    logits = torch.randn(6, 5, 33) * 4
    assert torch.equal(cfg_mix_lean(logits.clone(), t), cfg_mix(logits, t))


@pytest.mark.parametrize("k,p", [(5, 0.0), (0, 0.7), (8, 0.9), (100, 0.5)])
@pytest.mark.parametrize("chunk", [40, 7 * 40, 10**6])  # one row, rows not dividing 3·11 = 33, everything
def test_row_chunked_filter_equals_whole_batch_filter(k, p, chunk):
    logits = torch.randn(3, 11, 40) * 2
    logits[0, 0, :6] = logits[0, 0, 0]  # ties at the top-k threshold
    assert torch.equal(filter_rows_(logits.clone(), k, p, chunk_elements=chunk), filter_top_k_top_p_(logits, k, p))


@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 64), (2, 33, 300)])
def test_sync_free_draw_is_torch_multinomial(shape):
    """Same tokens and the same generator state afterwards, over many seeds (also with −inf logits)."""
    for seed in range(20):
        logits = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
        logits[logits < -2] = -torch.inf
        a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(sample_tokens_sync_free(logits, a), sample_tokens(logits, b))
        assert torch.equal(a.get_state(), b.get_state())


@pytest.mark.parametrize("kind", ["var", "hmar_nsp", "hmar"])
@pytest.mark.parametrize("settings", [
    dict(cfg=2.0, top_k=20, top_p=0.9), dict(cfg=1.5, top_k=0, top_p=0.0), dict(top_k=5, top_p=0.5, more_smooth=True),
    dict(cfg=3.0, top_k=30, top_p=0.8, refine_guidance=0.0), dict(cfg=3.0, top_k=30, top_p=0.8, refine_guidance=4.0)])
def test_default_loop_gives_the_reference_tokens(models, monkeypatch, kind, settings):
    """Filter chunks of 3 rows (so every scale > 1 token is split, unevenly), labels drawn from the generator."""
    chunked = functools.partial(filter_rows_, chunk_elements=3 * 64)
    monkeypatch.setattr(sampling, "FAST_OPS", sampling.FAST_OPS._replace(filter=chunked))
    kw = dict(labels=None, num_images=5, seed=7, return_indices=True, **settings)
    if kind == "hmar":
        kw["mask_schedule"] = SCHEDULE
    reference, ref_idx = hm.sample(models[kind], models["vqvae"], reference=True, **kw)
    default, idx = hm.sample(models[kind], models["vqvae"], **kw)
    assert torch.equal(default, reference) and all(torch.equal(x, y) for x, y in zip(idx, ref_idx))


def test_loop_options_validate(models):
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA model"):
        hm.sample(models["var"], models["vqvae"], labels=[1], seed=0, cuda_graphs=True)
    with pytest.raises(ValueError, match="reference=True asks for the plain one"):
        hm.sample(models["var"], models["vqvae"], labels=[1], seed=0, cuda_graphs=True, reference=True)
    hm.sample(models["var"], models["vqvae"], labels=[1], seed=0, cuda_graphs=False, reference=True)


@pytest.fixture
def stand_in_graphs(monkeypatch):
    """CUDA graphs on the CPU for the Python side of the graph path (cache, capture on the second call, generator
    hand-over, cloned outputs): capture runs the loop once as usual, replay runs it again into the captured
    outputs. tests/test_model_graphs.py runs the real graphs on a GPU. Yields the list of captured loops."""
    captures = []

    class StandInGraph:
        def register_generator_state(self, generator):
            pass

        def replay(self):
            self.rerun()

    class Recorded(sampling.GraphedLoop):
        def __init__(self, loop, label_B):
            super().__init__(loop, label_B)
            captures.append(self)

            def rerun():
                f_hat, indices = loop(self.label_B, self.generator)
                self.f_hat.copy_(f_hat)
                for out, idx in zip(self.indices, indices):
                    out.copy_(idx)
            self.graph.rerun = rerun

    monkeypatch.setattr(torch.cuda, "CUDAGraph", StandInGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda graph: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(sampling, "graphs_supported", lambda device: True)
    monkeypatch.setattr(sampling, "GraphedLoop", Recorded)
    yield captures
    sampling.release_graphs()


def test_graph_cache_captures_on_the_second_call(models, stand_in_graphs):
    hmar, vqvae = models["hmar"], models["vqvae"]
    kw = dict(cfg=2.0, top_k=20, top_p=0.9, mask_schedule=SCHEDULE, return_indices=True)
    runs = [([1, 2, 3], 5, 0), ([1, 2, 3], 5, 1), ([1, 2, 3], 6, 1), ([1, 2], 6, 1), ([1, 2], 6, 2), ([1, 2], 7, 2)]
    for labels, seed, captures in runs:  # a new batch runs eagerly once, then is captured (replacing the old)
        reference, ref_idx = hm.sample(hmar, vqvae, labels, seed=seed, reference=True, **kw)
        images, idx = hm.sample(hmar, vqvae, labels, seed=seed, **kw)
        assert torch.equal(images, reference) and all(torch.equal(x, y) for x, y in zip(idx, ref_idx))
        assert len(stand_in_graphs) == captures
    assert images.data_ptr() != stand_in_graphs[-1].f_hat.data_ptr() and idx[0] is not stand_in_graphs[-1].indices[0]
    hm.sample(hmar, vqvae, [1, 2], seed=6, top_k=3, top_p=0.9, mask_schedule=SCHEDULE)  # other settings: eager
    assert len(stand_in_graphs) == 2
    sampling.release_graphs(hmar)
    assert hmar not in sampling._GRAPHS


def test_graph_replay_hands_the_generator_state_back(models, stand_in_graphs):
    model, quantizer = models["var"], models["vqvae"].quantize
    labels = torch.tensor([3, 1])
    eager, graphed = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(4):
            f_ref, _ = sampling.scale_loop(model, quantizer, labels, cfg=1.5, top_k=10, top_p=0.9, generator=eager,
                                           reference=True)
            f_hat, _ = sampling.scale_loop(model, quantizer, labels, cfg=1.5, top_k=10, top_p=0.9, generator=graphed)
            assert torch.equal(f_hat, f_ref) and torch.equal(eager.get_state(), graphed.get_state())
    assert len(stand_in_graphs) == 1


def test_official_refinement_guidance_is_not_the_unguided_pass():
    """t = cfg·1e-6 moves logits off the conditional half, so the unconditional half cannot be skipped."""
    logits = torch.randn(4, 9, 64) * 5
    assert not torch.equal(cfg_mix(logits, 1.5e-6), logits[:2])


def test_benchmark_script_smoke(tmp_path, capsys):
    from bench import sampling as bench_sampling

    out = tmp_path / "sampling.csv"
    assert bench_sampling.main(["--smoke", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].split(",")[:3] == ["device", "torch", "date"] and len(rows) == 5
    assert all(",ok," in r for r in rows[1:])
    assert "HMAR vs VAR" in capsys.readouterr().out
