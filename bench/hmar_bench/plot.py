"""hmar-plot: figures and tables from the committed results/<gpu>/attention.csv files (no GPU needed).

    hmar-plot                      # every results/<gpu>/ figure, the cross-GPU comparison, README headline table
    hmar-plot results --dtype fp16 --head-dim 128   # comparison and headline for another configuration

Per GPU (written next to its attention.csv, one set per dtype):
  speedup_<dtype>.png   speed-up of every backend over the sdpa boolean mask, per schedule (fwd, fwd+bwd)
  patterns_<dtype>.png  HMAR block-diagonal vs VAR block-causal time with each backend
  tflops_<dtype>.png    useful TFLOP/s against the measured dense FlashAttention rate (dense_fa, dashed)
  tflops_graph_<dtype>.png  the same from CUDA-graph replays (kernel time without the host path; only when the
                        CSV has the *_graph_* columns: files written before them, or with --no-graph, have none)
Across GPUs (in the results folder): comparison_<dtype>_d<D>.png (useful TFLOP/s of each backend, one line style
per GPU) and the headline table between the markers of results/README.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from hmar_bench.harness import (ANCHOR_BACKENDS, DENSE_BACKEND, GRAPH_COLUMNS, OUR_BACKENDS, PATTERNS,  # noqa
                                SWEEP_BACKENDS)

TEXT_COLUMNS = ("device", "torch", "triton", "date", "commit")
SHAPE = ["px", "B", "H", "D", "dtype"]  # with the device, what makes two rows comparable
PASSES = (("fwd", "forward"), ("fwdbwd", "forward + backward"))
TIMINGS = {"": "from an idle GPU", "_graph": "CUDA-graph replays"}  # column infix → what the time includes
PATTERN_TITLES = {"block_diagonal": "block-diagonal (HMAR)", "block_causal": "block-causal (VAR)"}
COLORS = {"cuda": "tab:red", "cuda_sm80": "tab:pink", "triton": "tab:orange", "sdpa": "tab:gray", "flex": "tab:blue",
          "varlen": "tab:green", DENSE_BACKEND: "black"}
HEADLINE_BEGIN = "<!-- headline:begin (written by hmar-plot from results/*/attention.csv; do not edit) -->"
HEADLINE_END = "<!-- headline:end -->"


def load(paths) -> pd.DataFrame:
    """The rows of one or more attention.csv files (a 'gpu' column names the folder each came from)."""
    frames = []
    for path in paths:
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})  # "2.10" stays a version, not 2.1
        df["gpu"] = Path(path).parent.name
        for column in GRAPH_COLUMNS:  # files written before the graph column: empty cells
            if column not in df:
                df[column] = float("nan")
        frames.append(df)
    if not frames:
        raise ValueError("no attention.csv files given")
    return pd.concat(frames, ignore_index=True)


def with_speedup(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus speedup_fwd / speedup_fwdbwd: time of the sdpa row of the same GPU, shape and pattern over
    the row's time (NaN where there is no sdpa row)."""
    keys = ["gpu", *SHAPE, "pattern"]
    sdpa = df[df.backend == "sdpa"][keys + ["fwd_ms", "fwdbwd_ms"]]
    merged = df.merge(sdpa, on=keys, how="left", suffixes=("", "_sdpa"))
    for p, _ in PASSES:
        merged[f"speedup_{p}"] = merged[f"{p}_ms_sdpa"] / merged[f"{p}_ms"]
    return merged.drop(columns=["fwd_ms_sdpa", "fwdbwd_ms_sdpa"])


def _backends(df: pd.DataFrame) -> list[str]:
    return [b for b in SWEEP_BACKENDS if b in set(df.backend)]


def _grid(rows: int, cols: int, width: float = 4.2, height: float = 3.2):
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return fig, axes


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _subtitle(df: pd.DataFrame) -> str:
    b, h = sorted(set(df.B)), sorted(set(df.H))
    return f"B={','.join(map(str, b))} H={','.join(map(str, h))}"


