"""Build flags and sources of the CUDA extension (csrc/), shared by setup.py, the JIT path and CI.

Importable on its own (setup.py loads it by path; no package-relative imports, no torch at import time).

CUTLASS/CuTe headers come from the ``nvidia-cutlass`` wheel (``cutlass_library/source/include``); set
HMAR_CUTLASS_INCLUDE to use another checkout. Dev builds: HMAR_CUDA_DEV_BUILD="hdim64,bf16,cfg0" (any subset)
drops the other head dims / fp16 / alternative tile configs from the build (the generated instantiation files
compile to nothing and the dispatcher drops the same cases; ``hmar_kernels._C.built()`` reports what is in).
"""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
JIT_NAME = "hmar_kernels_cuda"

# sm_90a only for now (wgmma, setmaxnreg); part 2 adds sm_80 sources. Any flag containing "arch" also stops
# torch.utils.cpp_extension from adding its own (plain sm_90) -gencode, which would reject wgmma.
ARCH_FLAGS = ["-gencode=arch=compute_90a,code=sm_90a"]
NVCC_FLAGS = [
    "-O3",
    "--use_fast_math",  # exp2f → MUFU.EX2, approximate reciprocal and log in the epilogue
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "-DNDEBUG",
    # torch disables these half/bf16 operators for extensions; CUTLASS's numeric types rely on them.
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__",
    "-lineinfo",
    # cuTensorMapEncodeTiled resolved once (csrc/cuda_driver.cpp) instead of a driver lookup per TMA descriptor
    "-DCUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL",
    "--ftemplate-backtrace-limit=0",
]
CXX_FLAGS = ["-O3", "-DNDEBUG"]

DEV_BUILD_DEFINES = {"hdim64": "-DHMAR_NO_HDIM128", "bf16": "-DHMAR_NO_FP16", "cfg0": "-DHMAR_NO_ALT_CONFIGS"}


def cutlass_include() -> str:
    """Directory holding cute/ and cutlass/ headers."""
    override = os.environ.get("HMAR_CUTLASS_INCLUDE")
    candidates = [Path(override)] if override else []
    spec = importlib.util.find_spec("cutlass_library")  # finds the wheel without importing it
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "source" / "include" for p in spec.submodule_search_locations]
    for path in candidates:
        if (path / "cute" / "tensor.hpp").is_file():
            return str(path)
    raise RuntimeError("CUTLASS/CuTe headers not found: `pip install nvidia-cutlass==4.2.0.0` (its wheel ships "
                       "cutlass_library/source/include) or set HMAR_CUTLASS_INCLUDE=<cutlass>/include")


def dev_build_defines() -> list[str]:
    """-D flags of HMAR_CUDA_DEV_BUILD (e.g. "hdim64,bf16")."""
    wanted = [w.strip() for w in os.environ.get("HMAR_CUDA_DEV_BUILD", "").split(",") if w.strip()]
    unknown = sorted(set(wanted) - set(DEV_BUILD_DEFINES))
    if unknown:
        raise ValueError(f"HMAR_CUDA_DEV_BUILD has unknown entries {unknown}; known: {sorted(DEV_BUILD_DEFINES)}")
    return [DEV_BUILD_DEFINES[w] for w in wanted]


def sources() -> list[str]:
    """Every translation unit of the extension: the binding, the dispatcher, the kernel instantiations."""
    return sorted(glob.glob(str(CSRC / "*.cpp"))) + sorted(glob.glob(str(CSRC / "instantiations" / "*.cu")))


def extension_kwargs() -> dict:
    """Keyword arguments of torch.utils.cpp_extension.CUDAExtension for hmar_kernels._C (setup.py)."""
    defines = dev_build_defines()
    return dict(
        include_dirs=[str(CSRC), cutlass_include()],
        extra_compile_args={"cxx": CXX_FLAGS + defines, "nvcc": NVCC_FLAGS + ARCH_FLAGS + defines},
    )


def load_jit(verbose: bool = False):
    """Compile (once; cached by torch in TORCH_EXTENSIONS_DIR, rebuilt when a source changes) and import the
    extension with torch.utils.cpp_extension.load: for machines where pip cannot build it."""
    from torch.utils.cpp_extension import load

    kwargs = extension_kwargs()
    return load(name=JIT_NAME, sources=sources(), extra_include_paths=kwargs["include_dirs"],
                extra_cflags=kwargs["extra_compile_args"]["cxx"],
                extra_cuda_cflags=kwargs["extra_compile_args"]["nvcc"], verbose=verbose)
