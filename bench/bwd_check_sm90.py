"""Standalone GPU check of the sm90a CUDA backward (csrc/bwd_*): build, correctness, determinism, timing.

    MAX_JOBS=16 python bench/bwd_check_sm90.py --out "$OUT" [--small] [--skip-timing]

--small: only the 256 px and random-schedule cases, no 1024 px determinism run and no timing (for
compute-sanitizer: memcheck / racecheck / synccheck).

1. Builds a small extension of its own with torch.utils.cpp_extension.load: csrc/tests/bwd_check_binding.cpp, the
   backward dispatcher and its 28 instantiations (no api.cpp). The CUDA forward (backend "cuda", needed only for
   the timing) JIT-builds at the same time in a subprocess, as a dev build of bf16 / D = 64 / config 0.
2. Checks dQ, dK, dV of every config (csrc/bwd_tile_size.h; 2, 4, 6 are the deterministic ones) against the
   float64 reference gradients (hmar_kernels.reference, autograd) with the project's tolerance rule
   (benchmark.error_bound: error ≤ 2 × the bf16/fp16 reference's error + 2 × rounding), on the three real
   schedules × both patterns, 256 px with a random S×S pattern and a random schedule with a random S×S pattern;
   bf16 and fp16; D = 64 and 128. The kernel gets the reference's O (rounded to the dtype) and LSE; its outputs
   are fresh (an unwritten NaN fails the check).
3. Determinism: each config three times at 1024 px; the deterministic ones must be bit-identical.
4. Timing at 1024 px, bf16, D = 64, B = 4, H = 16, both patterns: the CUDA forward, this backward (each config),
   forward + backward, and the current "cuda" backend's fwd+bwd (Triton backward) for comparison, in useful
   TFLOP/s (CUDA events, medians; hmar_bench.harness.time_cuda).

Prints a compact table and writes it to OUT/bwd_check.log. Exit status 1 if any check fails.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from hmar_kernels import _build  # noqa: E402
from hmar_bench import harness as bm  # noqa: E402
from hmar_kernels.reference import reference_attention  # noqa: E402
from hmar_kernels.tiles import (PATCH_NUMS, launch_order, named_pattern_bits, tile_mask,  # noqa: E402
                                   transpose_bits)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FWD_DEV_BUILD = "hdim64,bf16,cfg0"  # what the timing needs from the CUDA forward


class Log:
    """Print and keep every line for OUT/bwd_check.log."""

    def __init__(self):
        self.lines = []

    def __call__(self, line: str = ""):
        print(line, flush=True)
        self.lines.append(line)


def build_extension(log):
    """Build (or load from TORCH_EXTENSIONS_DIR) the backward's standalone binding; log(str) reports the time."""
    from torch.utils.cpp_extension import load

    csrc = _build.CSRC
    sources = [str(csrc / "tests" / "bwd_check_binding.cpp"), str(csrc / "bwd_dispatch.cpp"),
               str(csrc / "cuda_driver.cpp")] + sorted(str(p) for p in (csrc / "instantiations").glob("bwd_*.cu"))
    start = time.perf_counter()
    ext = load(name="hmar_bwd_check", sources=sources, extra_include_paths=[str(csrc), _build.cutlass_include()],
               extra_cflags=_build.CXX_FLAGS, extra_cuda_cflags=_build.NVCC_FLAGS + _build.ARCH_FLAGS,
               verbose=os.environ.get("HMAR_CUDA_JIT_VERBOSE", "0") == "1")
    log(f"backward extension built/loaded in {time.perf_counter() - start:.0f} s ({len(sources)} sources)")
    return ext


