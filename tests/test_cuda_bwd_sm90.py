"""The sm90a CUDA backward (csrc/bwd_*) through its standalone binding, against the float64 reference.

GPU-only: builds the binding of bench/bwd_check_sm90.py (about a minute on 16 cores) and skips with the reason
when there is no sm90 GPU or no nvcc. Every config (csrc/bwd_tile_size.h) on 256 px and random schedules, both
patterns and random S×S patterns, bf16 and fp16, D 64 and 128; dQ, dK, dV each held to check_close's rule; the
deterministic configs bit-identical run to run. The full sweep (512/1024 px, timing) is bench/bwd_check_sm90.py.
"""
import shutil

import numpy as np
import pytest
import torch

from bench import bwd_check_sm90 as check
from conftest import HAS_CUDA, REAL_SCHEDULES, check_close, pattern_of_kind, random_schedule
from hmar_kernels.tiles import named_pattern_bits


def _problem() -> str | None:
    if not HAS_CUDA:
        return "needs a CUDA device (none found)"
    if torch.cuda.get_device_capability() != (9, 0):
        return f"needs an sm90 GPU, found sm{''.join(map(str, torch.cuda.get_device_capability()))}"
    if shutil.which("nvcc") is None:
        return "needs nvcc to build the backward's test binding"
    return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_problem() is not None, reason=str(_problem()))]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def ext():
    return check.build_extension(print)


def _check(ext, pn, bits, batch, heads, head_dim, dtype, config):
    device = torch.device("cuda")
    L = sum(p * p for p in pn)
    q, k, v, dout = (torch.randn(batch, heads, L, head_dim, device=device).to(dtype) for _ in range(4))
    scale = head_dim ** -0.5
    out64, lse64, *golden = check.reference_grads(q.double(), k.double(), v.double(), dout.double(), pn, bits, scale)
    _, _, *baseline = check.reference_grads(q, k, v, dout, pn, bits, scale)
    tables = check.bwd_tables(ext, pn, bits, batch * heads, head_dim, config, device)
    grads = check.run_bwd(ext, tables, q, k, v, out64.to(dtype), dout, lse64.float().contiguous(), scale, config)
    for name, got, gold, base in zip(("dq", "dk", "dv"), grads, golden, baseline):
        check_close(f"{name} (config {config})", got, gold, base)
    return tables, (q, k, v, out64.to(dtype), dout, lse64.float().contiguous(), scale)


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_256px_every_config(ext, pattern, dtype, head_dim):
    torch.manual_seed(head_dim)
    pn = REAL_SCHEDULES[256]
    for config in range(ext.num_configs):
        _check(ext, pn, named_pattern_bits(pattern, len(pn)), 2, 3, head_dim, DTYPES[dtype], config)


@pytest.mark.parametrize("seed", range(6))
def test_random_schedules(ext, seed):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pn = random_schedule(rng, max_scales=6, max_side=24)
    bits = pattern_of_kind(rng, seed, len(pn))
    dtype, head_dim = (torch.bfloat16, torch.float16)[seed % 2], (64, 128)[(seed // 2) % 2]
    for config in range(ext.num_configs):
        _check(ext, pn, bits, 3, 1, head_dim, dtype, config)


def test_deterministic_configs_bit_identical(ext):
    pn = REAL_SCHEDULES[512]
    bits = named_pattern_bits("block_causal", len(pn))
    for config in range(ext.num_configs):
        if not ext.config_info(64, config)[2]:
            continue
        tables, inputs = _check(ext, pn, bits, 2, 2, 64, torch.bfloat16, config)
        runs = [check.run_bwd(ext, tables, *inputs, config) for _ in range(3)]
        assert all(torch.equal(x, y) for run in runs[1:] for x, y in zip(runs[0], run)), f"config {config}"
