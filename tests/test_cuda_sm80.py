"""Backend "cuda_sm80" (the sm80 kernels: mma.sync + cp.async, csrc/*_sm80.*), forward and backward, against the
float64 reference: the three real schedules and random schedules with random S×S patterns, bf16 and fp16, D 64 and
128, through both launch paths (the custom op: Python; the eager C++ plan); outputs and gradients poisoned, each
held to check_close's rule. Runs on any sm80-or-later GPU (Hopper included); skips with the reason otherwise.
"""
import numpy as np
import pytest
import torch

from conftest import HAS_CUDA, REAL_SCHEDULES, pattern_of_kind, random_schedule
from hmar_kernels import attention, kernel_options
from hmar_kernels.api import _auto_backend
from hmar_kernels.backends import cuda, cuda_sm80
from hmar_kernels.tiles import named_pattern_bits
from test_cuda_bwd import check_plan_path
from test_triton import run_and_check

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _problem(dtype=torch.bfloat16, head_dim=64):
    if not HAS_CUDA:
        return "needs a CUDA device (none found)"
    return cuda_sm80.problem(torch.device("cuda", 0), dtype, head_dim)


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_problem() is not None, reason=str(_problem()))]


def _skip_unless_built(dtype, head_dim):
    why = _problem(dtype, head_dim)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("px", [256, 512, 1024])
@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_real_schedules(px, pattern, dtype, head_dim):
    """The custom op (Python launches) on 256 and 512 px, the C++ plan on 1024 px."""
    _skip_unless_built(DTYPES[dtype], head_dim)
    torch.manual_seed(px + head_dim)
    pn = REAL_SCHEDULES[px]
    bits = named_pattern_bits(pattern, len(pn))
    if px == 1024:
        check_plan_path(pn, bits, 1, 2, head_dim, DTYPES[dtype], head_dim ** -0.5, backend="cuda_sm80")
    else:
        run_and_check(pn, bits, batch=2, heads=3, head_dim=head_dim, dtype=DTYPES[dtype], scale=head_dim ** -0.5,
                      backend="cuda_sm80")


@pytest.mark.parametrize("seed", range(10))
def test_random_schedules(seed):
    """Random schedules and patterns (diagonal, causal, random S×S), both dtypes, both head dims, odd batch and
    head counts; the custom op on even seeds, the C++ plan on odd ones."""
    rng = np.random.default_rng(100 + seed)
    torch.manual_seed(seed)
    patch_nums = random_schedule(rng, max_scales=6, max_side=20)
    row_bits = pattern_of_kind(rng, seed, len(patch_nums))
    dtype = (torch.bfloat16, torch.float16)[seed % 2]
    head_dim = (64, 128)[(seed // 2) % 2]
    _skip_unless_built(dtype, head_dim)
    args = dict(batch=int(rng.integers(1, 4)), heads=int(rng.integers(1, 6)), head_dim=head_dim, dtype=dtype,
                scale=float(rng.uniform(0.05, 0.5)))
    if seed % 2 == 0:
        run_and_check(patch_nums, row_bits, backend="cuda_sm80", **args)
    else:
        check_plan_path(patch_nums, row_bits, backend="cuda_sm80", **args)


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_strided_inputs(pattern):
    """q, k, v as views of one fused (B, L, 3, H, D) tensor."""
    torch.manual_seed(5)
    pn = (1, 2, 3, 4, 6, 9)
    run_and_check(pn, named_pattern_bits(pattern, len(pn)), batch=2, heads=3, head_dim=64, dtype=torch.bfloat16,
                  scale=0.2, layout="fused_qkv", backend="cuda_sm80")


def test_forward_bit_identical_run_to_run():
    pn = REAL_SCHEDULES[512]
    bits = named_pattern_bits("block_causal", len(pn))
    q, k, v = (torch.randn(2, 4, sum(p * p for p in pn), 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    first = cuda_sm80.forward(q, k, v, pn, bits, 0.125)
    again = cuda_sm80.forward(q, k, v, pn, bits, 0.125)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_triton_backward_option():
    _skip_unless_built(torch.bfloat16, 64)
    pn = REAL_SCHEDULES[256]
    with kernel_options(cuda_backward="triton"):
        run_and_check(pn, named_pattern_bits("block_causal", len(pn)), batch=1, heads=2, head_dim=64,
                      dtype=torch.bfloat16, scale=0.125, backend="cuda_sm80")


@pytest.mark.parametrize("capability, expected", [((8, 0), "cuda_sm80"), ((8, 6), "cuda_sm80"),
                                                  ((8, 9), "cuda_sm80"), ((9, 0), "cuda")])
def test_auto_picks_by_capability(capability, expected, monkeypatch):
    device = torch.device("cuda", 0)
    if cuda.problem(device, torch.bfloat16, 64, 90 if expected == "cuda" else 80) and capability == (9, 0):
        pytest.skip("backend 'cuda' does not run here")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
    cuda._capability.cache_clear()
    try:
        assert _auto_backend(device, torch.bfloat16, 64) == expected
    finally:
        cuda._capability.cache_clear()


def test_unsupported_inputs_say_why():
    assert "dtypes" in cuda_sm80.problem(torch.device("cuda", 0), torch.float32, 64)
    assert "head dims" in cuda_sm80.problem(torch.device("cuda", 0), torch.bfloat16, 96)
    q = torch.randn(1, 1, 5, 64, device="cuda", dtype=torch.float32)
    with pytest.raises(ValueError, match="cuda_sm80"):
        attention(q, q, q, (1, 2), backend="cuda_sm80")
