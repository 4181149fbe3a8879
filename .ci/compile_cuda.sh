#!/usr/bin/env bash
# CPU-only CI for the CUDA kernels (no GPU, no linking of device code):
#   1. csrc/instantiations/ match csrc/generate_kernels.py;
#   2. every kernel translation unit compiles with nvcc for sm_90a against the nvidia-cutlass wheel's headers
#      (-Xptxas -v report kept in the log: registers, spills, stack);
#   3. cuobjdump (from Triton's wheel) finds HGMMA (wgmma) in every kernel TU; spills stay under SPILL_LIMIT;
#   4. the torch-free dispatcher and the torch binding compile (host compiler, CPU torch headers);
#   5. csrc/tests/layout_check.cu (CuTe register-layout assumptions) builds and runs on the host;
#   6. the sm80 path: a representative subset of its instantiations (SM80_TUS; SM80_TUS=all for the 8) compiles for
#      sm_80, cuobjdump finds HMMA (mma.sync) in each, no spills over SPILL_LIMIT; its dispatchers and the
#      standalone check binding compile; csrc/tests/layout_check_sm80.cu builds and runs.
# The backward's 28 TUs take 30-110 s each: CI compiles a representative pair, BWD_TUS (both dtypes, both head dims,
# the bulk-dQ and the deterministic overlapped configs, the split dQ, the transposed operand views); BWD_TUS=all
# compiles every one (the split dQ at D = 128, configs 1, 3, 5, spills 32-60 bytes, around SPILL_LIMIT).
# Exits non-zero on the first failure. Usage: .ci/compile_cuda.sh [build dir, default build/ci-cuda]
# Runtime on 2 cores: about 6 minutes (JOBS=2 parallel nvcc; each instantiation takes 60-90 s).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/ci-cuda}
JOBS=${JOBS:-$(nproc)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
NVCC=${NVCC:-nvcc}
CUTLASS=$($PY -c "import importlib.util, os; s = importlib.util.find_spec('cutlass_library'); \
print(os.path.join(list(s.submodule_search_locations)[0], 'source', 'include'))")
TRITON_BIN=$($PY -c "import importlib.util, os; s = importlib.util.find_spec('triton'); \
print(os.path.join(list(s.submodule_search_locations)[0], 'backends', 'nvidia', 'bin'))")
CUOBJDUMP=${CUOBJDUMP:-$TRITON_BIN/cuobjdump}
[ -f "$CUTLASS/cute/tensor.hpp" ] || { echo "CuTe headers not found under $CUTLASS (pip install nvidia-cutlass)"; exit 1; }
[ -x "$CUOBJDUMP" ] || { echo "cuobjdump not found at $CUOBJDUMP"; exit 1; }
echo "nvcc: $($NVCC --version | tail -1); cutlass: $CUTLASS; jobs: $JOBS"

$PY csrc/generate_kernels.py --check
echo "instantiations up to date"

# Same device flags as hmar_kernels/_build.py (the extension build), minus torch's.
FLAGS=$($PY -c "import importlib.util as u; s = u.spec_from_file_location('b', 'hmar_kernels/_build.py'); \
b = u.module_from_spec(s); s.loader.exec_module(b); print(' '.join(b.NVCC_FLAGS + b.ARCH_FLAGS))")
compile_one() {
    local src=$1 name
    name=$(basename "$src" .cu)
    if ! $NVCC -std=c++17 $FLAGS -Xptxas -v -I"$CUTLASS" -Icsrc -c "$src" -o "$OUT/$name.o" \
        > "$OUT/$name.log" 2>&1; then
        cat "$OUT/$name.log"; echo "FAILED: $src"; return 1
    fi
    "$CUOBJDUMP" -sass "$OUT/$name.o" > "$OUT/$name.sass"
    local hgmma spills lmem
    hgmma=$(grep -c "HGMMA" "$OUT/$name.sass" || true)
    lmem=$(grep -cE "\b(LDL|STL)\b" "$OUT/$name.sass" || true)
    # the largest of the TU's kernels (a backward TU also holds its pre/postprocess kernels)
    spills=$(grep -oE "[0-9]+ bytes spill stores" "$OUT/$name.log" | sort -n | tail -1)
    echo "$name: $(grep -oE 'Used [0-9]+ registers' "$OUT/$name.log" | sort -k2 -n | tail -1), $spills, HGMMA x$hgmma, LDL/STL x$lmem"
    if [ "$hgmma" -eq 0 ]; then echo "FAILED: no HGMMA in $name (wgmma not emitted)"; return 1; fi
    # A few spilled registers outside the main loop (3-warpgroup tiles run at 160 registers) are tolerated;
    # a register array sent to local memory is not.
    local spilled
    spilled=$(grep -oE "[0-9]+ bytes spill stores" "$OUT/$name.log" | sort -n | tail -1 | grep -oE "^[0-9]+")
    if [ "${spilled:-0}" -gt "${SPILL_LIMIT:-32}" ]; then
        echo "FAILED: $name spills $spilled bytes (> SPILL_LIMIT=${SPILL_LIMIT:-32})"; return 1
    fi
}
export -f compile_one
export NVCC FLAGS CUTLASS OUT CUOBJDUMP
start=$(date +%s)
BWD_TUS=${BWD_TUS:-"bwd_hdim64_bf16_cfg5_sm90 bwd_hdim128_fp16_cfg4_sm90"}
if [ "$BWD_TUS" = all ]; then
    bwd_files=$(ls csrc/instantiations/bwd_*.cu)
else
    bwd_files=$(for name in $BWD_TUS; do echo "csrc/instantiations/$name.cu"; done)
fi
{ ls csrc/instantiations/fwd_*_sm90.cu; echo "$bwd_files"; } | xargs -P "$JOBS" -I{} bash -c 'compile_one {}'
echo "kernels compiled in $(( $(date +%s) - start )) s"

g++ -std=c++17 -fsyntax-only -I"$CUTLASS" -Icsrc -I"$(dirname "$(dirname "$(command -v $NVCC)")")/include" \
    -I/usr/local/cuda/include csrc/fwd_dispatch.cpp
g++ -std=c++17 -fsyntax-only -w -I"$CUTLASS" -Icsrc -I"$(dirname "$(dirname "$(command -v $NVCC)")")/include" \
    -I/usr/local/cuda/include csrc/bwd_dispatch.cpp
TORCH_INC=$($PY -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
PY_INC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
for unit in api api_bwd native_attention bindings; do
    g++ -std=c++20 -fsyntax-only -w -DTORCH_EXTENSION_NAME=_C $TORCH_INC -I"$PY_INC" -I/usr/local/cuda/include \
        -Icsrc csrc/$unit.cpp &
done
wait_all() { local failed=0; for job in $(jobs -p); do wait "$job" || failed=1; done; return $failed; }
wait_all || { echo "FAILED: a torch-side C++ file does not compile"; exit 1; }
g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror -I/usr/local/cuda/include -Icsrc csrc/triton_launch.cpp
echo "fwd_dispatch.cpp, bwd_dispatch.cpp, api.cpp, api_bwd.cpp, native_attention.cpp, bindings.cpp and triton_launch.cpp compile"

$NVCC -std=c++17 --expt-relaxed-constexpr -I"$CUTLASS" csrc/tests/layout_check.cu -o "$OUT/layout_check"
"$OUT/layout_check"

# sm80 path. Each instantiation takes 2-4 minutes on 2 cores: CI compiles the bf16 D=64 forward and backward (the
# same templates as the other six, which differ only in element type and head dim).
# Same command line as the extension build (hmar_kernels/_build.py's sm80_nvcc_command: sm_80 and sm_90 SASS, PTX).
FLAGS_SM80=$($PY -c "import importlib.util as u; s = u.spec_from_file_location('b', 'hmar_kernels/_build.py'); \
b = u.module_from_spec(s); s.loader.exec_module(b); print(' '.join(b.sm80_nvcc_command('', '', '', [])[2:-6]))")
compile_sm80() {
    local src=$1 name
    name=$(basename "$src" .cu)
    if ! $NVCC -std=c++17 $FLAGS_SM80 -Xptxas -v -I"$CUTLASS" -Icsrc -c "$src" -o "$OUT/$name.o" \
        > "$OUT/$name.log" 2>&1; then
        cat "$OUT/$name.log"; echo "FAILED: $src"; return 1
    fi
    "$CUOBJDUMP" -sass "$OUT/$name.o" > "$OUT/$name.sass"
    local hmma spilled
    hmma=$(grep -c "HMMA" "$OUT/$name.sass" || true)
    spilled=$(grep -oE "[0-9]+ bytes spill stores" "$OUT/$name.log" | sort -n | tail -1 | grep -oE "^[0-9]+")
    echo "$name: $(grep -oE 'Used [0-9]+ registers' "$OUT/$name.log" | sort -k2 -n | tail -1), ${spilled:-0} bytes spilled, HMMA x$hmma"
    if [ "$hmma" -eq 0 ]; then echo "FAILED: no HMMA in $name (mma.sync not emitted)"; return 1; fi
    if [ "${spilled:-0}" -gt "${SPILL_LIMIT:-32}" ]; then
        echo "FAILED: $name spills $spilled bytes (> SPILL_LIMIT=${SPILL_LIMIT:-32})"; return 1
    fi
}
export -f compile_sm80
export FLAGS_SM80
if [ "${SM80_TUS:-subset}" = all ]; then
    SM80_SOURCES=$(ls csrc/instantiations/*_sm80.cu)
else
    SM80_SOURCES="csrc/instantiations/fwd_hdim64_bf16_sm80.cu csrc/instantiations/bwd_hdim64_bf16_sm80.cu"
fi
t=$(date +%s)
echo $SM80_SOURCES | tr ' ' '\n' | xargs -P "$JOBS" -I{} bash -c 'compile_sm80 {}'
echo "sm80 kernels compiled in $(( $(date +%s) - t )) s"
for f in csrc/fwd_dispatch_sm80.cpp csrc/bwd_dispatch_sm80.cpp; do
    g++ -std=c++17 -fsyntax-only -w -I"$CUTLASS" -Icsrc -I/usr/local/cuda/include "$f"
done
echo "sm80 dispatchers compile"
$NVCC -std=c++17 --expt-relaxed-constexpr -I"$CUTLASS" -Icsrc csrc/tests/layout_check_sm80.cu \
    -o "$OUT/layout_check_sm80"
"$OUT/layout_check_sm80"
echo "compile_cuda: all checks passed in $(( $(date +%s) - start )) s"
