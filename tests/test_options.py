"""Kernel options: per call or per block, per thread; a backward runs with its forward's options; and
``python -m hmar_kernels`` reports the backends."""
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from hmar_kernels import KernelOptions, attention, current_options, kernel_options
from hmar_kernels.backends.triton import host as launch

ROOT = Path(__file__).resolve().parent.parent


# The recording hooks sit on the Python launch path, which runs CPU tensors under Triton's interpreter; on a CUDA
# machine the kernels go through the C++ plan instead (tests/test_native.py checks that path's options).
python_path_only = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                      reason="records the Python launch path on CPU tensors (TRITON_INTERPRET=1)")


def _recording(monkeypatch):
    seen = {}
    forward, backward = launch.run_forward, launch.run_backward

    def recording_forward(*args):
        seen["forward"] = current_options()
        return forward(*args)

    def recording_backward(*args):
        seen["backward"] = current_options()
        return backward(*args)

    monkeypatch.setattr(launch, "run_forward", recording_forward)
    monkeypatch.setattr(launch, "run_backward", recording_backward)
    return seen


@python_path_only
def test_per_call_options_reach_forward_and_backward(monkeypatch):
    seen = _recording(monkeypatch)
    options = KernelOptions(poison_outputs=True, autotune=False)
    q, k, v = (torch.randn(1, 2, 14, 16, requires_grad=True) for _ in range(3))
    out = attention(q, k, v, (1, 2, 3), backend="triton", options=options)
    assert current_options() != options  # only for that call
    out.sum().backward()  # the autograd engine may run it on another thread
    assert seen["forward"] == options and seen["backward"] == options  # equal: plans are cached by value


@python_path_only
def test_block_options_hold_for_the_backward_outside_the_block(monkeypatch):
    seen = _recording(monkeypatch)
    q, k, v = (torch.randn(1, 2, 14, 16, requires_grad=True) for _ in range(3))
    with kernel_options(poison_outputs=True) as options:
        out = attention(q, k, v, (1, 2, 3), backend="triton")
    out.sum().backward()
    assert seen["backward"] == options


def test_kernel_options_are_per_thread():
    seen = []
    with kernel_options(cuda_scheduler="static"):
        thread = threading.Thread(target=lambda: seen.append(current_options().cuda_scheduler))
        thread.start()
        thread.join()
        assert current_options().cuda_scheduler == "static"
    assert seen == ["dynamic"]


def test_module_main_reports_every_backend():
    result = subprocess.run([sys.executable, "-m", "hmar_kernels"], capture_output=True, text=True, cwd=ROOT,
                            check=True)
    lines = result.stdout.splitlines()
    assert any(line.startswith("CUDA extension: ") for line in lines), result.stdout
    for backend in ("cuda", "triton", "reference", "sdpa", "flex", "varlen"):
        assert any(line.split()[:1] == [backend] for line in lines), f"{backend} missing:\n{result.stdout}"
    if not torch.cuda.is_available():
        assert "needs CUDA tensors" in result.stdout
