"""The tensor-layout rules in both languages agree: csrc/tensor_rules.h (which the extension applies: the C++ API's
checks, the C++ launcher's tensor maps, the C++ autograd Function's copies) against the Python launchers' copies
(buffers.tma_readable / tma_ready, cached_launch.kernel_strides), on random layouts. The header is compiled on the
host (no CUDA, no torch); the test skips without a C++ compiler."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hmar_kernels.backends.triton.cached_launch import kernel_strides
from hmar_kernels.buffers import tma_readable, tma_ready

ROOT = Path(__file__).resolve().parent.parent
COMPILER = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    """The compiled driver: tensors in, (readable, kernel strides) out."""
    if COMPILER is None:
        pytest.skip("needs a C++ compiler (c++, g++ or clang++) to build csrc/tests/tensor_rules_check.cpp")
    binary = tmp_path_factory.mktemp("rules") / "tensor_rules_check"
    subprocess.run([COMPILER, "-std=c++17", "-O1", str(ROOT / "csrc" / "tests" / "tensor_rules_check.cpp"), "-o",
                    str(binary)], check=True)

    def run(tensors):
        lines = [" ".join(map(str, (t.dim(), t.element_size(), t.data_ptr(), *t.shape, *t.stride())))
                 for t in tensors]
        out = subprocess.run([str(binary)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
        return [(row[0] == 1, row[1:]) for row in (list(map(int, line.split())) for line in out.stdout.splitlines())]
    return run


def _random_layouts(rng, count):
    """(B, H, L, D) views of one buffer: sizes of 1 (whose strides are arbitrary), permuted, padded and offset
    strides, zero strides, misaligned starts."""
    tensors = []
    for _ in range(count):
        dtype = (torch.float16, torch.bfloat16, torch.float32)[rng.integers(3)]
        shape = [int(rng.choice([1, 1, 2, 3, 5])), int(rng.choice([1, 2, 4])), int(rng.choice([1, 7, 16, 30])),
                 int(rng.choice([8, 16, 20, 64]))]
        order = rng.permutation(4) if rng.random() < 0.3 else np.arange(4)
        strides, step = [0] * 4, 1
        for d in reversed(order):
            strides[d] = step
            step *= shape[d] + int(rng.choice([0, 0, 1, 8]))  # padded rows or planes
        for d in range(4):
            if rng.random() < 0.15:
                strides[d] = 0 if rng.random() < 0.5 else int(rng.integers(1, 100))  # broadcast, or anything
        offset = int(rng.choice([0, 0, 0, 1, 4, 8]))
        buffer = torch.empty(offset + sum((n - 1) * st for n, st in zip(shape, strides)) + 1, dtype=dtype)
        tensors.append(buffer.as_strided(shape, strides, offset))
    return tensors


def test_python_and_cpp_rules_agree(rules):
    rng = np.random.default_rng(20261201)
    tensors = _random_layouts(rng, 400)
    results = rules(tensors)
    assert len(results) == len(tensors)
    readable_seen = set()
    for t, (readable, strides) in zip(tensors, results):
        layout = f"shape {tuple(t.shape)}, strides {t.stride()}, {t.dtype}, address % 16 = {t.data_ptr() % 16}"
        assert tma_readable(t) == readable, f"tma_readable differs from tensor_rules.h for {layout}"
        ready = tma_ready(t)
        assert (ready is t) == readable or (ready is t and t.is_contiguous()), f"tma_ready copies wrongly: {layout}"
        assert kernel_strides(t) == strides, f"kernel strides differ from tensor_rules.h for {layout}"
        readable_seen.add(readable)
    assert readable_seen == {True, False}, "the random layouts must cover both outcomes"
