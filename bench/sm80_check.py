"""Standalone GPU check of the sm80 kernels (csrc/*_sm80.*): build, correctness, timing. One command, no build of
the project's extension: it compiles its own small module (csrc/tests/sm80_check_binding.cpp + the sm80
dispatchers and instantiations) with ``torch.utils.cpp_extension.load``: the sm_80 code, assembled for sm_80 and
for sm_90 (sm_80 machine code does not run on Hopper).

Correctness: the three real schedules (256/512/1024 px) × block-diagonal and block-causal, a random schedule with
a random S×S mask and one with block-causal, for bf16 and fp16 and D = 64 and 128. O, LSE, dQ, dK and dV are
checked against the float64 reference (hmar_kernels.reference) with the tests' tolerance rule
(tests/conftest.py: check_close); outputs are poisoned with NaN first, so an unwritten row fails.

Timing: 1024 px, B = 4, H = 16, D = 64, bf16, useful TFLOP/s (do_bench medians via benchmark.time_steady) of the
sm80 forward and forward + backward next to varlen (FlashAttention-2 through hmar_kernels.attention), block-diagonal;
and the sm80 path on block-causal.

    MAX_JOBS=16 python bench/sm80_check.py --out $OUT      # writes $OUT/sm80_check.log; exit 1 if a check fails
    compute-sanitizer --tool racecheck --kernel-name kns=sm80 python bench/sm80_check.py --quick --out $OUT
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import check_close, pattern_bits, random_pattern  # noqa: E402  (the tests' tolerance rule)
from hmar_kernels import _build  # noqa: E402
from hmar_bench.harness import time_steady, useful_flops  # noqa: E402
from hmar_kernels.reference import reference_attention  # noqa: E402
from hmar_kernels.tiles import PATCH_NUMS, forward_tables, named_pattern_bits, transpose_bits  # noqa: E402

LOG2E = 1.4426950408889634


def build(verbose: bool = False):
    """Compile (cached in TORCH_EXTENSIONS_DIR) and import the standalone sm80 module."""
    from torch.utils.cpp_extension import load

    csrc = ROOT / "csrc"
    sources = [str(csrc / "tests" / "sm80_check_binding.cpp"), str(csrc / "fwd_dispatch_sm80.cpp"),
               str(csrc / "bwd_dispatch_sm80.cpp")] + sorted(glob.glob(str(csrc / "instantiations" / "*_sm80.cu")))
    # The project's nvcc flags minus the TMA driver-call switch (no TMA on this path); an "arch" flag also stops
    # torch from adding its own -gencode. sm_80 SASS does not run on sm_90, so the same sm_80 code (compute_80) is
    # also assembled for sm_90 (Hopper runs it as the A100 would), plus its PTX (_build.ARCH_FLAGS_SM80); nvcc
    # builds the three in parallel threads.
    nvcc = [f for f in _build.NVCC_FLAGS if "DIRECT_CUDA_DRIVER" not in f] + _build.ARCH_FLAGS_SM80 + ["--threads=3"]
    return load(name="hmar_sm80_check", sources=sources, extra_include_paths=[str(csrc), _build.cutlass_include()],
                extra_cflags=["-O3", "-DNDEBUG"], extra_cuda_cflags=nvcc, verbose=verbose)


class Sm80Attention:
    """Forward and backward of the sm80 kernels for one (schedule, pattern, B·H, D), tables built once."""

    def __init__(self, ext, patch_nums, row_bits, batch_heads: int, head_dim: int, device):
        fwd_m, fwd_n, bwd_n, bwd_m = ext.tile_shape(head_dim)
        self.ext = ext
        self.fwd_tables = list(forward_tables(patch_nums, row_bits, fwd_m, fwd_n, batch_heads, device).tensors)
        # dK/dV: rows are keys (bwd_n per CTA), columns queries (bwd_m per step)
        self.bwd_tables = list(forward_tables(patch_nums, transpose_bits(row_bits), bwd_n, bwd_m, batch_heads,
                                              device).tensors)

    def forward(self, q, k, v, scale, out=None, lse=None):
        out = torch.empty_like(q) if out is None else out
        lse = q.new_empty(q.shape[:3], dtype=torch.float32) if lse is None else lse
        self.ext.fwd(q, k, v, out, lse, self.fwd_tables, scale, torch.cuda.current_stream().cuda_stream)
        return out, lse

    def backward(self, q, k, v, out, dout, lse, scale, grads=None):
        dq, dk, dv = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)) if grads is None else grads
        delta = q.new_empty(q.shape[:3], dtype=torch.float32)
        dq_accum = q.new_empty(q.shape, dtype=torch.float32)
        self.ext.bwd(q, k, v, out, dout, lse, dq, dk, dv, delta, dq_accum, self.bwd_tables, scale,
                     torch.cuda.current_stream().cuda_stream)
        return dq, dk, dv


def reference(q, k, v, dout, patch_nums, row_bits, scale, dtype):
    """(out, lse, dq, dk, dv) of the reference in ``dtype`` on the same (rounded) inputs."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out, lse = reference_attention(*leaves, patch_nums, row_bits, scale)
    grads = torch.autograd.grad(out, leaves, dout.to(dtype))
    return (out.detach(), lse.detach(), *grads)


