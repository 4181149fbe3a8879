"""Tokenizer: Phi table, resizes, residual quantisation vs an independent float64 loop, f̂ accumulation,
index round trip, teacher-forcing and masked inputs against their formulas."""
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from hmar_model.quant import PHI_INDEX, phi_indices, phi_indices_float64
from hmar_model.tiny import TINY_PATCH_NUMS, tiny_vqvae


@pytest.fixture(scope="module")
def vqvae():
    torch.manual_seed(0)
    model = tiny_vqvae().double()
    with torch.no_grad():  # spread the Phi convs so that picking the wrong one shows
        for j, phi in enumerate(model.quantize.quant_resi.qresi_ls):
            phi.weight.normal_(0, 0.2 + 0.1 * j)
    return model


def test_phi_table_is_the_float64_rule():
    assert phi_indices_float64(10, 4) == PHI_INDEX[10] == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_indices_float64(14, 4) == PHI_INDEX[14] == (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3)
    # why it is hard-coded: in exact arithmetic si = 2 and 7 of 10 scales are ties the rule resolves differently
    ticks = [Fraction(1, 12) + Fraction(5, 18) * j for j in range(4)]
    for si, chosen in ((2, 1), (7, 3)):
        d = [abs(t - Fraction(si, 9)) for t in ticks]
        assert d[chosen] == d[chosen - 1] == min(d)
    assert phi_indices(4, 4) == phi_indices_float64(4, 4)


def test_area_is_adaptive_avg_pool_and_bicubic_same_size_is_identity():
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    for p in (1, 2, 3, 5, 6, 10, 13, 16):
        assert torch.equal(F.interpolate(x, size=(p, p), mode="area"), F.adaptive_avg_pool2d(x, p))
    assert torch.equal(F.interpolate(x, size=(16, 16), mode="bicubic"), x)


def reference_quantize(vqvae, f, patch_nums):
    """The spec's residual loop (§1.7), written out with plain ops in float64."""
    E = vqvae.quantize.embedding.weight
    convs = [vqvae.quantize.quant_resi.qresi_ls[j] for j in phi_indices(len(patch_nums))]
    P, last = patch_nums[-1], len(patch_nums) - 1
    rest, f_hat, idx_all, fhats = f.clone(), torch.zeros_like(f), [], []
    for si, p in enumerate(patch_nums):
        z = F.adaptive_avg_pool2d(rest, p) if si < last else rest
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        idx = torch.cdist(flat, E).argmin(dim=1).view(f.shape[0], p * p)
        h = E[idx].view(f.shape[0], p, p, -1).permute(0, 3, 1, 2)
        if si < last:
            h = F.interpolate(h, size=(P, P), mode="bicubic", align_corners=False)
        h = 0.5 * h + 0.5 * F.conv2d(h, convs[si].weight, convs[si].bias, padding=1)
        f_hat, rest = f_hat + h, rest - h
        idx_all.append(idx)
        fhats.append(f_hat)
    return idx_all, fhats


def test_quantize_matches_independent_loop(vqvae):
    f = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    idx, fhats = vqvae.quantize.quantize(f, TINY_PATCH_NUMS)
    ref_idx, ref_fhats = reference_quantize(vqvae, f, TINY_PATCH_NUMS)
    assert [i.shape for i in idx] == [(3, p * p) for p in TINY_PATCH_NUMS]
    for a, b in zip(idx, ref_idx):
        assert torch.equal(a, b)
    for a, b in zip(fhats, ref_fhats):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_fhat_accumulation_and_index_round_trip(vqvae):
    img = torch.rand(2, 3, 16, 16, dtype=torch.float64) * 2 - 1
    indices = vqvae.img_to_indices(img)
    fhats = vqvae.img_to_fhats(img)
    rebuilt = vqvae.quantize.indices_to_fhats(indices)
    for a, b in zip(rebuilt, fhats):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    rec = vqvae.img_to_reconstructed_img(img)
    torch.testing.assert_close(vqvae.indices_to_img(indices), rec, rtol=0, atol=1e-12)
    assert rec.min() >= -1 and rec.max() <= 1
    assert all(torch.equal(a, b) for a, b in zip(indices, vqvae.img_to_indices(img)))  # deterministic
    # the last scale is quantised without resizing: its codes are the nearest to the final residual
    f = vqvae.img_to_latent(img)
    rest = f - fhats[-2]
    flat = rest.permute(0, 2, 3, 1).reshape(-1, 8)
    assert torch.equal(torch.cdist(flat, vqvae.quantize.embedding.weight).argmin(1).view(2, 16), indices[-1])


