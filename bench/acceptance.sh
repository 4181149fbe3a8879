#!/usr/bin/env bash
# GPU checks of the kernel layer in one command, on any CUDA machine, from the repository root:
#
#   bash bench/acceptance.sh                      # build test overhead bench (the default stages)
#   bash bench/acceptance.sh build smoke sanitize # any stages, in the order given
#   TREES="old ." bash bench/acceptance.sh overhead bench   # the same stages in two source trees, one after the
#                                                           # other (before/after a change, on one machine)
#
# A tree is any directory holding a checkout, e.g. the commit before a change, unpacked next to this one:
#   mkdir -p old && git archive <commit> | tar -x -C old
# Needs: a CUDA torch, triton, pytest, pandas, and the CUTLASS headers for the CUDA extension
# (pip install nvidia-cutlass==4.2.0.0). Without an installed build of hmar_kernels._C the extension is compiled
# on first use (HMAR_CUDA_JIT=1, about a minute on 16 cores, cached in TORCH_EXTENSIONS_DIR).
#
# PYTHON picks the interpreter (default python3).
# Stages (each bounded by its share of BUDGET seconds, default 570; logs go to $OUT, default ./acceptance-out):
#   build     import (JIT-building if needed) the CUDA extension; "$PY" -m hmar_kernels says what can run
#   smoke     bench/cuda_sanitize.py: small CUDA-forward cases against float64
#   test      the kernel layer's GPU tests: CUDA graphs, the C++ autograd path, Triton, CUDA forward, compile,
#             hmar-bench's graph column
#   kernels   the CUDA backends' tests: sm90 backward, sm80 path, CUDA forward, CUDA graphs, the C++ autograd path
#   overhead  bench/call_overhead.py at 256 px: host and wall time of one fwd+bwd per path
#   bench     hmar-bench rows at 256 and 1024 px (bf16, D = 64; every backend, or BENCH_BACKENDS; BENCH_BUDGET s,
#             default 170)
#             → $OUT/<tree>/results/
#   models    the model stack's GPU tests: compiled/fused/graphed training step, hmar-train, the sampler, hmar-eval
#   e2e       hmar-bench --e2e-only: training steps (E2E_CONFIGS, default d16-256) and the sampling rows
#             (E2E_SAMPLING=0: training rows only)
#             → $OUT/<tree>/results/<gpu>/e2e.csv
#   sampler   bench/fast_sampler_gpu.py: hmar-eval generate's default path (d16, 256 px) and the sample rows
#             → $OUT/<tree>/sampler/
#   cudafwd   bench/cuda_fwd.py: the CUDA forward's tile configs and schedulers → $OUT/<tree>/cuda_fwd.csv
#   sanitize  compute-sanitizer memcheck, racecheck and synccheck on small cases of our kernels only
#             (bench/cuda_sanitize.py): the sm90 forward, the sm90 backward (every built config) and the sm80
#             forward+backward; SANITIZE_TARGETS picks some (default "fwd_sm90 bwd_sm90 sm80"), SANITIZE_TOOLS
#             some tools (default "memcheck racecheck synccheck"), SANITIZE_SECONDS bounds each run (default 90);
#             a reported error fails the run with rc=3 (--error-exitcode 3), a wrong
#             result with rc=1, a run cut short with rc=124
# Exit code: 0 when every stage that ran passed.
set -uo pipefail
START=$(date +%s)
BUDGET=${BUDGET:-570}
OUT=$(realpath -m "${OUT:-acceptance-out}")
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
PY=${PYTHON:-python3}  # the interpreter with torch
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(build test overhead bench)
FAILED=0

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# seconds a stage may take: what it asks for, or what is left of the budget
limit() { local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo $(( l > 5 ? l - 5 : 1 )); }
# run NAME SECONDS COMMAND...: COMMAND's output to $OUT/$TREE_NAME/NAME.log, its result to the summary
run() {
    local name=$1 seconds=$2 t rc
    shift 2
    t=$(date +%s)
    timeout "$(limit "$seconds")" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    log "$TREE_NAME $name: rc=$rc in $(( $(date +%s) - t )) s: $(tail -1 "$LOGS/$name.log")"
    [ $rc -eq 0 ] || FAILED=1
    return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    > "$OUT/summary.txt" 2>&1
ROOT=$PWD
CALLER_COMMIT=${HMAR_GIT_COMMIT:-}
CALLER_PYTHONPATH=${PYTHONPATH:-}  # kept behind each tree (e.g. packages installed with pip --target)
for TREE in ${TREES:-.}; do
    cd "$ROOT/$TREE" || { log "no tree $TREE"; FAILED=1; continue; }
    TREE_NAME=$(basename "$(realpath "$TREE")")
    [ "$TREE" = "." ] && TREE_NAME=this
    LOGS=$OUT/$TREE_NAME
    mkdir -p "$LOGS"
    # rows name their tree: its name, or for "." the caller's HMAR_GIT_COMMIT (a copied checkout's git may be stale)
    COMMIT=$TREE_NAME
    [ "$TREE" = "." ] && COMMIT=${CALLER_COMMIT:-this}
    export PYTHONPATH=$PWD:$PWD/bench${CALLER_PYTHONPATH:+:$CALLER_PYTHONPATH} HMAR_GIT_COMMIT=$COMMIT
    "$PY" -c "import hmar_kernels._C" 2>/dev/null || export HMAR_CUDA_JIT=1
    # hmar-bench's module: hmar_bench.cli, or hmar_model.cli.bench in trees from before the bench package
    BENCH_CLI=hmar_bench.cli
    [ -d bench/hmar_bench ] || BENCH_CLI=hmar_model.cli.bench
    for stage in "${STAGES[@]}"; do
        case $stage in
        build)
            run build 420 "$PY" -c "
