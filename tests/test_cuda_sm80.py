"""Backend "cuda_sm80" (the sm80 kernels: mma.sync + cp.async, csrc/*_sm80.*), forward and backward, against the
float64 reference: the three real schedules and random schedules with random S×S patterns, bf16 and fp16, D 64 and
128, through both launch paths (the custom op: Python; the eager C++ plan); outputs and gradients poisoned, each
held to check_close's rule. Runs on any sm80-or-later GPU (Hopper included); skips with the reason otherwise.
"""
import pytest
import torch

from conftest import REAL_SCHEDULES
from gpu_cases import (check_plan_path, check_strided_inputs, check_unsupported_inputs_say_why, module_marks,
                       random_case, real_case, real_schedule_params, skip_unless_runs)
from hmar_kernels import kernel_options
from hmar_kernels.api import _auto_backend
from hmar_kernels.backends import cuda, cuda_sm80
from hmar_kernels.tiles import named_pattern_bits
from test_triton import run_and_check

pytestmark = module_marks("cuda_sm80")


@pytest.mark.parametrize("px, pattern, dtype, head_dim", real_schedule_params())
def test_real_schedules(px, pattern, dtype, head_dim):
    """The custom op (Python launches) on 256 and 512 px, the C++ plan on 1024 px."""
    case = real_case("cuda_sm80", px, pattern, dtype, head_dim)
    if px == 1024:
        check_plan_path(**case, backend="cuda_sm80")
    else:
        run_and_check(**case, backend="cuda_sm80")


@pytest.mark.parametrize("seed", range(10))
def test_random_schedules(seed):
    """Random schedules and patterns (diagonal, causal, random S×S), both dtypes, both head dims, odd batch and
    head counts; the custom op on even seeds, the C++ plan on odd ones."""
    case = random_case("cuda_sm80", seed, rng_offset=100)
    if seed % 2 == 0:
        run_and_check(**case, backend="cuda_sm80")
    else:
        check_plan_path(**case, backend="cuda_sm80")


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_strided_inputs(pattern):
    """q, k, v as views of one fused (B, L, 3, H, D) tensor."""
    check_strided_inputs("cuda_sm80", pattern)


def test_forward_bit_identical_run_to_run():
    pn = REAL_SCHEDULES[512]
    bits = named_pattern_bits("block_causal", len(pn))
    q, k, v = (torch.randn(2, 4, sum(p * p for p in pn), 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    first = cuda_sm80.forward(q, k, v, pn, bits, 0.125)
    again = cuda_sm80.forward(q, k, v, pn, bits, 0.125)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_triton_backward_option():
    skip_unless_runs("cuda_sm80", torch.bfloat16, 64)
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
    check_unsupported_inputs_say_why("cuda_sm80")
