"""CUDA backend (csrc/, sm90a forward + Triton backward on its LSE) against the float64 reference.

Every check goes through ``run_and_check`` of test_triton: fresh random inputs, outputs and gradients poisoned
with NaN before the kernels run, O, LSE, dQ, dK, dV each held to 2 × the baseline error + 2 × rounding noise.
Skips with the reason when there is no CUDA device, no sm90 GPU, or no built extension (HMAR_CUDA_JIT=1 builds it).
"""
import pytest
import torch

from conftest import REAL_SCHEDULES, check_close
from gpu_cases import (check_strided_inputs, check_unsupported_inputs_say_why, module_marks, random_case, real_case,
                       real_schedule_params, skip_unless_runs)
from hmar_kernels import attention, kernel_options
from hmar_kernels.backends import cuda
from hmar_kernels.api import _plan
from hmar_kernels.options import CUDA_SCHEDULERS
from hmar_kernels.tiles import named_pattern_bits
from test_triton import run_and_check

pytestmark = module_marks("cuda")


@pytest.mark.parametrize("px, pattern, dtype, head_dim", real_schedule_params())
def test_real_schedules(px, pattern, dtype, head_dim):
    run_and_check(**real_case("cuda", px, pattern, dtype, head_dim), backend="cuda")


@pytest.mark.parametrize("seed", range(12))
def test_random_schedules(seed):
    """Random schedules and patterns (diagonal, causal, random S×S), both dtypes, both head dims, every tile
    config and scheduler, odd batch and head counts."""
    case = random_case("cuda", seed)
    config = (seed // 4) % cuda._built()["configs"]
    with kernel_options(cuda_fwd_config=config, cuda_scheduler=CUDA_SCHEDULERS[seed % 3]):
        run_and_check(**case, backend="cuda")


@pytest.mark.parametrize("config", [0, 1, 2])
@pytest.mark.parametrize("scheduler", ["dynamic", "static", "grid"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_tile_configs(config, scheduler, head_dim):
    skip_unless_runs("cuda", torch.bfloat16, head_dim)
    if config >= cuda._built()["configs"]:
        pytest.skip("alternative tile configs were not built (HMAR_CUDA_DEV_BUILD)")
    torch.manual_seed(config)
    pn = REAL_SCHEDULES[512]
    with kernel_options(cuda_fwd_config=config, cuda_scheduler=scheduler):
        for pattern in ("block_diagonal", "block_causal"):
            run_and_check(pn, named_pattern_bits(pattern, len(pn)), batch=2, heads=2, head_dim=head_dim,
                          dtype=torch.bfloat16, scale=0.125, backend="cuda")


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_strided_inputs(pattern):
    """q, k, v as views of one fused (B, L, 3, H, D) tensor: TMA reads them through their strides."""
    check_strided_inputs("cuda", pattern)


@pytest.mark.parametrize("patch_nums, batch, dtype", [((1,), 1, torch.float16), ((13,), 2, torch.bfloat16)])
def test_single_token_and_single_scale(patch_nums, batch, dtype):
    skip_unless_runs("cuda", dtype, 64)  # a dev build may hold one dtype only
    torch.manual_seed(6)
    run_and_check(patch_nums, (1,), batch=batch, heads=1, head_dim=64, dtype=dtype, scale=0.3, backend="cuda")


def test_large_scores():
    """L2-normalised q, k with temperature 100 (the official models): scores up to ±100, softmax scale 1."""
    torch.manual_seed(8)
    pn = REAL_SCHEDULES[256]
    length = sum(p * p for p in pn)
    q, k = (torch.nn.functional.normalize(torch.randn(2, 4, length, 64, device="cuda"), dim=-1) * 10
            for _ in range(2))
    v = torch.randn(2, 4, length, 64, device="cuda")
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    with kernel_options(poison_outputs=True):
        out = attention(q, k, v, pn, "block_causal", softmax_scale=1.0, backend="cuda")
    ref = attention(q.double(), k.double(), v.double(), pn, "block_causal", softmax_scale=1.0,
                    backend="reference")
    base = attention(q, k, v, pn, "block_causal", softmax_scale=1.0, backend="reference")
    check_close("out", out, ref, base)


@pytest.mark.parametrize("scheduler", ["dynamic", "static", "grid"])
def test_forward_bit_identical_run_to_run(scheduler):
    pn = REAL_SCHEDULES[1024]
    q, k, v = (torch.randn(2, 4, 9451, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with kernel_options(cuda_scheduler=scheduler):
        first = cuda.forward(q, k, v, pn, named_pattern_bits("block_causal", len(pn)), 0.125)
        for _ in range(3):
            again = cuda.forward(q, k, v, pn, named_pattern_bits("block_causal", len(pn)), 0.125)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_cuda_graph_capture():
    """No host sync on the call path: the forward captures into a CUDA graph and replays on new inputs."""
    pn = REAL_SCHEDULES[256]
    q, k, v = (torch.randn(2, 4, 680, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))

    def step():
        return attention(q, k, v, pn, "block_causal", backend="cuda")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for t in (q, k, v):
        t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static, step())


def test_auto_prefers_cuda():
    pn = REAL_SCHEDULES[256]
    resolved = _plan(pn, "block_causal", None, "auto", torch.device("cuda", 0), torch.bfloat16, (1, 2, 680, 64))[3]
    assert resolved == "cuda"


def test_unsupported_inputs_say_why():
    check_unsupported_inputs_say_why("cuda")