def plot_speedup(df: pd.DataFrame, dtype: str, path: Path) -> Path:
    """Bars per schedule: speed-up of each masked backend over sdpa; rows = pattern, cols = pass × head dim."""
    df = with_speedup(df[(df.dtype == dtype) & (df.backend != DENSE_BACKEND)])
    dims = sorted(set(df.D))
    backends = [b for b in _backends(df) if b != "sdpa"]
    fig, axes = _grid(len(PATTERNS), 2 * len(dims))
    for r, pattern in enumerate(PATTERNS):
        for c, (d, (p, pass_name)) in enumerate((d, p) for d in dims for p in PASSES):
            ax = axes[r][c]
            sub = df[(df.pattern == pattern) & (df.D == d)]
            pxs = sorted(set(sub.px))
            width = 0.8 / max(1, len(backends))
            for i, backend in enumerate(backends):
                values = [sub[(sub.px == px) & (sub.backend == backend)][f"speedup_{p}"].max() for px in pxs]
                ax.bar([x + i * width for x in range(len(pxs))], values, width, label=backend,
                       color=COLORS.get(backend))
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
            ax.set_xticks([x + width * (len(backends) - 1) / 2 for x in range(len(pxs))], [f"{px} px" for px in pxs])
            ax.set_title(f"{PATTERN_TITLES[pattern]}\n{pass_name}, D={d}", fontsize=9)
            ax.set_ylabel("speed-up over sdpa (×)")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path, f"{_gpu_names(df)}: speed-up over SDPA with a boolean mask, {dtype}, {_subtitle(df)}")


def plot_patterns(df: pd.DataFrame, dtype: str, path: Path) -> Path:
    """Per backend, block-diagonal vs block-causal time; rows = schedule, cols = pass × head dim."""
    df = df[(df.dtype == dtype)]
    dims, pxs = sorted(set(df.D)), sorted(set(df.px))
    fig, axes = _grid(len(pxs), 2 * len(dims))
    for r, px in enumerate(pxs):
        for c, (d, (p, pass_name)) in enumerate((d, p) for d in dims for p in PASSES):
            ax = axes[r][c]
            sub = df[(df.px == px) & (df.D == d)]
            backends = [b for b in _backends(sub) if b != DENSE_BACKEND]
            for i, pattern in enumerate(PATTERNS):
                values = [sub[(sub.backend == b) & (sub.pattern == pattern)][f"{p}_ms"].min() for b in backends]
                ax.bar([x + i * 0.4 for x in range(len(backends))], values, 0.4, label=PATTERN_TITLES[pattern],
                       color=("tab:purple", "tab:cyan")[i])
            dense = sub[sub.backend == DENSE_BACKEND][f"{p}_ms"]
            if len(dense):
                ax.axhline(dense.min(), color="black", ls="--", lw=1, label="dense FlashAttention")
            ax.set_xticks([x + 0.2 for x in range(len(backends))], backends, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"{px} px, {pass_name}, D={d}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path, f"{_gpu_names(df)}: block-diagonal (HMAR) vs block-causal (VAR) time, {dtype}, "
                            f"{_subtitle(df)}")


def has_timing(df: pd.DataFrame, timing: str) -> bool:
    """Whether any row of ``df`` has times of ``timing`` (a key of TIMINGS)."""
    return bool(df[f"fwd{timing}_ms"].notna().any())


def plot_tflops(df: pd.DataFrame, dtype: str, path: Path, timing: str = "") -> Path:
    """Useful TFLOP/s per schedule and backend, with the dense FlashAttention rate as a dashed line; ``timing``
    picks the columns (a key of TIMINGS)."""
    df = df[df.dtype == dtype]
    dims = sorted(set(df.D))
    fig, axes = _grid(len(PATTERNS), 2 * len(dims))
    for r, pattern in enumerate(PATTERNS):
        for c, (d, (p, pass_name)) in enumerate((d, p) for d in dims for p in PASSES):
            ax = axes[r][c]
            sub = df[(df.D == d) & ((df.pattern == pattern) | (df.backend == DENSE_BACKEND))]
            for backend in _backends(sub):
                line = sub[sub.backend == backend].groupby("px")[f"{p}{timing}_tflops"].max().dropna()
                dense = backend == DENSE_BACKEND
                ax.plot(line.index, line.values, marker="o", color=COLORS.get(backend), ls="--" if dense else "-",
                        label="dense FlashAttention (all L² pairs)" if dense else backend)
            ax.set_xticks(sorted(set(sub.px)), [f"{px}" for px in sorted(set(sub.px))])
            ax.set_xlabel("px")
            ax.set_ylabel("useful TFLOP/s")
            ax.set_title(f"{PATTERN_TITLES[pattern]}\n{pass_name}, D={d}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path, f"{_gpu_names(df)}: achieved useful TFLOP/s ({TIMINGS[timing]}), {dtype}, "
                            f"{_subtitle(df)}")


