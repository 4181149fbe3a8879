"""hmar-bench without a GPU: the CPU correctness sweep (Triton interpreter vs the float64 reference), its failure
path, the e2e hooks on tiny models, and bench/ skipping cleanly."""
import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import HAS_CUDA
from hmar_bench import harness as bm
from hmar_kernels.reference import reference_attention
from hmar_bench import cli as bench

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="tests the no-GPU path")
CPU = torch.device("cpu")
SMALL = (1, 2, 3)  # L = 14: one partial 16×16 tile per side in the interpreter


@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_check_case_passes_the_triton_interpreter(pattern):
    case = bm.AttentionCase(SMALL, pattern, "triton", "fp32", 2, 3, 16)
    ratios = bm.check_case(case, CPU)
    assert set(ratios) == {"out", "dq", "dk", "dv", "worst"}
    assert ratios["worst"] <= 1, ratios


def test_check_case_catches_a_wrong_kernel():
    case = bm.AttentionCase(SMALL, "block_causal", "triton", "fp32", 2, 3, 16)
    diagonal = tuple(1 << i for i in range(len(SMALL)))

    def wrong_mask(q, k, v):  # block-diagonal where block-causal was asked
        return reference_attention(q, k, v, SMALL, diagonal, case.softmax_scale)[0]

    assert bm.check_case(case, CPU, attend=wrong_mask)["worst"] > 10


def test_error_bound_rule():
    golden = torch.tensor([1.0, 2.0], dtype=torch.float64)
    baseline = torch.tensor([1.0, 2.001])
    error, bound = bm.error_bound(torch.tensor([1.0, 2.0015]), golden, baseline)
    assert error == pytest.approx(0.0015, rel=1e-3)
    assert bound == pytest.approx(2 * 0.001, rel=1e-3)  # 2 × baseline error (+ 2 × fp32 rounding of 1 and 2: 0)
    assert error <= bound
    assert bm.error_bound(torch.tensor([1.0, 2.01]), golden, baseline)[0] > bound
    assert bm.error_bound(torch.tensor([float("nan"), 2.0]), golden, baseline) == (float("inf"), 0.0)


def test_main_without_gpu_runs_the_correctness_sweep(monkeypatch, capsys):
    monkeypatch.setattr(bench, "CPU_SCHEDULES", (SMALL,))
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--dtypes", "fp32", "bf16", "--cpu-head-dims", "16"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "all passed" in out
    assert "skip cuda:" in out and "skip varlen:" in out  # unavailable backends: one line with the reason
    assert "skip triton: the Triton interpreter's tl.dot is wrong for bf16" in out
    assert out.count(" ok") == 2  # (1, 2, 3) × two patterns × fp32 × triton


def test_sweep_exit_code_reports_a_failure(monkeypatch, capsys):
    monkeypatch.setattr(bench, "CPU_SCHEDULES", (SMALL,))
    monkeypatch.setattr(bm, "check_case", lambda case, device: {"out": 3.0, "dq": 0, "dk": 0, "dv": 0, "worst": 3.0})
    assert bench.cpu_sweep(bench.parse_args(["--backends", "triton", "--dtypes", "fp32"])) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["var", "hmar"])
def test_e2e_train_step_trains_a_tiny_model(kind):
    from hmar_model.tiny import TINY_TRANSFORMER

    call = bench.train_step_call(kind, (1, 2, 3, 4), 2, 2, None, "reference", CPU, **TINY_TRANSFORMER)
    losses = [call(i).item() for i in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[2] < losses[0]  # same batch three times: AdamW must lower the loss


def test_bench_suite_skips_cleanly_without_gpu():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--benchmark-only", "-q", "-rs", "-p",
                           "no:cacheprovider", "--bench-px", "256", "--bench-dtypes", "bf16"],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "benchmarks need a CUDA device" in done.stdout
    assert " passed" not in done.stdout and "skipped" in done.stdout


