"""Shared test helpers: device selection, random schedules, and the one tolerance rule.

Without a CUDA device the Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 must be set before
any kernel is defined, hence here). GPU-only tests use the ``gpu`` marker and skip with a reason.
"""
import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the Hugging Face Hub (read at its import)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hmar_kernels.tolerance import error_bound  # noqa: E402

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none found)")

REAL_SCHEDULES = {
    256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
    512: (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
    1024: (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device")


@pytest.fixture(autouse=True)
def fixed_kernel_configs():
    """Tests run the default (first) config of each kernel instead of autotuning every new shape; the
    every-candidate GPU test covers the others."""
    from hmar_kernels import kernel_options

    with kernel_options(autotune=False):
        yield


def random_schedule(rng: np.random.Generator, max_scales: int = 4, max_side: int = 6) -> tuple[int, ...]:
    """Increasing-ish side lengths whose squares are rarely tile multiples (e.g. (1, 3, 4, 6))."""
    count = int(rng.integers(1, max_scales + 1))
    return tuple(int(x) for x in np.sort(rng.integers(1, max_side + 1, size=count)))


def random_pattern(rng: np.random.Generator, num_scales: int) -> np.ndarray:
    """A random S×S boolean matrix with at least one True per row."""
    matrix = rng.random((num_scales, num_scales)) < 0.5
    matrix[np.arange(num_scales), rng.integers(0, num_scales, size=num_scales)] = True
    return matrix


def pattern_bits(matrix) -> tuple[int, ...]:
    """Row bitmasks (the kernels' form) of an S×S boolean matrix."""
    return tuple(int(sum(1 << j for j in np.flatnonzero(row))) for row in np.asarray(matrix))


def pattern_of_kind(rng: np.random.Generator, kind: int, num_scales: int) -> tuple[int, ...]:
    """Row bitmasks of the three pattern kinds in turn: 0 block_diagonal, 1 block_causal, 2 a random matrix."""
    from hmar_kernels.tiles import named_pattern_bits

    if kind % 3 < 2:
        return named_pattern_bits(("block_diagonal", "block_causal")[kind % 3], num_scales)
    return pattern_bits(random_pattern(rng, num_scales))


def check_close(name: str, out: torch.Tensor, golden: torch.Tensor, baseline: torch.Tensor):
    """hmar_kernels.tolerance's rule (kernel error ≤ 2 × baseline error + 2 × rounding noise + an fp32 floor),
    after checking for NaN/inf; the message reports both errors and the bound.

    golden: the reference in float64 on the same (rounded) inputs; baseline: the same reference computed in the
    test dtype.
    """
    assert out.shape == golden.shape, f"{name}: shape {tuple(out.shape)} != {tuple(golden.shape)}"
    finite = torch.isfinite(out)
    assert finite.all(), f"{name}: {int((~finite).sum())} of {out.numel()} values are NaN/inf (unwritten?)"
    check = error_bound(out, golden, baseline)
    assert check.ok, (f"{name}: max error {check.error:.3e} > bound {check.bound:.3e} "
                      f"(baseline error {check.baseline_error:.3e}, rounding {check.rounding:.3e})")
