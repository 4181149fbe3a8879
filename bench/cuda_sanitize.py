"""Small runs of our CUDA kernels for compute-sanitizer (memcheck, racecheck, synccheck), one target at a time:

    compute-sanitizer --tool memcheck --kernel-name kns=fwd_kernel_sm90 python bench/cuda_sanitize.py fwd_sm90
    compute-sanitizer --tool racecheck --kernel-name kns=bwd_ python bench/cuda_sanitize.py bwd_sm90
    compute-sanitizer --tool synccheck --kernel-name kns=_sm80 python bench/cuda_sanitize.py sm80

Targets (``--kernel-name kns=<substring>`` instruments only the target's kernels; torch's run plain):
  fwd_sm90  the sm90a forward (cuda.forward) over its tile configs and schedulers       kns=fwd_kernel_sm90
  bwd_sm90  forward+backward of backend "cuda": every built backward config on the      kns=bwd_
            smallest case, the default config on the others (preprocess, kernel, postprocess)
  sm80      forward+backward of backend "cuda_sm80" (forward, backward, pre/postprocess) kns=_sm80
Every result is checked against the float64 reference (hmar_kernels.tolerance's rule): the exit status is non-zero
if one is wrong, so a clean sanitizer report also means a correct run. Cases the build lacks (a dev build without
D = 128) are skipped with the reason; a target with no case run fails.
"""
import argparse
import sys

import torch

from hmar_kernels import attention, kernel_options, tolerance
from hmar_kernels.backends import cuda
from hmar_kernels.reference import reference_attention
from hmar_kernels.tiles import bits_to_matrix, named_pattern_bits

SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SMALL = (1, 3, 4, 7, 12)  # L = 219: partial tiles at every scale boundary
SMALL_SXS = (1, 3, 6, 13, 17)  # scale 4 attends two runs: [0, 1) and [75, 219)

FWD_CASES = [  # (patch_nums, pattern, D, config, scheduler)
    (SCHEDULE_256, "block_causal", 64, 0, "dynamic"),
    (SCHEDULE_256, "block_diagonal", 128, 0, "static"),
    (SMALL, SMALL_SXS, 64, 1, "grid"),
    # CTA-wide epilogue (one slab for both warpgroups); row tiles that start inside a scale and overlap the next
    (SCHEDULE_256, "block_diagonal", 64, 2, "dynamic"),
    (SMALL, SMALL_SXS, 128, 2, "static"),
]
FWD_BWD_CASES = [  # (patch_nums, pattern, D, dtype, batch, heads); the first is the smallest
    (SMALL, SMALL_SXS, 64, torch.bfloat16, 1, 2),
    (SCHEDULE_256, "block_causal", 64, torch.bfloat16, 1, 2),
    (SMALL, "block_diagonal", 128, torch.float16, 2, 1),
]


def _bits(pn, pattern) -> tuple[int, ...]:
    return named_pattern_bits(pattern, len(pn)) if isinstance(pattern, str) else pattern


def check_forward(pn, pattern, head_dim, config, scheduler) -> bool:
    row_bits = _bits(pn, pattern)
    length = sum(p * p for p in pn)
    q, k, v = (torch.randn(1, 3, length, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    with kernel_options(cuda_fwd_config=config, cuda_scheduler=scheduler):
        out, lse = cuda.forward(q, k, v, pn, row_bits, head_dim ** -0.5)
    ref, ref_lse = reference_attention(q.double(), k.double(), v.double(), pn, row_bits, head_dim ** -0.5)
    error = (out.double() - ref).abs().max().item()
    lse_error = (lse.double() - ref_lse).abs().max().item()
    ok = error < 2e-2 and lse_error < 1e-3
    print(f"{pn} {pattern} D={head_dim} cfg{config} {scheduler}: max |out - ref| {error:.2e}, "
          f"|lse - ref| {lse_error:.2e} {'ok' if ok else 'WRONG'}", flush=True)
    return ok


def check_forward_backward(backend, pn, pattern, head_dim, dtype, batch, heads, label) -> bool:
    """out, dq, dk, dv of ``backend`` (outputs poisoned first) against the float64 reference."""
    row_bits = _bits(pn, pattern)
    shape = (batch, heads, sum(p * p for p in pn), head_dim)
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=dtype) for _ in range(4))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with kernel_options(poison_outputs=True):
        out = attention(*leaves, pn, bits_to_matrix(row_bits), softmax_scale=head_dim ** -0.5, backend=backend)
        results = (out, *torch.autograd.grad(out, leaves, dout))
    references = {}
    for dt in (torch.float64, dtype):
        inputs = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        ref = reference_attention(*inputs, pn, row_bits, head_dim ** -0.5)[0]
        references[dt] = (ref, *torch.autograd.grad(ref, inputs, dout.to(dt)))
    checks = [tolerance.error_bound(r, g, b) for r, g, b in zip(results, references[torch.float64],
                                                                references[dtype])]
    ok = all(c.ok for c in checks)
    print(f"{backend} {label} {pn} {pattern} D={head_dim} {str(dtype)[6:]}: error/bound (out dq dk dv) "
          + " ".join(f"{c.error / c.bound:.2f}" for c in checks) + (" ok" if ok else " WRONG"), flush=True)
    return ok


def target_cases(target: str):
    """(description, check) pairs of ``target``; check() → True when correct. Cases the build lacks are left out
    with a printed reason."""
    device = torch.device("cuda", 0)
    arch = 80 if target == "sm80" else 90
    backend = "cuda_sm80" if target == "sm80" else "cuda"
    if target == "fwd_sm90":
        cases = [((pn, pattern, d, config, scheduler), torch.bfloat16, d)
                 for pn, pattern, d, config, scheduler in FWD_CASES]
    else:
        cases = [((pn, pattern, d, dtype, batch, heads), dtype, d) for pn, pattern, d, dtype, batch, heads
                 in FWD_BWD_CASES]
    out = []
    for i, (args, dtype, head_dim) in enumerate(cases):
        why = cuda.problem(device, dtype, head_dim, arch)
        if why:
            print(f"skip {args[:3]}: {why}", flush=True)
            continue
        if target == "fwd_sm90":
            if args[3] >= cuda._built()["configs"]:
                print(f"skip {args[:3]}: forward config {args[3]} was not built", flush=True)
                continue
            out.append(lambda args=args: check_forward(*args))
        elif target == "bwd_sm90":
            configs = cuda._built()["bwd_configs"] if i == 0 else [cuda.module().bwd_default_config]
            for config in configs:
                def check(args=args, config=config):
                    with kernel_options(cuda_bwd_config=config):
                        return check_forward_backward(backend, *args, label=f"bwd config {config}")
                out.append(check)
        else:
            out.append(lambda args=args: check_forward_backward(backend, *args, label="fwd+bwd"))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", nargs="?", default="fwd_sm90", choices=("fwd_sm90", "bwd_sm90", "sm80"),
                        help="which kernels to run (default fwd_sm90)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("cuda_sanitize: needs a CUDA device")
    checks = target_cases(args.target)
    if not checks:
        sys.exit(f"cuda_sanitize: no {args.target} case can run here (reasons above)")
    failed = sum(not check() for check in checks)
    torch.cuda.synchronize()
    print(f"{args.target}: {len(checks) - failed} of {len(checks)} cases correct")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
