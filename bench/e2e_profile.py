"""Where one VAR / HMAR training step's time goes, per attention backend: step time, then the top CUDA kernels and
CPU ops of a torch.profiler trace (GPU only).

    python bench/e2e_profile.py [--kind var] [--px 256] [--backends auto sdpa] [--top 12]
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from hmar_bench import harness as bm
from hmar_bench.cli import train_step_call


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", default="var", choices=("var", "hmar"))
    parser.add_argument("--px", type=int, default=256)
    parser.add_argument("--backends", nargs="+", default=["auto", "sdpa"])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for backend in args.backends:
        call = train_step_call(args.kind, bm.SCHEDULES[args.px], 4, args.depth, torch.bfloat16, backend, "cuda")
        timing = bm.time_cuda(call, warmup=3, reps=10)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                call(i)
            torch.cuda.synchronize()
        print(f"== {args.kind} {args.px} px d{args.depth} B=4 bf16, backend {backend}: step {timing.median_ms:.2f} ms")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=60))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=60))


if __name__ == "__main__":
    main()
