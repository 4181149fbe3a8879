"""Build flags and sources of the CUDA extension (csrc/), shared by setup.py, the JIT path and CI.

Importable on its own (setup.py loads it by path; no package-relative imports, no torch at import time).

CUTLASS/CuTe headers come from the ``nvidia-cutlass`` wheel (``cutlass_library/source/include``); set
HMAR_CUTLASS_INCLUDE to use another checkout. The sm80 instantiations are compiled by ``sm80_objects`` (their own
arch flags) and linked in. Dev builds: HMAR_CUDA_DEV_BUILD="hdim64,bf16,cfg0" (any subset)
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

# The sm90 kernels (wgmma, setmaxnreg, TMA) are built for sm_90a only. Any flag containing "arch" also stops
# torch.utils.cpp_extension from adding its own (plain sm_90) -gencode, which would reject wgmma.
ARCH_FLAGS = ["-gencode=arch=compute_90a,code=sm_90a"]
# The sm80 kernels (mma.sync, cp.async; csrc/instantiations/*_sm80.cu) run on A100-class GPUs and on Hopper: sm_80
# SASS does not run on sm_90, so the same compute_80 code is assembled for both, plus its PTX for later GPUs.
ARCH_FLAGS_SM80 = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_80,code=sm_90",
                   "-gencode=arch=compute_80,code=compute_80"]
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
    """The translation units torch's build compiles (with ARCH_FLAGS): the bindings, the C++ APIs and dispatchers,
    the sm90 kernel instantiations. The sm80 instantiations need other arch flags: ``sm80_objects``."""
    kernels = sorted(glob.glob(str(CSRC / "instantiations" / "*.cu")))
    return sorted(glob.glob(str(CSRC / "*.cpp"))) + [s for s in kernels if not s.endswith("_sm80.cu")]


def sm80_sources() -> list[str]:
    """The sm80 kernel instantiations (torch-free CUDA): compiled by ``sm80_objects`` with ARCH_FLAGS_SM80."""
    return sorted(glob.glob(str(CSRC / "instantiations" / "*_sm80.cu")))


def sm80_nvcc_command(nvcc: str, source: str, obj: str, defines: list[str]) -> list[str]:
    """The nvcc command line of one sm80 instantiation (position-independent, for the extension's shared object;
    the TMA driver-call switch dropped: no TMA on this path)."""
    flags = [f for f in NVCC_FLAGS if f != "-DCUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL"]
    return [nvcc, "-std=c++17", *flags, *ARCH_FLAGS_SM80, "--threads=3", *defines, "-Xcompiler", "-fPIC", f"-I{CSRC}",
            f"-I{cutlass_include()}", "-c", source, "-o", obj]


def sm80_objects(build_dir: str, nvcc: str, jobs: int | None = None) -> list[str]:
    """Compile the sm80 instantiations (MAX_JOBS parallel nvcc; skipped when an object for the same source,
    headers and flags exists) into build_dir; their object paths, which the extension links in. torch's
    extension build has one set of nvcc flags for all .cu files, hence this step."""
    import concurrent.futures
    import hashlib
    import subprocess

    defines = dev_build_defines()
    headers = hashlib.sha256()
    for header in sorted(glob.glob(str(CSRC / "*.h*"))):
        headers.update(Path(header).read_bytes())
    os.makedirs(build_dir, exist_ok=True)

    def compile_one(source: str) -> str:
        key = hashlib.sha256(headers.digest() + Path(source).read_bytes() +
                             " ".join(sm80_nvcc_command(nvcc, source, "", defines)).encode()).hexdigest()[:16]
        obj = os.path.join(build_dir, f"{Path(source).stem}-{key}.o")
        if not os.path.exists(obj):
            partial = f"{obj}.{os.getpid()}.tmp.o"  # per process: concurrent builds never share one
            result = subprocess.run(sm80_nvcc_command(nvcc, source, partial, defines), capture_output=True,
                                    text=True)
            if result.returncode != 0:
                raise RuntimeError(f"nvcc failed on {source}:\n{result.stdout}{result.stderr}")
            os.replace(partial, obj)  # atomic: an interrupted build leaves no truncated object
        return obj

    jobs = jobs or int(os.environ.get("MAX_JOBS", "0")) or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(compile_one, sm80_sources()))


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

    from torch.utils.cpp_extension import CUDA_HOME, _get_build_directory

    kwargs = extension_kwargs()
    objects = sm80_objects(os.path.join(_get_build_directory(JIT_NAME, verbose), "sm80"),
                           os.path.join(CUDA_HOME, "bin", "nvcc"))
    return load(name=JIT_NAME, sources=sources(), extra_include_paths=kwargs["include_dirs"],
                extra_cflags=kwargs["extra_compile_args"]["cxx"],
                extra_cuda_cflags=kwargs["extra_compile_args"]["nvcc"], extra_ldflags=objects, verbose=verbose)