def check_case(ext, name, patch_nums, row_bits, batch, heads, head_dim, dtype, seed) -> list[str]:
    """Failures (empty when every output is within the tolerance rule)."""
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(seed)
    length = sum(p * p for p in patch_nums)
    q, k, v, dout = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype, generator=gen)
                     for _ in range(4))
    scale = head_dim ** -0.5
    attn = Sm80Attention(ext, patch_nums, row_bits, batch * heads, head_dim, device)
    poison = [torch.full_like(q, float("nan")) for _ in range(4)]
    lse = torch.full(q.shape[:3], float("nan"), device=device)
    out, lse = attn.forward(q, k, v, scale, poison[0], lse)
    grads = attn.backward(q, k, v, out, dout, lse, scale, poison[1:])
    torch.cuda.synchronize()
    golden = reference(q, k, v, dout, patch_nums, row_bits, scale, torch.float64)
    baseline = reference(q, k, v, dout, patch_nums, row_bits, scale, dtype)
    failures = []
    for label, got, gold, base in zip(("O", "LSE", "dQ", "dK", "dV"), (out, lse, *grads), golden, baseline):
        try:
            check_close(f"{name} {label}", got, gold, base)
        except AssertionError as error:
            failures.append(str(error))
    return failures


def correctness_cases(rng):
    """(name, patch_nums, row_bits, batch, heads)."""
    cases = []
    for px, patch_nums in PATCH_NUMS.items():
        batch, heads = (1, 2) if px == 1024 else (2, 2)
        for pattern in ("block_diagonal", "block_causal"):
            cases.append((f"{px}px {pattern}", patch_nums, named_pattern_bits(pattern, len(patch_nums)), batch, heads))
    schedule = tuple(int(x) for x in np.sort(rng.integers(1, 41, size=6)))
    cases.append((f"random {schedule} S×S", schedule, pattern_bits(random_pattern(rng, len(schedule))), 2, 3))
    schedule = tuple(int(x) for x in np.sort(rng.integers(1, 25, size=5)))
    cases.append((f"random {schedule} causal", schedule, named_pattern_bits("block_causal", len(schedule)), 2, 3))
    return cases


