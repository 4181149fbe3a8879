"""hmar-bench's CSV writer, argument parsing, sweep grid and case arithmetic (CPU only)."""
import csv
import math
import os

import pytest
import torch

from hmar_bench import harness as bm
from hmar_bench import cli as bench


def _row(backend="triton", fwd_ms=1.0, **changes):
    row = dict(device="NVIDIA H100 80GB HBM3", torch="2.11.0", triton="3.6.0", date="2026-11-22", commit="abc1234",
               px=256, L=680, B=4, H=16, D=64, dtype="bf16", pattern="block_diagonal", backend=backend,
               fwd_ms=fwd_ms, fwdbwd_ms=3 * fwd_ms, fwd_tflops=1 / 3, fwdbwd_tflops=0.5, peak_mem_mb=12.5,
               max_rel_err=float("nan"), first_call_s=2.0)
    row.update(changes)
    return row


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_has_the_issue_columns_in_order_and_formats_numbers(tmp_path):
    path = tmp_path / "gpu" / "attention.csv"
    bench.write_rows(path, [_row()])
    header, line = _read(path)
    assert header == list(bench.COLUMNS)
    for required in ("device", "torch", "triton", "date", "commit", "px", "L", "B", "H", "D", "dtype", "pattern",
                     "backend", "fwd_ms", "fwdbwd_ms", "fwd_tflops", "fwdbwd_tflops", "peak_mem_mb", "max_rel_err"):
        assert required in header
    values = dict(zip(header, line))
    assert values["fwd_tflops"] == "0.333333"  # 6 significant digits
    assert values["max_rel_err"] == ""  # NaN (not measured) is an empty cell
    assert values["px"] == "256" and values["backend"] == "triton"


def test_merge_replaces_rows_with_the_same_key_and_keeps_the_others(tmp_path):
    path = tmp_path / "attention.csv"
    bench.write_rows(path, [_row("triton", 1.0), _row("sdpa", 5.0)])
    bench.write_rows(path, [_row("triton", 0.5, commit="def5678"), _row("triton", 2.0, px=512, L=2240)])
    rows = {(r["px"], r["backend"]): r for r in csv.DictReader(open(path))}
    assert set(rows) == {("256", "triton"), ("256", "sdpa"), ("512", "triton")}
    assert rows["256", "triton"]["fwd_ms"] == "0.5" and rows["256", "triton"]["commit"] == "def5678"
    assert rows["256", "sdpa"]["fwd_ms"] == "5"


def test_fresh_write_drops_old_rows(tmp_path):
    path = tmp_path / "attention.csv"
    bench.write_rows(path, [_row("triton"), _row("sdpa")])
    bench.write_rows(path, [_row("flex")], merge=False)
    assert [r["backend"] for r in csv.DictReader(open(path))] == ["flex"]


@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "nvidia-h100"), ("NVIDIA H200", "nvidia-h200"),
                                        ("NVIDIA A100-SXM4-80GB", "nvidia-a100"),
                                        ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),  # no model token
                                        ("Weird Accelerator", "weird-accelerator")])
def test_gpu_folder_names(name, slug):
    assert bench.gpu_slug(name) == slug


def test_quick_lowers_reps_unless_given():
    assert (bench.parse_args([]).reps, bench.parse_args([]).warmup) == (20, 3)
    quick = bench.parse_args(["--quick"])
    assert (quick.reps, quick.warmup) == (5, 1)
    assert bench.parse_args(["--quick", "--reps", "7"]).reps == 7