def _gpu_names(df: pd.DataFrame) -> str:
    names = sorted(set(df.device.dropna().astype(str))) if "device" in df else []
    return ", ".join(names or sorted(set(df.gpu)))


def plot_gpu(csv_path) -> list[Path]:
    """All per-GPU figures of one attention.csv, written next to it; returns their paths."""
    csv_path = Path(csv_path)
    df = load([csv_path])
    out = []
    for dtype in sorted(set(df.dtype)):
        out.append(plot_speedup(df, dtype, csv_path.parent / f"speedup_{dtype}.png"))
        out.append(plot_patterns(df, dtype, csv_path.parent / f"patterns_{dtype}.png"))
        out.append(plot_tflops(df, dtype, csv_path.parent / f"tflops_{dtype}.png"))
        if has_timing(df[df.dtype == dtype], "_graph"):
            out.append(plot_tflops(df, dtype, csv_path.parent / f"tflops_graph_{dtype}.png", "_graph"))
    return out


def plot_comparison(df: pd.DataFrame, dtype: str, head_dim: int, path: Path) -> Path:
    """Useful TFLOP/s of each backend on every GPU: colour = backend, line style = GPU."""
    df = df[(df.dtype == dtype) & (df.D == head_dim)]
    gpus = sorted(set(df.gpu))
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D")
    fig, axes = _grid(len(PATTERNS), len(PASSES), width=5.5, height=3.8)
    for r, pattern in enumerate(PATTERNS):
        for c, (p, pass_name) in enumerate(PASSES):
            ax = axes[r][c]
            for g, gpu in enumerate(gpus):
                sub = df[(df.gpu == gpu) & ((df.pattern == pattern) | (df.backend == DENSE_BACKEND))]
                for backend in _backends(sub):
                    line = sub[sub.backend == backend].groupby("px")[f"{p}_tflops"].max()
                    ax.plot(line.index, line.values, color=COLORS.get(backend), ls=styles[g % len(styles)],
                            marker=markers[g % len(markers)], label=f"{gpu} {backend}")
            ax.set_xticks(sorted(set(df.px)))
            ax.set_xlabel("px")
            ax.set_ylabel("useful TFLOP/s")
            ax.set_title(f"{PATTERN_TITLES[pattern]}, {pass_name}", fontsize=9)
    axes[0][-1].legend(fontsize=6, ncol=max(1, len(gpus)))
    return _save(fig, path, f"GPUs compared: useful TFLOP/s, {dtype}, D={head_dim} (colour: backend, line style: GPU; "
                            f"black: dense FlashAttention)")