def test_teacher_forcing_and_masked_inputs_follow_formulas(vqvae):
    q = vqvae.quantize
    B, V = 2, q.vocab_size
    indices = [torch.randint(V, (B, p * p)) for p in TINY_PATCH_NUMS]
    convs = [q.quant_resi.qresi_ls[j] for j in phi_indices(len(TINY_PATCH_NUMS))]
    E = q.embedding.weight
    terms = []
    for si, (idx, p) in enumerate(zip(indices, TINY_PATCH_NUMS)):
        h = F.interpolate(E[idx].view(B, p, p, -1).permute(0, 3, 1, 2), size=(4, 4), mode="bicubic")
        terms.append(0.5 * h + 0.5 * F.conv2d(h, convs[si].weight, convs[si].bias, padding=1))
    expected_ns = torch.cat([F.adaptive_avg_pool2d(sum(terms[:k]), p).flatten(2).transpose(1, 2)
                             for k, p in enumerate(TINY_PATCH_NUMS) if k > 0], dim=1)
    expected_own = torch.cat([F.adaptive_avg_pool2d(terms[k], p).flatten(2).transpose(1, 2)
                              for k, p in enumerate(TINY_PATCH_NUMS) if k > 0], dim=1)
    torch.testing.assert_close(q.next_scale_inputs(indices), expected_ns, rtol=0, atol=1e-12)
    torch.testing.assert_close(q.masked_inputs(indices), expected_own, rtol=0, atol=1e-12)
    assert expected_ns.shape == (B, sum(p * p for p in TINY_PATCH_NUMS) - 1, 8)


def test_inference_helpers_equal_teacher_forcing(vqvae):
    """get_next_autoregressive_input / get_next_mask_input produce, scale by scale, the training inputs."""
    q, B = vqvae.quantize, 2
    indices = [torch.randint(q.vocab_size, (B, p * p)) for p in TINY_PATCH_NUMS]
    ns, own = q.next_scale_inputs(indices), q.masked_inputs(indices)
    f_hat = torch.zeros(B, 8, 4, 4, dtype=torch.float64)
    start = 0
    for si, p in enumerate(TINY_PATCH_NUMS):
        h = q.lookup(indices[si], p)
        if si > 0:
            ctx, mine = q.next_mask_input(si, TINY_PATCH_NUMS, f_hat, h)
            torch.testing.assert_close(ctx.flatten(2).transpose(1, 2), ns[:, start:start + p * p], rtol=0, atol=1e-12)
            torch.testing.assert_close(mine.flatten(2).transpose(1, 2), own[:, start:start + p * p], rtol=0,
                                       atol=1e-12)
            start += p * p
        f_hat, nxt = q.next_autoregressive_input(si, TINY_PATCH_NUMS, f_hat, h)
    torch.testing.assert_close(f_hat, q.indices_to_fhats(indices)[-1], rtol=0, atol=1e-12)


def test_bad_latent_grid_is_rejected(vqvae):
    with pytest.raises(ValueError, match="last scale must equal"):
        vqvae.quantize.quantize(torch.randn(1, 8, 4, 4, dtype=torch.float64), (1, 2, 3))
    with pytest.raises(ValueError, match="multiple of 4"):
        vqvae.img_to_indices(torch.rand(1, 3, 10, 10, dtype=torch.float64))