def start_forward_build() -> subprocess.Popen:
    """JIT-build the CUDA forward (dev build) in the background, into the same TORCH_EXTENSIONS_DIR cache."""
    env = dict(os.environ, HMAR_CUDA_JIT="1", HMAR_CUDA_DEV_BUILD=FWD_DEV_BUILD, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    code = "import hmar_kernels.backends.cuda as c; print('forward built:', dict(c.module().built()))"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def bwd_tables(ext, patch_nums, row_bits, batch_heads, head_dim, config, device):
    """(kv tables, q tables, pair programs): TileMask + program table of the transposed pattern (rows = keys) and
    of the forward pattern (rows = queries), with the config's tile shape, and the program table over both (kind 0
    dK/dV, kind 1 dQ, weighted by their GEMMs per visit: 4 and 3)."""
    rows, cols, _ = ext.config_info(head_dim, config)
    kv = tile_mask(patch_nums, transpose_bits(row_bits), rows, cols, device)
    q = tile_mask(patch_nums, row_bits, rows, cols, device)

    def programs(works):
        return torch.from_numpy(launch_order(works, batch_heads)).to(device)

    return ([*kv.kernel_tensors(), programs([kv.visits])], [*q.kernel_tensors(), programs([q.visits])],
            programs([4 * kv.visits, 3 * q.visits]))


def run_bwd(ext, tables, q, k, v, out, dout, lse, scale, config):
    stream = torch.cuda.current_stream(q.device).cuda_stream
    return ext.bwd(q, k, v, out, dout, lse, tables[0], tables[1], tables[2], scale, config, stream)


def reference_grads(q, k, v, dout, patch_nums, row_bits, scale):
    """(out, lse, dq, dk, dv) of the reference in q's dtype, by autograd."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, lse = reference_attention(q, k, v, patch_nums, row_bits, scale)
    out.backward(dout.to(out.dtype))
    return out.detach(), lse.detach(), q.grad, k.grad, v.grad


def random_pattern(num_scales: int, rng: random.Random) -> tuple[int, ...]:
    """Random S×S pattern, every query scale attending at least one key scale (the reference needs one)."""
    bits = []
    for _ in range(num_scales):
        row = rng.getrandbits(num_scales)
        bits.append(row or 1 << rng.randrange(num_scales))
    return tuple(bits)


def correctness_cases(small: bool, rng: random.Random):
    """(name, patch_nums, row_bits, B, H)."""
    cases = []
    for px in (256,) if small else (256, 512, 1024):
        pn = PATCH_NUMS[px]
        b, h = (1, 2) if px == 1024 else (2, 3)
        for pattern in ("block_diagonal", "block_causal"):
            cases.append((f"{px}px {pattern[6:]}", pn, named_pattern_bits(pattern, len(pn)), b, h))
    cases.append(("256px S×S", PATCH_NUMS[256], random_pattern(len(PATCH_NUMS[256]), rng), 2, 3))
    pn = tuple(sorted(rng.sample(range(1, 40), 6)))
    cases.append((f"random {pn} S×S", pn, random_pattern(len(pn), rng), 3, 1))
    return cases


def check_correctness(ext, log: Log, small: bool, device) -> bool:
    rng = random.Random(0)
    ok = True
    log(f"{'case':<34} {'dt':<4} {'D':>3} {'cfg':<3} {'dq err/bound':>15} {'dk err/bound':>15} "
        f"{'dv err/bound':>15}  result")
    for name, pn, bits, b, h in correctness_cases(small, rng):
        L = sum(p * p for p in pn)
        for dname, dtype in DTYPES.items():
            for head_dim in (64, 128):
                gen = torch.Generator(device=device).manual_seed(rng.getrandbits(31))
                q, k, v, dout = (torch.randn(b, h, L, head_dim, device=device, generator=gen).to(dtype)
                                 for _ in range(4))
                scale = head_dim ** -0.5
                out64, lse64, *golden = reference_grads(q.double(), k.double(), v.double(), dout.double(), pn, bits,
                                                        scale)
                _, _, *baseline = reference_grads(q, k, v, dout, pn, bits, scale)
                out, lse = out64.to(dtype), lse64.float().contiguous()
                for config in range(ext.num_configs):
                    tables = bwd_tables(ext, pn, bits, b * h, head_dim, config, device)
                    grads = run_bwd(ext, tables, q, k, v, out, dout, lse, scale, config)
                    torch.cuda.synchronize()
                    cells, passed = [], True
                    for got, gold, base in zip(grads, golden, baseline):
                        error, bound = bm.error_bound(got, gold, base)
                        passed &= error <= bound
                        cells.append(f"{error:.1e}/{bound:.1e}")
                    ok &= passed
                    log(f"{name:<34} {dname:<4} {head_dim:>3} {config:<3} {cells[0]:>15} {cells[1]:>15} "
                        f"{cells[2]:>15}  {'ok' if passed else 'FAIL'}")
    return ok


def check_determinism(ext, log: Log, device) -> bool:
    pn, bits = PATCH_NUMS[1024], named_pattern_bits("block_causal", len(PATCH_NUMS[1024]))
    b, h, head_dim, L = 2, 4, 64, sum(p * p for p in PATCH_NUMS[1024])
    gen = torch.Generator(device=device).manual_seed(1)
    q, k, v, out, dout = (torch.randn(b, h, L, head_dim, device=device, generator=gen, dtype=torch.bfloat16)
                          for _ in range(5))
    lse = torch.randn(b, h, L, device=device, generator=gen) + 6.0
    ok = True
    for config in range(ext.num_configs):
        deterministic = ext.config_info(head_dim, config)[2]
        tables = bwd_tables(ext, pn, bits, b * h, head_dim, config, device)
        runs = [run_bwd(ext, tables, q, k, v, out, dout, lse, head_dim ** -0.5, config) for _ in range(3)]
        same = all(torch.equal(x, y) for run in runs[1:] for x, y in zip(runs[0], run))
        mode = "deterministic" if deterministic else "atomic"
        log(f"determinism, 1024px causal bf16 D=64, config {config} ({mode}): 3 runs "
            f"{'bit-identical' if same else 'differ'}{'' if same or not deterministic else '  FAIL'}")
        if deterministic:
            ok &= same
    return ok


def timing(ext, log: Log, device, forward_build: subprocess.Popen):
    output, _ = forward_build.communicate()
    log(output.strip().splitlines()[-1] if output.strip() else "forward build: no output")
    if forward_build.returncode != 0:
        log(f"forward build failed (rc {forward_build.returncode}); timing skipped:\n{output[-3000:]}")
        return False
    os.environ["HMAR_CUDA_JIT"] = "1"
    os.environ["HMAR_CUDA_DEV_BUILD"] = FWD_DEV_BUILD
    import hmar_kernels
    from hmar_kernels.backends import cuda

    pn = PATCH_NUMS[1024]
    b, h, head_dim, L = 4, 16, 64, sum(p * p for p in pn)
    scale = head_dim ** -0.5
    log(f"timing: 1024 px, bf16, D={head_dim}, B={b}, H={h}; ms (useful TFLOP/s), medians of CUDA-event timings")
    log(f"{'pattern':<10} {'what':<36} {'ms':>8} {'TFLOP/s':>8}")
    for pattern in ("block_diagonal", "block_causal"):
        bits = named_pattern_bits(pattern, len(pn))
        q, k, v, dout = (torch.randn(b, h, L, head_dim, device=device, dtype=torch.bfloat16) for _ in range(4))
        out, lse = cuda.forward(q, k, v, pn, bits, scale)
        fwd_flops = bm.useful_flops(pn, bits, b, h, head_dim)
        total_flops = bm.useful_flops(pn, bits, b, h, head_dim, with_backward=True)
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

        def backend_fwd_bwd(_):
            hmar_kernels.attention(qg, kg, vg, pn, pattern, backend="cuda").backward(dout)

        calls = [("cuda forward", lambda _: cuda.forward(q, k, v, pn, bits, scale), fwd_flops)]
        for config in range(ext.num_configs):
            tables = bwd_tables(ext, pn, bits, b * h, head_dim, config, device)

            def bwd(_, tables=tables, config=config):
                return run_bwd(ext, tables, q, k, v, out, dout, lse, scale, config)

            def fwd_bwd(_, tables=tables, config=config):
                o, s = cuda.forward(q, k, v, pn, bits, scale)
                return run_bwd(ext, tables, q, k, v, o, dout, s, scale, config)

            calls += [(f"bwd config {config}", bwd, total_flops - fwd_flops),
                      (f"fwd + bwd config {config}", fwd_bwd, total_flops)]
        calls.append(("backend cuda fwd+bwd (Triton bwd)", backend_fwd_bwd, total_flops))
        for what, call, flops in calls:
            ms = bm.time_cuda(call).median_ms
            log(f"{pattern[6:]:<10} {what:<36} {ms:>8.3f} {flops / ms / 1e9:>8.0f}")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="directory of the log")
    parser.add_argument("--small", action="store_true",
                        help="256 px and random schedules only; no 1024 px determinism run, no timing")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        raise SystemExit("bwd_check_sm90 needs an sm90 (Hopper) GPU")
    device = torch.device("cuda")
    log = Log()
    start = time.perf_counter()
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    forward_build = None if args.skip_timing or args.small else start_forward_build()
    ok = False
    try:
        ext = build_extension(log)
        ok = check_correctness(ext, log, args.small, device)
        if not args.small:
            ok &= check_determinism(ext, log, device)
        if forward_build is not None:
            timing(ext, log, device, forward_build)
    finally:
        if forward_build is not None and forward_build.poll() is None:
            forward_build.kill()
        log(f"{'ALL CHECKS PASSED' if ok else 'SOME CHECKS FAILED'} in {time.perf_counter() - start:.0f} s")
        args.out.mkdir(parents=True, exist_ok=True)
        tmp = args.out / "bwd_check.log.tmp"
        tmp.write_text("\n".join(log.lines) + "\n")
        tmp.replace(args.out / "bwd_check.log")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
