"""hmar-plot from small synthetic CSVs: speed-up arithmetic, headline table, figures, README update (CPU only)."""
import pytest

from hmar_bench import harness as bm
from hmar_bench import cli as bench, plot

# Synthetic useful TFLOP/s per backend; times follow from the case's FLOPs, so every ratio below is known.
RATES = {"triton": 300.0, "sdpa": 50.0, "flex": 150.0, "varlen": 200.0, bm.DENSE_BACKEND: 400.0}


def synthetic_rows(gpu_scale=1.0, pxs=(256, 1024), dtypes=("bf16",), head_dims=(64,)):
    rows = []
    for px in pxs:
        for dtype in dtypes:
            for d in head_dims:
                for pattern in bm.PATTERNS:
                    for backend, rate in RATES.items():
                        if backend == "varlen" and pattern == "block_causal":
                            continue  # as in a real sweep: varlen has no block-causal rows
                        case = bm.AttentionCase.at(px, pattern, backend, dtype, 4, 16, d)
                        tflops = rate * gpu_scale
                        fwd_ms = case.flops() / tflops / 1e9
                        rows.append(dict(device=f"GPU x{gpu_scale}", torch="2.10", triton="3.6", date="2026-11-22",
                                         commit="0123456", px=px, L=case.length, B=4, H=16, D=d, dtype=dtype,
                                         pattern=case.pattern, backend=backend, fwd_ms=fwd_ms,
                                         fwdbwd_ms=3.5 * fwd_ms * 2, fwd_tflops=tflops, fwdbwd_tflops=tflops / 2,
                                         peak_mem_mb=10.0, max_rel_err=1e-3, first_call_s=0.5,
                                         **graph_columns(backend, fwd_ms, tflops)))
    return rows


def graph_columns(backend, fwd_ms, tflops):
    """Replays take half the idle time, except sdpa, which cannot be captured (empty cells)."""
    if backend == "sdpa":
        return {}
    return dict(fwd_graph_ms=fwd_ms / 2, fwdbwd_graph_ms=3.5 * fwd_ms, fwd_graph_tflops=2 * tflops,
                fwdbwd_graph_tflops=tflops)


@pytest.fixture
def results(tmp_path):
    bench.write_rows(tmp_path / "nvidia-h100" / "attention.csv", synthetic_rows(1.0))
    bench.write_rows(tmp_path / "nvidia-h200" / "attention.csv", synthetic_rows(1.25))
    return tmp_path


def test_speedup_is_sdpa_time_over_backend_time(results):
    df = plot.with_speedup(plot.load([results / "nvidia-h100" / "attention.csv"]))
    masked = df[df.backend != bm.DENSE_BACKEND]
    for backend in ("triton", "flex", "sdpa"):
        expected = RATES[backend] / RATES["sdpa"]
        assert masked[masked.backend == backend].speedup_fwd.tolist() == pytest.approx([expected] * 4, rel=1e-5)  # CSV keeps 6 digits
        assert masked[masked.backend == backend].speedup_fwdbwd.tolist() == pytest.approx([expected] * 4, rel=1e-5)  # CSV keeps 6 digits
    assert df[df.backend == bm.DENSE_BACKEND].speedup_fwd.isna().all()  # no sdpa row has the dense pattern


def test_headline_picks_our_fastest_backend_and_the_best_anchor(results):
    df = plot.load(sorted(results.glob("*/attention.csv")))
    table = plot.headline(df, "bf16", 64)
    assert len(table) == 2 * 2 * 2  # GPU × px × pattern
    diag = table[(table.GPU == "nvidia-h100") & (table.px == 1024) & (table.pattern == "block_diagonal")].iloc[0]
    assert diag["fwd: ours"].startswith("triton") and diag["fwd: ours"].endswith("300 TF/s")
    assert diag["fwd: vs best anchor"] == "1.50× varlen"  # 300 / 200
    causal = table[(table.GPU == "nvidia-h200") & (table.px == 256) & (table.pattern == "block_causal")].iloc[0]
    assert causal["fwd+bwd: vs best anchor"] == "2.00× flex"  # 300 / 150 (varlen has no causal rows)
    assert causal["dense FA TF/s fwd, fwd+bwd"] == "500, 250"
    # graph replays: ours 600 TF/s forward; sdpa has no graph cells, so the best anchor is varlen / flex again
    assert diag["fwd graph: ours"].startswith("triton") and diag["fwd graph: ours"].endswith("600 TF/s")
    assert diag["fwd graph: vs best anchor"] == "1.50× varlen"
    assert causal["fwd+bwd graph: vs best anchor"] == "2.00× flex"
    assert list(table.pattern[:2]) == ["block_diagonal", "block_causal"]


def test_markdown_table_shape():
    import pandas as pd

    text = plot.markdown(pd.DataFrame({"a": [1, None], "b": ["x", "y"]}))
    lines = text.splitlines()
    assert lines[0] == "| a | b |" and lines[1] == "|---|---|" and lines[3] == "| – | y |"


def test_hmar_plot_writes_every_figure_and_the_readme_table(results, capsys):
    readme = results / "README.md"
    readme.write_text(f"# Results\nintro\n{plot.HEADLINE_BEGIN}\nold table\n{plot.HEADLINE_END}\ncommands\n")
    plot.main([str(results)])
    for gpu in ("nvidia-h100", "nvidia-h200"):
        for kind in ("speedup", "patterns", "tflops", "tflops_graph"):
            png = results / gpu / f"{kind}_bf16.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (results / "comparison_bf16_d64.png").stat().st_size > 10_000
    text = readme.read_text()
    assert text.startswith("# Results\nintro\n") and text.endswith(f"{plot.HEADLINE_END}\ncommands\n")
    assert "old table" not in text and "| nvidia-h200 | 1024 | block_causal |" in text
    assert "* nvidia-h100: GPU x1.0; torch 2.10, triton 3.6; commit 0123456; 2026-11-22" in text
    assert "updated the headline table" in capsys.readouterr().out


def test_readme_without_markers_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert not plot.update_readme(readme, "table")
    assert readme.read_text() == "no markers\n"


def test_hmar_plot_without_results_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no <gpu>/attention.csv"):
        plot.main([str(tmp_path)])