import torch, hmar_kernels
from hmar_kernels.api import _cuda_problem
problem = _cuda_problem(torch.device('cuda', 0), torch.bfloat16, 64)
print(problem or 'backend cuda: ok')
try:
    print(_cuda_problem(torch.device('cuda', 0), torch.bfloat16, 64, arch=80) or 'backend cuda_sm80: ok')
except TypeError:  # trees from before the sm80 backend
    pass
raise SystemExit(1 if problem else 0)"
            [ -f hmar_kernels/__main__.py ] && "$PY" -m hmar_kernels >> "$LOGS/build.log" 2>&1
            ;;
        smoke) run smoke 120 "$PY" bench/cuda_sanitize.py ;;
        test)
            tests=$(ls tests/test_graphs.py tests/test_native.py tests/test_triton_gpu.py tests/test_cuda_fwd.py \
                tests/test_compile.py tests/test_api_errors.py tests/test_options.py tests/test_bench_graphs.py \
                2>/dev/null)
            run test 360 "$PY" -m pytest -q -p no:cacheprovider -rfs $tests
            ;;
        kernels)
            tests=$(ls tests/test_cuda_bwd.py tests/test_cuda_sm80.py tests/test_graphs.py tests/test_native.py \
                tests/test_cuda_fwd.py 2>/dev/null)
            run kernels 360 "$PY" -m pytest -q -p no:cacheprovider -rfs --durations=10 $tests
            ;;
        overhead) run overhead 120 "$PY" bench/call_overhead.py --px 256 ;;
        bench)
            run bench 300 "$PY" -m "$BENCH_CLI" --px 256 1024 --dtypes bf16 --head-dims 64 --no-plots \
                --time-budget "${BENCH_BUDGET:-170}" --results "$LOGS/results" ${BENCH_BACKENDS:+--backends $BENCH_BACKENDS}
            ;;
        models)
            tests=$(ls tests/test_model_fast_gpu.py tests/test_train_gpu.py tests/test_fast_sampling_defaults.py \
                tests/test_model_fast_sampling.py tests/test_model_gpu.py tests/test_eval_gpu.py 2>/dev/null)
            run models 600 "$PY" -m pytest -q -p no:cacheprovider -rfs --durations=10 $tests
            ;;
        e2e)
            run e2e 600 "$PY" -m "$BENCH_CLI" --e2e-only --e2e-configs ${E2E_CONFIGS:-d16-256} --no-plots \
                $([ "${E2E_SAMPLING:-1}" = 0 ] && echo --e2e-no-sampling) \
                --results "$LOGS/results"
            ;;
        sampler) run sampler 300 "$PY" bench/fast_sampler_gpu.py --out "$LOGS/sampler" ;;
        cudafwd) run cudafwd 200 "$PY" bench/cuda_fwd.py --out "$LOGS/cuda_fwd.csv" ;;
        sanitize)
            # only the target's kernels are instrumented (kns: kernel-name substring); torch's kernels run plain
            declare -A KERNELS=([fwd_sm90]=fwd_kernel_sm90 [bwd_sm90]=bwd_ [sm80]=_sm80)
            for target in ${SANITIZE_TARGETS:-fwd_sm90 bwd_sm90 sm80}; do
                if [ -z "${KERNELS[$target]:-}" ]; then
                    log "unknown sanitize target $target (targets: fwd_sm90 bwd_sm90 sm80)"; FAILED=1; continue
                fi
                for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do
                    run "sanitize_${tool}_$target" "${SANITIZE_SECONDS:-90}" compute-sanitizer --tool $tool \
                        --kernel-name "kns=${KERNELS[$target]}" --error-exitcode 3 --print-limit 20 \
                        "$PY" bench/cuda_sanitize.py "$target"
                done
            done
            ;;
        *) log "unknown stage $stage (stages: build smoke test kernels overhead bench models e2e sampler cudafwd sanitize)"; FAILED=1 ;;
        esac
    done
done
cd "$ROOT"
echo "=== summary ($OUT) ==="
cat "$OUT/summary.txt"
exit $FAILED
