"""Triton kernels vs the reference: forward, LSE and all three gradients, outputs poisoned before the kernels run.

On CPU the kernels run in Triton's interpreter at small shapes with 16×16 tiles (many tile boundaries, scale
sizes that are not tile multiples). bf16 is tested on the GPU only: the interpreter's tl.dot does not support it.
"""
import numpy as np
import pytest
import torch

from conftest import HAS_CUDA, check_close, pattern_bits, pattern_of_kind, random_schedule
from hmar_kernels import kernel_options, ops
from hmar_kernels.reference import reference_attention
from hmar_kernels.tiles import named_pattern_bits

DEVICE = "cuda" if HAS_CUDA else "cpu"
DTYPES = [torch.float16, torch.float32] + ([torch.bfloat16] if HAS_CUDA else [])


def run_and_check(patch_nums, row_bits, batch, heads, head_dim, dtype, scale, layout="contiguous",
                  backend="triton"):
    """Run forward + backward of ``backend`` and check O, LSE, dQ, dK, dV against golden and baseline."""
    length = sum(p * p for p in patch_nums)
    shape = (batch, heads, length, head_dim)
    if layout == "contiguous":
        q, k, v = (torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(3))
    else:  # (B, L, 3, H, D) → three strided (B, H, L, D) views, as a fused qkv projection gives
        qkv = torch.randn(batch, length, 3, heads, head_dim, device=DEVICE, dtype=dtype)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    dout = torch.randn(shape, device=DEVICE, dtype=dtype)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    with kernel_options(poison_outputs=True):
        out, lse = ops.attention_forward(*leaves, patch_nums, row_bits, scale, backend)
        grads = torch.autograd.grad(out, leaves, dout)

    golden_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    golden, golden_lse = reference_attention(*golden_in, patch_nums, row_bits, scale)
    golden_grads = torch.autograd.grad(golden, golden_in, dout.double())
    base_in = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    base, base_lse = reference_attention(*base_in, patch_nums, row_bits, scale)
    base_grads = torch.autograd.grad(base, base_in, dout)

    check_close("out", out, golden, base)
    check_close("lse", lse, golden_lse, base_lse)
    for name, g, gg, bg in zip(("dq", "dk", "dv"), grads, golden_grads, base_grads):
        check_close(name, g, gg, bg)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("head_dim", [32, 64])
def test_random_schedules(seed, head_dim):
    """Random schedules, the three pattern kinds in turn, both kernel dtypes, odd batch and head counts."""
    rng = np.random.default_rng(1000 * head_dim + seed)
    torch.manual_seed(seed)
    patch_nums = random_schedule(rng, max_scales=5, max_side=7)
    row_bits = pattern_of_kind(rng, seed, len(patch_nums))
    dtype = DTYPES[seed % len(DTYPES)]
    run_and_check(patch_nums, row_bits, batch=int(rng.integers(1, 3)), heads=int(rng.integers(1, 4)),
                  head_dim=head_dim, dtype=dtype, scale=float(rng.uniform(0.05, 0.5)))


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_strided_inputs(pattern):
    """q, k, v as non-contiguous views of one fused (B, L, 3, H, D) tensor are read through their strides."""
    torch.manual_seed(3)
    patch_nums = (1, 2, 4, 5)
    run_and_check(patch_nums, named_pattern_bits(pattern, 4), batch=2, heads=3, head_dim=32,
                  dtype=torch.float16, scale=0.2, layout="fused_qkv")


def test_single_scale_and_single_token():
    """Degenerate schedules: one scale of one token, and one scale larger than a tile."""
    torch.manual_seed(4)
    run_and_check((1,), (1,), batch=1, heads=1, head_dim=32, dtype=torch.float32, scale=0.3)
    run_and_check((5,), (1,), batch=1, heads=2, head_dim=32, dtype=torch.float16, scale=0.3)


def test_own_plus_previous_scale():
    """The S×S example from the API docs: each scale attends itself and the previous scale."""
    torch.manual_seed(5)
    matrix = np.eye(4, dtype=bool) | np.eye(4, k=-1, dtype=bool)
    run_and_check((1, 2, 3, 5), pattern_bits(matrix), batch=1, heads=2, head_dim=32, dtype=torch.float16, scale=0.25)


def test_unattended_scale_gets_zero_key_gradients():
    """A scale no query may attend has dK = dV = 0 (its programs still run and write zeros)."""
    torch.manual_seed(6)
    matrix = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 1]], dtype=bool)  # nobody attends scale 1
    run_and_check((1, 3, 4), pattern_bits(matrix), batch=1, heads=1, head_dim=32, dtype=torch.float32, scale=0.3)


@pytest.mark.parametrize("tiles", [(32, 16), (16, 32)])
@pytest.mark.parametrize("seed", range(3))
def test_asymmetric_tiles(tiles, seed):
    """block_m ≠ block_n: the dK/dV programs walk the transposed pattern's TileMask with the roles swapped."""
    from hmar_kernels.backends.triton.tuning import BwdConfig, FwdConfig

    rng = np.random.default_rng(50 + seed)
    torch.manual_seed(seed)
    patch_nums = random_schedule(rng, max_scales=5, max_side=7)
    row_bits = pattern_of_kind(rng, seed, len(patch_nums))
    with kernel_options(triton_fwd=FwdConfig(*tiles, 1, 1), triton_bwd=BwdConfig(*tiles, 1, 1)):
        run_and_check(patch_nums, row_bits, batch=1, heads=2, head_dim=32, dtype=torch.float32,
                      scale=float(rng.uniform(0.05, 0.5)))


def test_rows_with_several_runs():
    """Scales whose allowed keys form several separate runs (every other scale): tiles of their own, one
    column bound per run."""
    torch.manual_seed(7)
    matrix = np.array([[(i + j) % 2 == 0 for j in range(5)] for i in range(5)])
    run_and_check((1, 2, 3, 4, 5), pattern_bits(matrix), batch=1, heads=2, head_dim=32, dtype=torch.float16,
                  scale=0.3)