def _cpu_timing(call, warmup=3, reps=20):
    """time_cuda's contract on the CPU (wall clock), so the sweep loop runs here untimed but complete."""
    import time

    for i in range(warmup):
        call(i)
    times = []
    for i in range(reps):
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1e3)
    return bm.Timing(sorted(times)[len(times) // 2], min(times), reps)


class _CpuGraph:
    """capture_graph's contract on the CPU: replay() runs the captured call again."""

    def __init__(self, call):
        self.replay = call


def _cpu_capture(call, warmup=3):
    for _ in range(warmup):
        call()
    return _CpuGraph(call), call()


@pytest.fixture
def cpu_timed(monkeypatch):
    """Timing, graph capture and memory on the CPU, and a tiny schedule as "256 px"."""
    monkeypatch.setattr(bm, "SCHEDULES", {256: SMALL})
    monkeypatch.setattr(bm, "time_cuda", _cpu_timing)
    monkeypatch.setattr(bm, "capture_graph", _cpu_capture)
    monkeypatch.setattr(bm, "time_steady", lambda call: _cpu_timing(call, 1, 3).median_ms)
    monkeypatch.setattr(bm, "peak_memory_mb", lambda call: (call(), 0.0)[1])


def test_sweep_loop_on_cpu_rows_skips_failures_and_plots(cpu_timed, monkeypatch, tmp_path, capsys):
    from hmar_bench import plot

    attend = bm.AttentionCase.attend

    def flex_breaks(case):
        if case.backend == "flex":
            raise RuntimeError("compile error\nsecond line")
        return attend(case)

    monkeypatch.setattr(bm.AttentionCase, "attend", flex_breaks)
    args = bench.parse_args(["--px", "256", "--dtypes", "fp32", "--head-dims", "16", "--batch", "1", "--heads", "2",
                             "--reps", "2", "--warmup", "1", "--backends", "triton", "sdpa", "flex", "varlen",
                             "dense_fa"])
    written = []
    rows, phases, failures = bench.run_sweep(args, CPU, {"device": "cpu", "commit": "abc"}, written.append)
    out = capsys.readouterr().out
    assert written == [rows]  # one input shape: one write, as soon as it is measured
    assert all(r["device"] == "cpu" and r["commit"] == "abc" for r in rows)
    assert "skip varlen: backend 'varlen' needs CUDA" in out and "skip dense_fa:" in out
    assert sorted((r["pattern"], r["backend"]) for r in rows) == [
        ("block_causal", "sdpa"), ("block_causal", "triton"), ("block_diagonal", "sdpa"), ("block_diagonal", "triton")]
    assert len(failures) == 2 and all("RuntimeError: compile error" in f for f in failures)
    for row in rows:
        assert row["L"] == 14 and row["fwd_ms"] > 0 and row["fwdbwd_tflops"] > 0
        assert row["fwd_graph_ms"] > 0 and row["fwdbwd_graph_tflops"] > 0
        assert row["max_rel_err"] < 1e-5  # fp32 kernels against the fp32 reference
    assert phases["first call", "triton"] > 0 and phases["reference", ""] > 0
    bench.write_rows(tmp_path / "cpu" / "attention.csv", rows)
    assert [p.name for p in plot.plot_gpu(tmp_path / "cpu" / "attention.csv")] == [
        "speedup_fp32.png", "patterns_fp32.png", "tflops_fp32.png", "tflops_graph_fp32.png"]


def _graph_args(*extra):
    return bench.parse_args(["--px", "256", "--dtypes", "fp32", "--head-dims", "16", "--batch", "1", "--heads", "2",
                             "--reps", "1", "--warmup", "0", "--backends", "triton", "sdpa", *extra])


def test_a_backend_that_cannot_be_captured_gets_empty_graph_cells_and_one_line(cpu_timed, monkeypatch, capsys):
    capture = bm.capture_graph

    def sdpa_refuses(call, warmup=3):
        if refusing:
            try:
                raise RuntimeError("operation not permitted when stream is capturing")
            finally:  # as torch.cuda.graph's exit does: a second error on top of the first
                raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
        return capture(call, warmup)

    real_measure = bm.measure_graphs

    def measure(case, *args):
        nonlocal refusing
        refusing = case.backend == "sdpa"
        return real_measure(case, *args)

    refusing = False
    monkeypatch.setattr(bm, "capture_graph", sdpa_refuses)
    monkeypatch.setattr(bm, "measure_graphs", measure)
    rows, _, failures = bench.run_sweep(_graph_args(), CPU)
    out = capsys.readouterr().out
    assert failures == [] and len(rows) == 4
    lines = [line for line in out.splitlines() if line.startswith("no graph column")]
    assert lines == ["no graph column for sdpa: cannot be captured in a CUDA graph: RuntimeError: CUDA error: "
                     "operation failed due to a previous error during capture (after RuntimeError: operation not "
                     "permitted when stream is capturing) (first case: 256px block_diagonal fp32 D=16 sdpa)"]
    for row in rows:
        graph = [row[c] for c in bm.GRAPH_COLUMNS]
        if row["backend"] == "sdpa":
            assert all(math.isnan(v) for v in graph) and row["fwd_ms"] > 0  # the other columns are kept
        else:
            assert all(v > 0 for v in graph)


def test_no_graph_skips_the_capture_and_leaves_the_cells_empty(cpu_timed, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bm, "capture_graph", lambda *a, **k: pytest.fail("--no-graph must not capture"))
    args = _graph_args("--no-graph", "--no-plots", "--results", str(tmp_path))
    assert bench.run(args, CPU, "Fake GPU 80GB") == 0
    assert "no CUDA-graph column" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "fake-gpu-80gb" / "attention.csv")))
    assert len(rows) == 4 and all(r[c] == "" for r in rows for c in bm.GRAPH_COLUMNS)
    assert all(float(r["fwd_ms"]) > 0 for r in rows)


