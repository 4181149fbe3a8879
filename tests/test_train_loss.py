"""Training losses, per-scale weights and statistics, mask drawing, LR/WD schedule and AdamW groups, against
float64 references and the spec's numbers (Appendix B)."""
import math

import pytest
import torch

from hmar_model.tiny import tiny_transformer
from hmar_model.train.config import load_config
from hmar_model.train.loop import draw_mask
from hmar_model.train.loss import (ScaleStats, ce_and_hits, masked_loss, next_scale_loss, scale_weights,
                                   token_weights)
from hmar_model.train.optim import lr_factor, param_groups, wd_value

# spec Appendix B: per-scale totals π_k of the "lognorm" weights
APPENDIX_B = {
    256: [0.02468, 0.06416, 0.11495, 0.13790, 0.14020, 0.13286, 0.12080, 0.10539, 0.08822, 0.07085],
    512: [0.01955, 0.06671, 0.11412, 0.13887, 0.13786, 0.12457, 0.11123, 0.10368, 0.09576, 0.08765],
    1024: [0.00574, 0.02944, 0.06371, 0.08804, 0.09671, 0.09708, 0.09276, 0.08713, 0.08244, 0.07717, 0.07436,
           0.07146, 0.06849, 0.06546],
}
SCHEDULES = {256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), 512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
             1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)}


@pytest.mark.parametrize("px", sorted(APPENDIX_B))
def test_lognorm_weights_match_appendix_b(px):
    got = scale_weights(SCHEDULES[px], "lognorm")
    assert got == pytest.approx(APPENDIX_B[px], abs=6e-6)
    w = token_weights(SCHEDULES[px], "lognorm").double()
    assert w.shape == (sum(p * p for p in SCHEDULES[px]),)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[-1].item() == pytest.approx(APPENDIX_B[px][-1] / SCHEDULES[px][-1] ** 2, rel=1e-3)


def test_uniform_and_equal_weights():
    pn = (1, 2, 3, 4)
    assert torch.allclose(token_weights(pn, "uniform"), torch.full((30,), 1 / 30))
    equal = token_weights(pn, "equal")
    assert [equal[b:b + p * p].sum().item() for b, p in zip((0, 1, 5, 14), pn)] == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError, match="loss weights"):
        token_weights(pn, "bogus")


def _reference_grad(logits, target, row_weight_BL):
    """d/dlogits of Σ_{b,t} row_weight[b,t]·CE: row_weight·(softmax − onehot), in float64."""
    p = torch.softmax(logits.double(), -1)
    p.scatter_add_(-1, target.unsqueeze(-1), -torch.ones_like(target, dtype=torch.float64).unsqueeze(-1))
    return p * row_weight_BL.unsqueeze(-1)


