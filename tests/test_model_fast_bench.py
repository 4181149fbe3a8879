"""hmar_bench.e2e (hmar-bench --e2e, bench/e2e_fast.py) on the CPU: the model-FLOP count against the issue's
figures and an independent dense-mask count, the CSV writer, and a clear exit without a GPU."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HAS_CUDA, REAL_SCHEDULES
from hmar_kernels.tiles import dense_mask, named_pattern_bits

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "e2e_fast.py"


@pytest.fixture(scope="module")
def e2e():
    from hmar_bench import e2e as module

    return module


@pytest.mark.parametrize("px", sorted(REAL_SCHEDULES))
@pytest.mark.parametrize("pattern", ["block_diagonal", "block_causal"])
def test_allowed_pairs_match_the_dense_mask(e2e, px, pattern):
    patch_nums = REAL_SCHEDULES[px]
    assert e2e.SCHEDULES[px] == patch_nums
    if px == 1024:  # a 9451² dense mask is 89 MB: count the small schedules densely, this one by formula
        sizes = [p * p for p in patch_nums]
        want = sum(n * n for n in sizes) if pattern == "block_diagonal" else sum(
            n * (sum(sizes) - sum(sizes[k + 1:])) for k, n in enumerate(sizes))
    else:
        want = int(dense_mask(patch_nums, named_pattern_bits(pattern, len(patch_nums))).sum())
    assert e2e.allowed_pairs(patch_nums, pattern) == want


def test_step_flops_match_the_issue(e2e):
    """HMAR d16, 256 px, B = 32: 6 × 205.6 M parameters × 21,760 tokens + 0.8 TFLOP of attention ≈ 27.6 TFLOP."""
    tflops = e2e.train_step_tflops(16, REAL_SCHEDULES[256], 32, "block_diagonal")
    params = 16 * 12 * 1024 ** 2 + 1024 * 4096 + 32 * 1024  # blocks' qkv, proj, fc1, fc2; head; word_embed
    assert abs(params / 1e6 - 205.6) < 0.1
    assert abs(tflops - 27.6) < 0.1
    assert abs(tflops - 6 * params * 21760 / 1e12 - 0.81) < 0.01  # attention: 3.5 × 4·B·C·Σ n_k² per layer


def test_csv_rows_are_written_atomically(e2e, tmp_path):
    rows = [dict.fromkeys(e2e.COLUMNS, 1), dict.fromkeys(e2e.COLUMNS, 2)]
    e2e.write_rows(tmp_path / "e2e.csv", rows)
    with open(tmp_path / "e2e.csv") as f:
        read = list(csv.DictReader(f))
    assert [r["ms"] for r in read] == ["1", "2"] and list(read[0]) == list(e2e.COLUMNS)
    assert not (tmp_path / "e2e.csv.tmp").exists()


@pytest.mark.skipif(HAS_CUDA, reason="checks the message shown without a GPU")
def test_without_gpu_exits_2_with_one_message(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_rows_of_an_earlier_run_are_kept_unless_remeasured(e2e, tmp_path):
    path = tmp_path / "e2e.csv"
    first = [dict(dict.fromkeys(e2e.COLUMNS, 0), model=m, ms=1) for m in ("var", "hmar")]
    e2e.write_rows(path, first)
    rows = e2e.merge_row(e2e.read_rows(path), dict(dict.fromkeys(e2e.COLUMNS, 0), model="hmar", ms=2))
    e2e.write_rows(path, rows)
    assert [(r["model"], r["ms"]) for r in e2e.read_rows(path)] == [("var", "1"), ("hmar", "2")]


def test_hmar_bench_e2e_measures_the_chosen_rows_into_the_gpu_folder(e2e, monkeypatch, tmp_path):
    import torch

    from hmar_bench import cli

    calls = []
    monkeypatch.setattr(e2e, "measure", lambda out, configs, sampling=True: calls.append((out, configs, sampling)))
    args = cli.parse_args(["--e2e-only", "--e2e-configs", "d16-256", "--e2e-no-sampling", "--no-plots", "--results",
                           str(tmp_path)], on_gpu=True)
    assert cli.run(args, torch.device("cpu"), "NVIDIA H200") == 0
    assert calls == [(tmp_path / "nvidia-h200", ["d16-256"], False)]
