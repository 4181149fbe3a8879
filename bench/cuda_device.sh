#!/usr/bin/env bash
# One device call (nvidia-h100-x1) for the CUDA forward: install the carried CUTLASS wheel, JIT-build the
# extension, smoke-check, then whichever stages are asked for, each under a share of one time budget.
#
#   run(command="bash bench/cuda_device.sh build smoke bench test sanitize", carry=[".whl"], timeout_s=480)
#
# Stages: smoke (bench/cuda_sanitize.py: 3 small cases vs float64), bench (bench/cuda_fwd.py, BENCH_ARGS),
# test (pytest tests/test_cuda_fwd.py), sanitize (compute-sanitizer memcheck, racecheck, synccheck on the smoke
# cases), hmarbench (hmar-bench rows for backend cuda: fwd, fwd+bwd, memory). A failed smoke runs memcheck on it and stops. Logs and CSVs go to $OUT (at most 8 files come back).
# Here, first: python3 -m pip download --no-deps --only-binary=:all: -d .whl nvidia-cutlass==4.2.0.0
set -uo pipefail
START=$(date +%s)
BUDGET=${BUDGET:-450}
OUT=${OUT:-/tmp/hmar_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HMAR_CUDA_JIT=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_EXTENSIONS_DIR=/tmp/torch_extensions
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD

log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
stage_timeout() { local want=$1 l; l=$(left); [ "$want" -lt "$l" ] && echo "$want" || echo $(( l > 5 ? l - 5 : 1 )); }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
    > "$OUT/summary.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    >> "$OUT/summary.txt"

t=$(date +%s)
timeout "$(stage_timeout 360)" python3 -c "
import hmar_kernels.backends.cuda as c
m = c.module()
print('built', m.built(), 'tile64', m.fwd_tile(64, 0), 'tile128', m.fwd_tile(128, 0))" > "$OUT/build.log" 2>&1
rc=$?
log "build rc=$rc in $(( $(date +%s) - t )) s: $(tail -1 "$OUT/build.log")"
if [ $rc -ne 0 ]; then grep -E "error|Error" "$OUT/build.log" | head -30; exit 1; fi
rm -f "$OUT/build.log"  # at most 8 files come back

for stage in "$@"; do
    t=$(date +%s)
    case $stage in
    build) continue ;;
    smoke)
        timeout "$(stage_timeout 90)" python3 bench/cuda_sanitize.py > "$OUT/smoke.log" 2>&1
        rc=$?
        log "smoke rc=$rc in $(( $(date +%s) - t )) s"
        cat "$OUT/smoke.log"
        if [ $rc -ne 0 ]; then
            timeout "$(stage_timeout 150)" compute-sanitizer --tool memcheck --kernel-name kns=fwd_kernel_sm90 \
                --print-limit 20 python3 bench/cuda_sanitize.py > "$OUT/memcheck.log" 2>&1
            log "memcheck after failed smoke rc=$?"
            head -60 "$OUT/memcheck.log"
            break
        fi
        ;;
    bench)
        timeout "$(stage_timeout 200)" python3 bench/cuda_fwd.py --out "$OUT/cuda_fwd.csv" ${BENCH_ARGS:-} \
            > "$OUT/bench.log" 2>&1
        log "bench rc=$? in $(( $(date +%s) - t )) s"
        ;;
    test)
        timeout "$(stage_timeout 200)" python3 -m pytest -x -q -p no:cacheprovider tests/test_cuda_fwd.py \
            ${TEST_ARGS:-} > "$OUT/pytest.log" 2>&1
        log "pytest rc=$? in $(( $(date +%s) - t )) s: $(tail -1 "$OUT/pytest.log")"
        ;;
    sanitize)
        for tool in memcheck racecheck synccheck; do
            t=$(date +%s)
            # only our kernel is instrumented (kns: kernel-name substring); torch's own kernels run plain
            timeout "$(stage_timeout 120)" compute-sanitizer --tool $tool --kernel-name kns=fwd_kernel_sm90 \
                --print-limit 20 python3 bench/cuda_sanitize.py > "$OUT/sanitize_$tool.tmp" 2>&1
            log "$tool rc=$? in $(( $(date +%s) - t )) s: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|ill-formed|WRONG' \
                "$OUT/sanitize_$tool.tmp" | tr '\n' ' ')"
            { echo "=== $tool"; cat "$OUT/sanitize_$tool.tmp"; } >> "$OUT/sanitize.log"
            rm -f "$OUT/sanitize_$tool.tmp"
        done
        ;;
    hmarbench)  # the project's harness (fwd, fwd+bwd, peak memory, error) for backend cuda
        timeout "$(stage_timeout 150)" python3 -m hmar_bench.cli --backends cuda --dtypes bf16 \
            --head-dims 64 --no-plots --results "$OUT/hb" >> "$OUT/bench.log" 2>&1
        log "hmar-bench rc=$? in $(( $(date +%s) - t )) s"
        ;;
    *) log "unknown stage $stage" ;;
    esac
done
echo "=== bench ==="
grep -vE "^\s*$" "$OUT/bench.log" 2>/dev/null | tail -60
echo "=== summary ==="
cat "$OUT/summary.txt"