def timing_rows(ext):
    """Useful TFLOP/s at 1024 px, B=4, H=16, D=64, bf16: sm80 vs varlen (block-diagonal), sm80 block-causal."""
    import hmar_kernels

    device = torch.device("cuda")
    patch_nums = PATCH_NUMS[1024]
    batch, heads, head_dim, dtype = 4, 16, 64, torch.bfloat16
    length = sum(p * p for p in patch_nums)
    q, k, v, dout = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype) for _ in range(4))
    scale = head_dim ** -0.5
    rows = []
    for pattern in ("block_diagonal", "block_causal"):
        row_bits = named_pattern_bits(pattern, len(patch_nums))
        attn = Sm80Attention(ext, patch_nums, row_bits, batch * heads, head_dim, device)
        out, lse = attn.forward(q, k, v, scale)

        def sm80_fwd(_):
            return attn.forward(q, k, v, scale)

        def sm80_fwd_bwd(_):
            o, l = attn.forward(q, k, v, scale)
            return attn.backward(q, k, v, o, dout, l, scale)

        def sm80_bwd(_):
            return attn.backward(q, k, v, out, dout, lse, scale)

        backends = {"sm80": (sm80_fwd, sm80_fwd_bwd, sm80_bwd)}
        if pattern == "block_diagonal":
            qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))

            def varlen_fwd(_):
                with torch.no_grad():
                    return hmar_kernels.attention(q, k, v, patch_nums, pattern, backend="varlen")

            def varlen_fwd_bwd(_):
                o = hmar_kernels.attention(qg, kg, vg, patch_nums, pattern, backend="varlen")
                return torch.autograd.grad(o, (qg, kg, vg), dout)

            backends["varlen"] = (varlen_fwd, varlen_fwd_bwd, None)
        flops = useful_flops(patch_nums, row_bits, batch, heads, head_dim)
        flops_fb = useful_flops(patch_nums, row_bits, batch, heads, head_dim, with_backward=True)
        for backend, (fwd, fwd_bwd, bwd) in backends.items():
            fwd_ms, fb_ms = time_steady(fwd), time_steady(fwd_bwd)
            bwd_ms = time_steady(bwd) if bwd is not None else float("nan")
            rows.append(dict(pattern=pattern, backend=backend, fwd_ms=fwd_ms, fwd_tf=flops / fwd_ms / 1e9,
                             fb_ms=fb_ms, fb_tf=flops_fb / fb_ms / 1e9, bwd_ms=bwd_ms))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")), help="log folder")
    parser.add_argument("--no-timing", action="store_true", help="correctness only")
    parser.add_argument("--quick", action="store_true",
                        help="small cases only (256 px and the random ones), no timing: for compute-sanitizer")
    parser.add_argument("--verbose-build", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("sm80_check: needs a CUDA device (none found)", file=sys.stderr)
        raise SystemExit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "sm80_check.log"
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)
        tmp = log_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(log_path)

    say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, capability {torch.cuda.get_device_capability()}")
    start = time.perf_counter()
    try:
        ext = build(args.verbose_build)
    except Exception as error:  # the compiler's output is in the message: keep its tail in the log
        say(f"build FAILED after {time.perf_counter() - start:.0f} s: {str(error)[-4000:]}")
        raise SystemExit(1)
    say(f"build: {time.perf_counter() - start:.0f} s; tiles (fwd m, n, bwd n, m): D=64 {ext.tile_shape(64)}, "
        f"D=128 {ext.tile_shape(128)}")

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    cases = correctness_cases(rng)
    if args.quick:
        cases = [case for case in cases if not case[0].startswith(("512px", "1024px"))]
    failed = 0
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (64, 128):
            for i, (name, patch_nums, row_bits, batch, heads) in enumerate(cases):
                label = f"{name} {str(dtype)[6:]} D={head_dim}"
                try:
                    failures = check_case(ext, label, patch_nums, row_bits, batch, heads, head_dim, dtype, seed=i)
                except RuntimeError as error:  # a CUDA error leaves the context unusable: stop here
                    say(f"FAIL {label}: {error}")
                    raise SystemExit(1)
                failed += bool(failures)
                say(f"{'ok  ' if not failures else 'FAIL'} {label}")
                for failure in failures:
                    say(f"     {failure}")
    total = 4 * len(cases)
    say(f"correctness: {total - failed}/{total} cases pass (O, LSE, dQ, dK, dV vs float64) in "
        f"{time.perf_counter() - start:.0f} s")

    if not (args.no_timing or args.quick):
        rows = timing_rows(ext)
        say("1024 px, B=4 H=16 D=64 bf16, do_bench medians: ms (useful TFLOP/s)")
        say(f"{'pattern':<15} {'backend':<7} {'fwd':>16} {'fwd+bwd':>16} {'bwd only':>9}")
        for r in rows:
            say(f"{r['pattern']:<15} {r['backend']:<7} {r['fwd_ms']:8.3f} ({r['fwd_tf']:4.0f}) "
                f"{r['fb_ms']:8.3f} ({r['fb_tf']:4.0f}) {r['bwd_ms']:9.3f}")
        diag = {r["backend"]: r for r in rows if r["pattern"] == "block_diagonal"}
        ratio = diag["sm80"]["fb_ms"] / diag["varlen"]["fb_ms"]
        say(f"block-diagonal fwd+bwd sm80 / varlen = {ratio:.2f}x (target <= 1.3x)")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
