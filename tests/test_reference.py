"""The reference backend against an independent float64 dense-mask computation (outputs, LSE, all gradients)."""
import numpy as np
import pytest
import torch

from conftest import pattern_of_kind, random_schedule
from hmar_kernels import attention
from hmar_kernels.reference import reference_attention
from hmar_kernels.tiles import dense_mask, named_pattern_bits


def dense_attention(q, k, v, mask, scale):
    """softmax(q kᵀ · scale, masked to -inf) v over the full L×L matrix; returns (out, lse)."""
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    return torch.exp(scores - lse[..., None]) @ v, lse


@pytest.mark.parametrize("seed", range(10))
def test_reference_matches_dense_float64(seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    patch_nums = random_schedule(rng, max_scales=5, max_side=5)
    row_bits = pattern_of_kind(rng, seed, len(patch_nums))
    length = sum(p * p for p in patch_nums)
    batch, heads, head_dim = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.choice([8, 16]))
    scale = float(rng.uniform(0.1, 1.0))
    q, k, v = (torch.randn(batch, heads, length, head_dim, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    dout = torch.randn(batch, heads, length, head_dim, dtype=torch.float64)

    out, lse = reference_attention(q, k, v, patch_nums, row_bits, scale)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_out, ref_lse = dense_attention(q, k, v, dense_mask(patch_nums, row_bits), scale)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), dout)

    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-10, atol=1e-10)
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_public_reference_backend_and_default_scale():
    torch.manual_seed(0)
    patch_nums = (1, 2, 3)
    q, k, v = (torch.randn(2, 2, 14, 16, dtype=torch.float64) for _ in range(3))
    out = attention(q, k, v, patch_nums, "block_causal", backend="reference")
    expected, _ = dense_attention(q, k, v, dense_mask(patch_nums, named_pattern_bits("block_causal", 3)), 16 ** -0.5)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_block_diagonal_scales_are_independent():
    """Under block_diagonal, changing the keys of one scale leaves every other scale's output unchanged."""
    torch.manual_seed(1)
    patch_nums = (1, 2, 3, 4)
    q, k, v = (torch.randn(1, 2, 30, 8, dtype=torch.float64) for _ in range(3))
    out = attention(q, k, v, patch_nums, backend="reference")
    k2 = k.clone()
    k2[:, :, 5:14] += 1.0  # scale 2 occupies [5, 14)
    out2 = attention(q, k2, v, patch_nums, backend="reference")
    assert torch.equal(out[:, :, :5], out2[:, :, :5]) and torch.equal(out[:, :, 14:], out2[:, :, 14:])
    assert not torch.equal(out[:, :, 5:14], out2[:, :, 5:14])