def headline(df: pd.DataFrame, dtype: str = "bf16", head_dim: int = 64) -> pd.DataFrame:
    """Per GPU, schedule and pattern: our fastest backend, its times and useful TFLOP/s, its speed-up over the
    fastest anchor (sdpa / flex / varlen), and the dense FlashAttention rate; from an idle GPU and, where the
    rows have them, from CUDA-graph replays ("graph" columns)."""
    df = df[(df.dtype == dtype) & (df.D == head_dim)]
    timings = [t for t in TIMINGS if has_timing(df, t)]
    rows = []
    for (gpu, px, pattern), sub in df[df.backend != DENSE_BACKEND].groupby(["gpu", "px", "pattern"]):
        dense = df[(df.gpu == gpu) & (df.px == px) & (df.backend == DENSE_BACKEND)]
        row = {"GPU": gpu, "px": px, "pattern": pattern}
        for (p, name), timing in ((p, t) for t in timings for p in (("fwd", "fwd"), ("fwdbwd", "fwd+bwd"))):
            label, ms, tflops = f"{name}{timing.replace('_', ' ')}", f"{p}{timing}_ms", f"{p}{timing}_tflops"
            timed = sub.dropna(subset=[ms])
            ours = timed[timed.backend.isin(OUR_BACKENDS)].sort_values(ms).head(1)
            anchors = timed[timed.backend.isin(ANCHOR_BACKENDS)].sort_values(ms).head(1)
            if len(ours):
                row[f"{label}: ours"] = (f"{ours.backend.iloc[0]} {ours[ms].iloc[0]:.3f} ms, "
                                         f"{ours[tflops].iloc[0]:.0f} TF/s")
            if len(ours) and len(anchors):
                row[f"{label}: vs best anchor"] = (f"{anchors[ms].iloc[0] / ours[ms].iloc[0]:.2f}× "
                                                   f"{anchors.backend.iloc[0]}")
        if len(dense):
            row["dense FA TF/s fwd, fwd+bwd"] = f"{dense.fwd_tflops.iloc[0]:.0f}, {dense.fwdbwd_tflops.iloc[0]:.0f}"
        rows.append(row)
    order = {p: i for i, p in enumerate(PATTERNS)}
    rows.sort(key=lambda r: (r["GPU"], r["px"], order.get(r["pattern"], len(order))))
    return pd.DataFrame(rows)


def provenance(df: pd.DataFrame) -> str:
    """One line per GPU folder: device, library versions, commits and dates of its rows."""
    lines = []
    for gpu, sub in df.groupby("gpu"):
        parts = [", ".join(sorted(set(sub[c].dropna().astype(str)))) for c in ("device", "torch", "triton", "commit",
                                                                                 "date")]
        lines.append(f"* {gpu}: {parts[0]}; torch {parts[1]}, triton {parts[2]}; commit {parts[3]}; {parts[4]}")
    return "\n".join(lines)


def markdown(df: pd.DataFrame) -> str:
    """A GitHub table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    if df.empty:
        return "(no rows)"
    cells = [[str(c) for c in df.columns]] + [["–" if pd.isna(v) else str(v) for v in row]
                                             for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(r) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def update_readme(readme: Path, text: str) -> bool:
    """Replace what lies between the headline markers of ``readme``; False (untouched) when they are missing."""
    if not readme.exists():
        return False
    content = readme.read_text()
    if HEADLINE_BEGIN not in content or HEADLINE_END not in content:
        return False
    head, rest = content.split(HEADLINE_BEGIN, 1)
    _, tail = rest.split(HEADLINE_END, 1)
    readme.write_text(f"{head}{HEADLINE_BEGIN}\n{text}\n{HEADLINE_END}{tail}")
    return True


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="hmar-plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=Path("results"),
                        help="folder holding <gpu>/attention.csv (default: results)")
    parser.add_argument("--gpus", nargs="+", help="only these <gpu> folders (default: all with an attention.csv)")
    parser.add_argument("--dtype", default="bf16", help="dtype of the comparison figure and headline table")
    parser.add_argument("--head-dim", type=int, default=64, help="head dim of the comparison and headline")
    parser.add_argument("--readme", type=Path, default=None,
                        help="file whose headline markers get the table (default: <results>/README.md)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    paths = sorted(args.results.glob("*/attention.csv"))
    if args.gpus:
        paths = [p for p in paths if p.parent.name in args.gpus]
    if not paths:
        sys.exit(f"hmar-plot: no <gpu>/attention.csv under {args.results}")
    for path in paths:
        for figure in plot_gpu(path):
            print(f"wrote {figure}")
    df = load(paths)
    comparison = plot_comparison(df, args.dtype, args.head_dim,
                                 args.results / f"comparison_{args.dtype}_d{args.head_dim}.png")
    print(f"wrote {comparison}")
    table = headline(df, args.dtype, args.head_dim)
    text = (f"Useful TFLOP/s and speed-ups, {args.dtype}, D={args.head_dim}, from "
            f"{', '.join(str(p) for p in paths)}:\n\n{provenance(df)}\n\n{markdown(table)}")
    readme = args.readme or args.results / "README.md"
    if update_readme(readme, text):
        print(f"updated the headline table in {readme}")
    print(text)


if __name__ == "__main__":
    main()