def test_bad_flags_are_rejected():
    with pytest.raises(SystemExit):
        bench.parse_args(["--px", "384"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--backends", "official"])


def test_grid_has_every_backend_per_pattern_and_one_dense_row_per_shape():
    args = bench.parse_args(["--px", "256", "512", "--dtypes", "bf16", "fp16", "--head-dims", "64", "128"])
    args.backends = list(bm.SWEEP_BACKENDS)
    groups = bench.sweep_cases(args)
    assert len(groups) == 2 * 2 * 2  # px × dtype × D, one input shape each
    for group in groups:
        assert len({(c.px, c.dtype, c.head_dim) for c in group}) == 1
        dense = [c for c in group if c.backend == bm.DENSE_BACKEND]
        assert len(dense) == 1 and dense[0].pattern == bm.DENSE_PATTERN
        masked = [c for c in group if c.backend != bm.DENSE_BACKEND]
        assert len(masked) == len(bm.PATTERNS) * (len(bm.SWEEP_BACKENDS) - 1)


def test_useful_flops_match_the_pair_counts_of_the_docs():
    # docs/benchmarks.md: 256 px diag 110,468 / causal 286,434 / dense 462,400 pairs; 1024 px 24,587,383 / ...
    expected = {(256, "block_diagonal"): 110_468, (256, "block_causal"): 286_434, (256, "dense"): 462_400,
                (1024, "block_diagonal"): 24_587_383, (1024, "block_causal"): 56_954_392,
                (1024, "dense"): 89_321_401}
    for (px, pattern), pairs in expected.items():
        backend = bm.DENSE_BACKEND if pattern == "dense" else "triton"
        case = bm.AttentionCase.at(px, pattern, backend, "bf16", 2, 3, 64)
        assert case.flops() == 4 * 2 * 3 * 64 * pairs
        assert case.flops(with_backward=True) == pytest.approx(3.5 * case.flops())


def test_unavailable_cases_say_why():
    cpu = torch.device("cpu")
    varlen = bm.AttentionCase.at(256, "block_causal", "varlen", "bf16", 1, 1, 64)
    assert "block_diagonal" in varlen.unavailable(cpu)
    dense = bm.AttentionCase.at(256, "block_diagonal", bm.DENSE_BACKEND, "bf16", 1, 1, 64)
    assert "CUDA" in dense.unavailable(cpu)
    # conftest turns the Triton interpreter on without a GPU: the Triton backend then runs on CPU tensors
    triton_on_cpu = bm.AttentionCase.at(256, "block_causal", "triton", "fp16", 1, 1, 64).unavailable(cpu)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        assert triton_on_cpu is None
    else:
        assert "CUDA" in triton_on_cpu


def test_max_error_compares_batch_element_zero_of_every_output():
    ref = [torch.ones(1, 2, 3, 4) for _ in range(4)]
    results = [torch.ones(2, 2, 3, 4) for _ in range(4)]
    results[3][1] += 5  # batch element 1 is not compared
    assert bm.max_error_vs(results, ref) == 0
    results[2][0, 0, 0, 0] = 1.25  # dk off by 25% of max |ref|
    assert bm.max_error_vs(results, ref) == pytest.approx(0.25)
    results[0][0, 1, 2, 3] = float("nan")
    assert math.isinf(bm.max_error_vs(results, ref))


def test_graph_columns_follow_the_steady_ones_and_no_graph_turns_them_off():
    steady = bench.COLUMNS.index("fwdbwd_steady_tflops")
    assert bench.COLUMNS[steady + 1:steady + 5] == ("fwd_graph_ms", "fwdbwd_graph_ms", "fwd_graph_tflops",
                                                    "fwdbwd_graph_tflops") == bm.GRAPH_COLUMNS
    assert bench.parse_args([]).graph is True
    assert bench.parse_args(["--no-graph"]).graph is False


def _old_file(path):
    """An attention.csv written before the graph columns existed."""
    old_columns = [c for c in bench.COLUMNS if c not in bm.GRAPH_COLUMNS]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerow(_row("sdpa", 5.0))
        writer.writerow(_row("triton", 1.0, px=512, L=2240))


def test_old_files_without_graph_columns_merge_with_empty_cells(tmp_path):
    path = tmp_path / "gpu" / "attention.csv"
    _old_file(path)
    bench.write_rows(path, [_row("triton", 0.5, fwd_graph_ms=0.25, fwdbwd_graph_ms=0.75, fwd_graph_tflops=4.0,
                                 fwdbwd_graph_tflops=2.0)])
    header, *lines = _read(path)
    assert header == list(bench.COLUMNS)
    rows = {(r["px"], r["backend"]): r for r in csv.DictReader(open(path))}
    assert set(rows) == {("256", "sdpa"), ("512", "triton"), ("256", "triton")}
    assert all(rows["256", "sdpa"][c] == "" for c in bm.GRAPH_COLUMNS)
    assert rows["256", "sdpa"]["fwd_ms"] == "5.0"  # old rows are kept as written
    assert rows["256", "triton"]["fwd_graph_ms"] == "0.25" and rows["256", "triton"]["fwdbwd_graph_tflops"] == "2"


def test_hmar_plot_reads_old_files_without_graph_columns(tmp_path):
    from hmar_bench import plot

    path = tmp_path / "nvidia-h100" / "attention.csv"
    _old_file(path)
    df = plot.load([path])
    assert all(df[c].isna().all() for c in bm.GRAPH_COLUMNS)
    table = plot.headline(df, "bf16", 64)
    assert "fwd: ours" in table.columns and not any("graph" in c for c in table.columns)
    assert [p.name for p in plot.plot_gpu(path)] == ["speedup_bf16.png", "patterns_bf16.png", "tflops_bf16.png"]