def test_next_scale_loss_and_gradient_match_float64():
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    B, pn, V = 3, (1, 2, 3, 4), 64
    L = 30
    logits = torch.randn(B, L, V, generator=g).mul(3).requires_grad_()
    target = torch.randint(0, V, (B, L), generator=g)
    w = token_weights(pn, "lognorm")
    loss, ce, hit = next_scale_loss(*ce_and_hits(logits, target), w)
    ce64 = -torch.log_softmax(logits.double(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    assert loss.item() == pytest.approx((ce64 * w.double()).sum(1).mean().item(), rel=1e-6)
    assert torch.allclose(ce.double(), ce64, rtol=1e-5, atol=1e-6)
    assert torch.equal(hit, logits.argmax(-1) == target)
    loss.backward()
    ref = _reference_grad(logits.detach(), target, w.double().expand(B, L) / B)
    assert torch.allclose(logits.grad.double(), ref, rtol=1e-4, atol=1e-8)


def test_masked_loss_counts_masked_tokens_only():
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    B, L, V = 2, 30, 64
    logits = torch.randn(B, L, V, generator=g).requires_grad_()
    target = torch.randint(0, V, (B, L), generator=g)
    masked_l = draw_mask((1, 2, 3, 4), g)
    masked = torch.cat((torch.zeros(1, dtype=torch.bool), masked_l)).expand(B, L)
    loss, _, _ = masked_loss(*ce_and_hits(logits, target), masked)
    ce64 = -torch.log_softmax(logits.double(), -1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    assert loss.item() == pytest.approx(ce64[masked].mean().item(), rel=1e-6)
    loss.backward()
    assert (logits.grad[~masked] == 0).all()  # unmasked positions get no gradient at all
    ref = _reference_grad(logits.detach(), target, masked.double() / masked.sum())
    assert torch.allclose(logits.grad.double(), ref, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="no position is masked"):
        masked_loss(*ce_and_hits(logits, target), torch.zeros(B, L, dtype=torch.bool))


def test_hits_resolve_argmax_ties_to_the_first_index():
    """A target tied with a lower class at the maximum is a miss; tied with a higher one, a hit."""
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    logits = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    logits[..., 2] = logits[..., 5] = logits.amax(-1) + 1  # classes 2 and 5 share every row's maximum
    target = torch.tensor([[2, 5, 0], [5, 2, 7]])
    _, hit = ce_and_hits(logits, target)
    assert hit.tolist() == [[True, False, False], [False, True, False]]


def test_draw_mask_masks_ceil_fraction_of_every_scale():
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    for seed in range(5):
        mask = draw_mask(pn, torch.Generator().manual_seed(seed))
        assert mask.shape == (sum(p * p for p in pn) - 1,) and mask.dtype == torch.bool
        counts = [int(part.sum()) for part in mask.split([p * p for p in pn[1:]])]
        p = torch.rand((), generator=torch.Generator().manual_seed(seed)).item()
        assert counts == [math.ceil(q * q * p) for q in pn[1:]]
        assert min(counts) >= 1


def test_scale_stats_per_scale_means():
    pn = (1, 2, 3)
    g = torch.Generator().manual_seed(1)
    ce = torch.rand(4, 14, generator=g)
    hit = torch.rand(4, 14, generator=g) > 0.5
    counted = torch.rand(4, 14, generator=g) > 0.3
    counted[:, 1:5] = False  # scale 1 never counted
    stats = ScaleStats(pn, "cpu")
    stats.add(ce, hit, counted)
    out = stats.reduce_and_reset()
    for k, (b, e) in enumerate(((0, 1), (1, 5), (5, 14))):
        c = counted[:, b:e]
        if c.any():
            assert out["scale_loss"][k] == pytest.approx(ce[:, b:e][c].double().mean().item())
            assert out["scale_acc"][k] == pytest.approx(hit[:, b:e][c].double().mean().item())
        else:
            assert out["scale_loss"][k] is None and out["scale_acc"][k] is None
    assert stats.sums_K3.abs().sum() == 0


def test_lr_and_wd_schedule_official_points():
    cfg = load_config("d30", ["max_steps=1000", "out=x"])  # warmup 0.02 → 20 steps, wpe 0.01, twd 0.05 → 0.08
    assert lr_factor(cfg, 0) == pytest.approx(0.005)
    assert lr_factor(cfg, 10) == pytest.approx(0.005 + 0.995 * 10 / 20)
    assert lr_factor(cfg, 20) == 1.0 and lr_factor(cfg, 20 + 48) == 1.0  # flat for 5 % after warm-up
    assert lr_factor(cfg, 999) == pytest.approx(0.01)
    mid = 20 + round(0.5 * 979)
    assert lr_factor(cfg, mid) == pytest.approx(0.01 + 0.99 * (1 - (mid - 20) / 979) / 0.95)
    assert wd_value(cfg, 0) == pytest.approx(0.05) and wd_value(cfg, 999) == pytest.approx(0.08)
    assert wd_value(cfg, 999 / 2) == pytest.approx(0.065)


def test_param_groups_follow_the_official_no_decay_rule():
    model = tiny_transformer("hmar_mp")
    decay_group, no_decay_group = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in decay_group["params"]}
    no_decay = {names[id(p)] for p in no_decay_group["params"]}
    assert decay_group["wd_scale"] == 1.0 and no_decay_group["wd_scale"] == 0.0
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert {"class_emb.weight", "word_embed.weight", "mask_embed.weight", "head.weight",
            "blocks.0.attn.mat_qkv.weight"} <= decay
    assert {"pos_start", "pos_1LC", "lvl_embed.weight", "word_embed_bias", "blocks.0.attn.scale_mul_1H11",
            "blocks.0.attn.q_bias", "blocks.0.ffn.fc1.bias", "head.bias"} <= no_decay
    model.freeze_for_finetuning()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    kept = {names[id(p)] for g in param_groups(model) for p in g["params"]}
    assert kept and not kept & frozen
