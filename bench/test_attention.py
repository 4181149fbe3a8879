"""Attention forward and forward+backward, every backend × pattern × schedule × dtype × head dim (grid and
timing rules: bench/conftest.py)."""
import itertools
import math

import pytest

from hmar_bench import harness as bm

SANE_ERROR = 0.1  # max |x − ref| / max |ref| over out, dq, dk, dv: bf16 rounding gives ~1e-2; garbage gives ~1


def test_attention(attention_case, bench_pass, benchmark, bench_state, bench_summary):
    case = attention_case
    bench_state.check_budget()
    why = case.unavailable(bench_state.device)
    if why:
        pytest.skip(why)
    inputs = bench_state.inputs_for(case)
    attend = case.attend()
    error, peak = bench_state.error_and_peak(case, attend, inputs)
    call = bm.fwd_call(attend, inputs) if bench_pass == "fwd" else bm.fwd_bwd_call(attend, inputs)
    rounds = itertools.count()

    def setup():  # not timed: start each round from an idle device, on the next input set
        bm.synchronize(bench_state.device)
        return (next(rounds),), {}

    def target(i):
        call(i)
        bm.synchronize(bench_state.device)

    benchmark.group = f"{bench_pass} {case.px}px {case.pattern if case.backend != bm.DENSE_BACKEND else 'any'} " \
                      f"{case.dtype} D{case.head_dim}"
    benchmark.pedantic(target, setup=setup, rounds=bench_state.rounds, warmup_rounds=bench_state.warmup,
                       iterations=1)
    flops = case.flops(with_backward=bench_pass == "fwdbwd")
    info = dict(px=case.px, L=case.length, B=case.batch, H=case.heads, D=case.head_dim, dtype=case.dtype,
                pattern=case.pattern, backend=case.backend, useful_flops=flops, peak_mem_mb=peak,
                max_rel_err=error)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        info["tflops"] = flops / median / 1e12
        bench_summary(dict(name=f"{bench_pass}-{case.label()}", median_ms=median * 1e3, tflops=info["tflops"],
                           peak_mem_mb=peak, max_rel_err=error))
    benchmark.extra_info.update(info)
    assert math.isfinite(error) and error < SANE_ERROR, f"{case.label()}: max relative error {error:.3g}"
