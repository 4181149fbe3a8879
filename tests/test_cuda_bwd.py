"""Backend "cuda"'s backward (the fused sm90a kernels, csrc/bwd_*) through the package, against the float64
reference: every backward config, both launch paths (the custom op, i.e. cuda.backward from Python, and the C++
plan of the eager autograd path), the three real schedules, random schedules with random S×S patterns, bf16 and
fp16, D 64 and 128; outputs and gradients poisoned before the kernels run, each held to check_close's rule. The
deterministic configs must give bit-identical gradients run to run. Skips with the reason without an sm90 GPU or
a built extension (HMAR_CUDA_JIT=1 builds it).
"""
import pytest
import torch

from conftest import REAL_SCHEDULES
from gpu_cases import check_plan_path, module_marks, random_case, real_case, real_schedule_params, skip_unless_runs
from hmar_kernels import attention, kernel_options
from hmar_kernels.backends import cuda
from hmar_kernels.tiles import named_pattern_bits
from test_triton import run_and_check

NUM_CONFIGS = 7  # csrc/bwd_tile_size.h: kNumBwdConfigsSm90

pytestmark = module_marks("cuda")


def _skip_unless_built(dtype, head_dim, config):
    skip_unless_runs("cuda", dtype, head_dim)
    if config not in cuda._built()["bwd_configs"]:
        pytest.skip(f"backward config {config} was not built (HMAR_CUDA_DEV_BUILD)")


@pytest.mark.parametrize("px, pattern, dtype, head_dim", real_schedule_params(pxs=(256, 1024)))
def test_real_schedules_plan_path(px, pattern, dtype, head_dim):
    """The default config through the C++ plan (512 px: every config, in test_every_config)."""
    check_plan_path(**real_case("cuda", px, pattern, dtype, head_dim))


@pytest.mark.parametrize("config", range(NUM_CONFIGS))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_every_config(config, head_dim):
    """Each backward config (atomic, split, bulk, separate-pass, overlapped, paired dQ) on the 512 px schedule,
    both patterns, through the custom op (cuda.backward from Python) and the C++ plan."""
    _skip_unless_built(torch.bfloat16, head_dim, config)
    _skip_unless_built(torch.float16, head_dim, config)
    torch.manual_seed(config)
    pn = REAL_SCHEDULES[512]
    with kernel_options(cuda_bwd_config=config):
        for pattern in ("block_diagonal", "block_causal"):
            bits = named_pattern_bits(pattern, len(pn))
            run_and_check(pn, bits, batch=2, heads=2, head_dim=head_dim, dtype=torch.bfloat16, scale=0.125,
                          backend="cuda")
            check_plan_path(pn, bits, 1, 3, head_dim, torch.float16, 0.1)


@pytest.mark.parametrize("seed", range(2 * NUM_CONFIGS))
def test_random_schedules(seed):
    """Random schedules and patterns (diagonal, causal, random S×S), both dtypes, both head dims, a config in
    turn, odd batch and head counts; the custom op on even seeds, the C++ plan on odd ones. Each config runs twice
    (its seeds differ in parity): once in bf16 through the custom op, once in fp16 through the C++ plan."""
    case = random_case("cuda", seed)
    config = seed % NUM_CONFIGS
    _skip_unless_built(case["dtype"], case["head_dim"], config)
    with kernel_options(cuda_bwd_config=config):
        if seed % 2 == 0:
            run_and_check(**case, backend="cuda")
        else:
            check_plan_path(**case)


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_deterministic_configs_bit_identical(pattern):
    """The deterministic configs (no atomics: the default among them) give the same bits run to run, through
    cuda.backward and through the C++ plan."""
    pn = REAL_SCHEDULES[1024]
    bits = named_pattern_bits(pattern, len(pn))
    q, k, v, dout = (torch.randn(2, 4, 9451, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    out, lse = cuda.forward(q, k, v, pn, bits, 0.125)
    deterministic = [c for c in cuda._built()["bwd_configs"] if cuda.module().bwd_tile(64, c)[2]]
    assert cuda.module().bwd_default_config in deterministic
    for config in deterministic:
        with kernel_options(cuda_bwd_config=config):
            first = cuda.backward(dout, q, k, v, out, lse, pn, bits, 0.125)
            for _ in range(2):
                again = cuda.backward(dout, q, k, v, out, lse, pn, bits, 0.125)
                for name, a, b in zip(("dq", "dk", "dv"), first, again):
                    assert torch.equal(a, b), f"config {config} {name} differs run to run"
            leaves = [t.clone().requires_grad_() for t in (q, k, v)]
            attention(*leaves, pn, pattern, softmax_scale=0.125, backend="cuda").backward(dout)
            for name, a, leaf in zip(("dq", "dk", "dv"), first, leaves):
                assert torch.equal(a, leaf.grad), f"config {config} {name}: the C++ plan differs from Python"


def test_triton_backward_stays_reachable():
    """KernelOptions(cuda_backward="triton"): the CUDA forward with the Triton backward, both paths."""
    skip_unless_runs("cuda", torch.bfloat16, 64)
    torch.manual_seed(3)
    pn = REAL_SCHEDULES[256]
    with kernel_options(cuda_backward="triton"):
        for pattern in ("block_diagonal", "block_causal"):
            bits = named_pattern_bits(pattern, len(pn))
            run_and_check(pn, bits, batch=2, heads=2, head_dim=64, dtype=torch.bfloat16, scale=0.125,
                          backend="cuda")
            check_plan_path(pn, bits, 2, 2, 64, torch.bfloat16, 0.125)


def test_bad_config_says_why():
    q, k, v = (torch.randn(1, 2, 30, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out, lse = cuda.forward(q, k, v, (1, 2, 5), (1, 2, 4), 0.125)
    with kernel_options(cuda_bwd_config=99), pytest.raises(ValueError, match="config"):
        cuda.backward(torch.randn_like(q), q, k, v, out, lse, (1, 2, 5), (1, 2, 4), 0.125)
    with pytest.raises(ValueError, match="cuda_backward"):
        kernel_options(cuda_backward="cudnn")
