"""CUDA backend pieces that need no GPU: build flags, generated instantiations, problem() messages, the metadata
tensors handed to the extension."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hmar_kernels import cuda

ROOT = Path(__file__).resolve().parent.parent


def _load_build():
    spec = importlib.util.spec_from_file_location("hmar_kernels_build", ROOT / "hmar_kernels" / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_build_flags_target_sm90a_only_and_find_cutlass():
    build = _load_build()
    kwargs = build.extension_kwargs()
    nvcc = kwargs["extra_compile_args"]["nvcc"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in nvcc
    assert not any(f.startswith("-std") for f in nvcc), "torch chooses the C++ standard"
    assert any((Path(d) / "cute" / "tensor.hpp").is_file() for d in kwargs["include_dirs"])
    sources = [Path(s).name for s in build.sources()]
    assert "api.cpp" in sources and "fwd_dispatch.cpp" in sources
    assert sum(s.startswith("fwd_") and s.endswith("_sm90.cu") for s in sources) == 12
    assert sum(s.startswith("bwd_") and s.endswith("_sm90.cu") for s in sources) == 4 * 7  # (D, dtype) × config


def test_dev_build_switches(monkeypatch):
    build = _load_build()
    monkeypatch.setenv("HMAR_CUDA_DEV_BUILD", "hdim64,bf16")
    assert set(build.dev_build_defines()) == {"-DHMAR_NO_HDIM128", "-DHMAR_NO_FP16"}
    monkeypatch.setenv("HMAR_CUDA_DEV_BUILD", "hdim96")
    with pytest.raises(ValueError, match="hdim96"):
        build.dev_build_defines()


def test_instantiations_are_generated():
    subprocess.run([sys.executable, str(ROOT / "csrc" / "generate_kernels.py"), "--check"], check=True)


def test_problem_names_the_reason_on_cpu():
    assert "CUDA tensors" in cuda.problem(torch.device("cpu"), torch.bfloat16, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without the extension")
def test_problem_says_how_to_build():
    if cuda._extension()[0] is not None:
        pytest.skip("extension is built here")
    message = cuda.problem(torch.device("cuda", 0), torch.bfloat16, 64)
    assert "not built" in message and "HMAR_CUDA_JIT" in message


def test_mask_tensors_follow_the_binding_order():
    """The backends pass the TileMask tensors in the order of ext.fwd's arguments (csrc/api.cpp), and they are the
    contiguous int32 tensors the binding checks."""
    from hmar_kernels.schedule import TileMask, named_pattern_bits, tile_mask

    binding = (ROOT / "csrc" / "api.cpp").read_text()
    names = re.findall(r'py::arg\("(\w+)"\)', binding[binding.index('m.def("fwd"'):])
    assert tuple(names[names.index("lse") + 1:names.index("programs")]) == TileMask.KERNEL_FIELDS
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    mask = tile_mask(pn, named_pattern_bits("block_causal", len(pn)), 128, 128, torch.device("cpu"))
    tensors = mask.kernel_tensors()
    assert all(t.dtype == torch.int32 and t.is_contiguous() for t in tensors)
    assert tensors[0].numel() == tensors[1].numel() == mask.length
