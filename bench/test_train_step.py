"""Model-level benchmark: one VAR (block-causal) / HMAR next-scale (block-diagonal) training step per schedule,
with our attention ("auto") and with the SDPA boolean-mask anchor. Runs with --bench-e2e (d16, bf16 autocast).
Sampling speed lives in bench/sampling.py."""
import itertools

import pytest
import torch

from hmar_bench import harness as bm
from hmar_bench.cli import train_step_call

DEPTH = 16  # d16: width 1024, 16 heads, head dim 64 (the smallest official model)


@pytest.mark.parametrize("backend", ["auto", "sdpa"])
@pytest.mark.parametrize("kind", ["var", "hmar"])
@pytest.mark.parametrize("px", sorted(bm.SCHEDULES))
def test_train_step(px, kind, backend, benchmark, bench_state, pytestconfig):
    if not pytestconfig.getoption("--bench-e2e", default=False):
        pytest.skip("model-level benchmarks run with --bench-e2e")
    bench_state.check_budget()
    batch = pytestconfig.getoption("--bench-batch", default=4)
    call = train_step_call(kind, bm.SCHEDULES[px], batch, DEPTH, torch.bfloat16, backend, bench_state.device)
    steps = itertools.count()

    def setup():
        bm.synchronize(bench_state.device)
        return (next(steps),), {}

    def target(i):
        call(i)
        bm.synchronize(bench_state.device)

    benchmark.group = f"train step {px}px d{DEPTH} B={batch}"
    benchmark.extra_info.update(px=px, model=kind, backend=backend, depth=DEPTH, B=batch, dtype="bf16")
    try:
        benchmark.pedantic(target, setup=setup, rounds=max(3, bench_state.rounds // 4), warmup_rounds=1,
                           iterations=1)
        benchmark.extra_info["peak_mem_mb"] = bm.peak_memory_mb(lambda: call(0))
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"d{DEPTH} at {px} px, B={batch} does not fit ({backend})")