def test_time_budget_stops_starting_cases(monkeypatch, capsys):
    monkeypatch.setattr(bm, "SCHEDULES", {256: SMALL, 512: (1, 2)})
    args = bench.parse_args(["--px", "256", "512", "--dtypes", "fp32", "--head-dims", "16", "--backends", "triton",
                             "--time-budget", "1e-9"])
    rows, _, failures = bench.run_sweep(args, CPU)
    assert rows == [] and failures == []
    assert "4 case(s) not run, from 256px block_diagonal fp32 D=16 triton on" in capsys.readouterr().out


def test_run_writes_results_and_a_refresh_replaces_only_its_rows(cpu_timed, tmp_path, capsys):
    common = ["--px", "256", "--dtypes", "fp32", "--head-dims", "16", "--batch", "1", "--heads", "2", "--reps", "1",
              "--warmup", "0", "--results", str(tmp_path)]
    assert bench.run(bench.parse_args(common + ["--backends", "triton", "sdpa"]), CPU, "Fake GPU 80GB") == 0
    out_dir = tmp_path / "fake-gpu-80gb"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "attention.csv", "patterns_fp32.png", "speedup_fp32.png", "tflops_fp32.png", "tflops_graph_fp32.png"]
    out = capsys.readouterr().out
    assert "fwd / fwd+bwd ms (median)" in out and "CUDA-graph replays: fwd / fwd+bwd ms" in out
    assert "wall time by phase" in out and "graphs" in out
    first = {(r["pattern"], r["backend"]): r for r in csv.DictReader(open(out_dir / "attention.csv"))}
    assert len(first) == 4 and first["block_causal", "triton"]["device"] == "Fake GPU 80GB"
    assert bench.run(bench.parse_args(common + ["--backends", "sdpa", "--no-plots"]), CPU, "Fake GPU 80GB") == 0
    second = {(r["pattern"], r["backend"]): r for r in csv.DictReader(open(out_dir / "attention.csv"))}
    assert set(second) == set(first)
    assert second["block_causal", "triton"] == first["block_causal", "triton"]  # not re-measured: kept as it was


def test_a_cpu_sweep_that_runs_nothing_fails(monkeypatch, capsys):
    """bf16 (refused by the interpreter) or a head dim no kernel has: every case skipped is a failure, not a pass."""
    monkeypatch.setattr(bench, "CPU_SCHEDULES", (SMALL,))
    for argv in (["--dtypes", "bf16"], ["--cpu-head-dims", "48"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        out = capsys.readouterr().out
        assert exit_info.value.code == 1, out
        assert "no case ran" in out and "all passed" not in out


@pytest.mark.parametrize("argv", [["--e2e"], ["--px", "256"], ["--head-dims", "64"], ["--quick"], ["--no-graph"],
                                  ["--results=out"], ["--e2e-only", "--batch", "2"]])
def test_gpu_flags_are_refused_on_the_cpu(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv, on_gpu=False)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert argv[0].split("=")[0] in err and "no CUDA device here" in err


def test_cpu_flags_are_refused_on_a_gpu(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(["--cpu-head-dims", "16"], on_gpu=True)
    assert exit_info.value.code == 2 and "--cpu-head-dims" in capsys.readouterr().err
    assert bench.parse_args(["--px", "256", "--e2e"], on_gpu=True).e2e


def test_every_flag_has_help_text():
    for action in bench.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"
