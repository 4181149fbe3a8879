"""Compile the Triton attention kernels for sm_90 on any machine (no GPU needed) and report registers, spills
(stack bytes) and whether the SASS uses TMA (UTMALDG) and wgmma (HGMMA). The numbers in
hmar_kernels/backends/triton/tuning.py come from here.

    python bench/triton_registers.py [--head-dims 64 128] [--dtype bf16]
"""
import argparse
import inspect
import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget

from hmar_kernels.backends.triton import tuning
from hmar_kernels.backends.triton.bwd import attn_bwd_kernel
from hmar_kernels.backends.triton.fwd import attn_fwd_kernel

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def signature(fn, dtype, head_dim, rows_of, constexprs):
    """Triton signature strings for ``fn``: descriptors get their block rows from ``rows_of(name)``."""
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.startswith("desc_"):
            sig[name] = f"tensordesc<{dtype}[1, 1, {rows_of(name)}, {head_dim}]>"
        elif name in ("Out", "DQ", "DK", "DV"):
            sig[name] = f"*{dtype}"
        elif name in ("Lse", "Delta"):
            sig[name] = "*fp32"
        elif name in ("qk_scale", "softmax_scale"):
            sig[name] = "fp32"
        elif name in ("H", "L"):
            sig[name] = "i32"
        else:
            sig[name] = "*i32"
    return sig


def report(fn, dtype, head_dim, rows_of, constexprs, warps, stages):
    src = triton.compiler.ASTSource(fn=fn, signature=signature(fn, dtype, head_dim, rows_of, constexprs),
                                    constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    path = tempfile.mktemp(suffix=".cubin")
    with open(path, "wb") as f:
        f.write(kernel.asm["cubin"])
    usage = subprocess.run([f"{BIN}/cuobjdump", "-res-usage", path], capture_output=True, text=True).stdout
    sass = subprocess.run([f"{BIN}/cuobjdump", "-sass", path], capture_output=True, text=True).stdout
    os.remove(path)
    fields = dict(f.split(":") for f in next(l for l in usage.splitlines() if "REG:" in l).split() if ":" in f)
    return (f"regs {fields['REG']:>3} stack {fields['STACK']:>4} smem {kernel.metadata.shared:>6} "
            f"{'TMA' if 'UTMALDG' in sass else 'no-TMA'} {'wgmma' if 'HGMMA' in sass else 'no-wgmma'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    args = parser.parse_args()
    for d in args.head_dims:
        for c in tuning.fwd_candidates(d):
            rows = {"desc_q": c.block_m, "desc_o": c.block_m, "desc_k": c.block_n, "desc_v": c.block_n}
            info = report(attn_fwd_kernel, args.dtype, d, rows.get,
                          dict(HEAD_DIM=d, BLOCK_M=c.block_m, BLOCK_N=c.block_n, DOT_PRECISION="tf32"),
                          c.num_warps, c.num_stages)
            print(f"fwd D={d} {c}: {info}", flush=True)
        for c in tuning.bwd_candidates(d):
            rows = {"desc_q": c.block_m, "desc_do": c.block_m, "desc_dq": c.block_m,
                    "desc_k": c.block_n, "desc_v": c.block_n, "desc_dk": c.block_n, "desc_dv": c.block_n}
            info = report(attn_bwd_kernel, args.dtype, d, rows.get,
                          dict(HEAD_DIM=d, BLOCK_M=c.block_m, BLOCK_N=c.block_n, DOT_PRECISION="tf32"),
                          c.num_warps, c.num_stages)
            print(f"bwd D={d} {c}: {info}", flush=True)


if __name__ == "__main__":
    main()
