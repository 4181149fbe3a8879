"""pytest-benchmark suites: attention (every backend × pattern × schedule × dtype × D, fwd and fwd+bwd) and,
with --bench-e2e, the model-level train step.

    pytest bench/ --benchmark-only                                   # the full attention grid
    pytest bench/ --benchmark-only --bench-px 1024 --bench-backends triton sdpa --benchmark-json=out.json

Timing: synchronised pedantic rounds (each round starts from an idle device and ends with a synchronise, so host
overhead counts, as in hmar_bench.harness.time_cuda), warm-up rounds first, inputs rotated across rounds so
small problems do not sit in L2; compare medians. extra_info holds useful TFLOP/s (dense_fa: all L² pairs), peak
memory of fwd+bwd and the largest relative error of out, dq, dk, dv against the fp32 reference; a summary table
of those prints at the end. Without a CUDA device every benchmark is skipped with the reason. The suites run
only when bench/ (or a file in it) is named on the command line, so a plain ``pytest`` never starts them.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hmar_bench import harness as bm

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda")
BENCH_DIR = Path(__file__).parent
# pytest-benchmark's own table: the columns that matter for synchronised GPU rounds, unless given on the command line
DEFAULT_COLUMNS = ["median", "iqr", "min", "max", "rounds"]
_summary: list[dict] = []


OPTIONS = {  # --bench-* options and their argparse settings (defaults: the full grid of issue 5)
    "--bench-px": dict(nargs="+", type=int, default=sorted(bm.SCHEDULES), choices=sorted(bm.SCHEDULES)),
    "--bench-patterns": dict(nargs="+", default=list(bm.PATTERNS), choices=bm.PATTERNS),
    "--bench-backends": dict(nargs="+", default=list(bm.SWEEP_BACKENDS), choices=bm.SWEEP_BACKENDS),
    "--bench-dtypes": dict(nargs="+", default=["bf16", "fp16"], choices=sorted(bm.DTYPES)),
    "--bench-head-dims": dict(nargs="+", type=int, default=[64, 128]),
    "--bench-batch": dict(type=int, default=4),
    "--bench-heads": dict(type=int, default=16),
    "--bench-rounds": dict(type=int, default=20, help="timed rounds per benchmark"),
    "--bench-warmup": dict(type=int, default=3, help="untimed rounds first"),
    "--bench-time-budget": dict(type=float, default=None,
                                help="seconds after which the remaining benchmarks skip (device command limits)"),
    "--bench-e2e": dict(action="store_true", default=False, help="also run the model-level train-step benchmarks"),
}


def pytest_addoption(parser):
    group = parser.getgroup("hmar-bench", "hmar attention benchmark grid (bench/)")
    for name, settings in OPTIONS.items():
        group.addoption(name, **settings)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    if getattr(config.option, "benchmark_columns", None) == \
            ["min", "max", "mean", "stddev", "median", "iqr", "outliers", "ops", "rounds", "iterations"]:
        config.option.benchmark_columns = DEFAULT_COLUMNS


def option(config, name: str):
    """A --bench-* value; its default when this conftest was loaded too late to add options (plain ``pytest``
    from the repository root finds bench/ only while collecting)."""
    return config.getoption(name, default=OPTIONS[name]["default"])


def attention_cases(config) -> list[bm.AttentionCase]:
    """The grid in measuring order: inputs are shared by consecutive cases of one (px, dtype, D)."""
    cases = []
    for px in option(config, "--bench-px"):
        for dtype in option(config, "--bench-dtypes"):
            for head_dim in option(config, "--bench-head-dims"):
                args = (dtype, option(config, "--bench-batch"), option(config, "--bench-heads"), head_dim)
                for pattern in option(config, "--bench-patterns"):
                    cases += [bm.AttentionCase.at(px, pattern, b, *args)
                              for b in option(config, "--bench-backends") if b != bm.DENSE_BACKEND]
                if bm.DENSE_BACKEND in option(config, "--bench-backends"):
                    cases.append(bm.AttentionCase.at(px, bm.DENSE_PATTERN, bm.DENSE_BACKEND, *args))
    return cases


def case_id(case: bm.AttentionCase) -> str:
    return f"{case.px}px-{case.pattern}-{case.dtype}-D{case.head_dim}-{case.backend}"


def pytest_generate_tests(metafunc):
    if "attention_case" in metafunc.fixturenames:
        params = [(case, p) for case in attention_cases(metafunc.config) for p in ("fwd", "fwdbwd")]
        metafunc.parametrize(("attention_case", "bench_pass"), params,
                             ids=[f"{p}-{case_id(case)}" for case, p in params])


def _named_on_command_line(config) -> bool:
    for arg in config.invocation_params.args:
        path = Path(config.invocation_params.dir, str(arg).split("::")[0]).resolve()
        if path == BENCH_DIR or BENCH_DIR in path.parents:
            return True
    return False


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if BENCH_DIR in Path(str(item.fspath)).parents]
    if not mine:
        return
    if not HAS_CUDA:
        reason = "benchmarks need a CUDA device (none found); hmar-bench runs the CPU correctness sweep instead"
    elif not _named_on_command_line(config):
        reason = "benchmarks run only when bench/ is named: pytest bench/ --benchmark-only"
    else:
        return
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=reason))


def pytest_benchmark_update_machine_info(config, machine_info):
    """The GPU and library versions in --benchmark-json (pytest-benchmark adds the git commit itself)."""
    import triton

    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["torch"], machine_info["triton"] = torch.__version__, triton.__version__


class BenchState:
    """What consecutive benchmarks share: the input sets of one shape, the reference of one pattern, and the
    error and peak memory of each case (measured once, by whichever pass comes first)."""

    def __init__(self, device: torch.device, rounds: int, warmup: int, time_budget: float | None = None):
        self.device, self.rounds, self.warmup = device, rounds, warmup
        self.deadline = time.perf_counter() + time_budget if time_budget else None
        self.shape_key, self.inputs = None, None
        self.reference_key, self.reference = None, None
        self.measured: dict = {}

    def check_budget(self):
        if self.deadline is not None and time.perf_counter() > self.deadline:
            pytest.skip("--bench-time-budget reached")

    def inputs_for(self, case: bm.AttentionCase):
        key = (case.px, case.dtype, case.batch, case.heads, case.head_dim)
        if key != self.shape_key:
            self.inputs = self.reference = self.reference_key = None
            torch.cuda.empty_cache()
            self.inputs, self.shape_key = bm.make_inputs(case, self.device), key
        return self.inputs

    def error_and_peak(self, case: bm.AttentionCase, attend, inputs) -> tuple[float, float]:
        if case not in self.measured:
            if self.reference_key != (self.shape_key, case.pattern):
                self.reference = None
                self.reference = bm.reference_outputs(case, inputs[0])
                self.reference_key = (self.shape_key, case.pattern)
            error = bm.max_error_vs(bm.run_fwd_bwd(attend, inputs[0]), self.reference)
            peak = bm.peak_memory_mb(lambda: bm.fwd_bwd_call(attend, inputs)(0))
            self.measured[case] = (error, peak)
        return self.measured[case]


@pytest.fixture(scope="session")
def bench_state(pytestconfig):
    return BenchState(DEVICE, option(pytestconfig, "--bench-rounds"), option(pytestconfig, "--bench-warmup"),
                      option(pytestconfig, "--bench-time-budget"))


@pytest.fixture
def bench_summary():
    """Append a row (name, median_ms, tflops, peak_mem_mb, max_rel_err) for the end-of-run table."""
    return _summary.append


def pytest_terminal_summary(terminalreporter):
    if not _summary:
        return
    terminalreporter.section("hmar attention benchmarks: useful TFLOP/s, peak memory, error vs reference")
    terminalreporter.write_line(f"{'benchmark':66s} {'median ms':>10s} {'TFLOP/s':>8s} {'peak MiB':>9s} "
                                f"{'max rel err':>11s}")
    for row in _summary:
        terminalreporter.write_line(f"{row['name']:66s} {row['median_ms']:10.3f} {row['tflops']:8.1f} "
                                    f"{row['peak_mem_mb']:9.0f} {row['max_rel_err']:11.1e}")
