"""What the kernel backends hand to their kernels: fresh outputs, TMA-readable inputs, the current stream."""
import torch

from .options import current_options

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def current_stream(device_index: int) -> int:
    """The raw handle of the current CUDA stream of a device (~1 µs; torch.cuda.current_stream takes ~7)."""
    if _raw_stream is not None:
        return _raw_stream(device_index)
    return torch.cuda.current_stream(device_index).cuda_stream


def new_output(shape, dtype, device) -> torch.Tensor:
    """An uninitialised output, or one filled with NaN under kernel_options(poison_outputs=True) (tests)."""
    if current_options().poison_outputs:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def tma_readable(t: torch.Tensor) -> bool:
    """Whether TMA can read t in place: unit last stride, 16-byte aligned address, strides of 16-byte multiples on
    the other dimensions of size > 1. The rule of csrc/tensor_rules.h, which the extension applies (the Python
    launchers apply this copy; tests/test_tensor_rules.py holds the two together)."""
    size = t.element_size()
    return (t.dim() > 0 and t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and
            all((st * size) % 16 == 0 for n, st in zip(t.shape[:-1], t.stride()[:-1]) if n > 1))


def tma_ready(t: torch.Tensor) -> torch.Tensor:
    """t itself when TMA can read it (tma_readable), else a contiguous copy."""
    if t.is_contiguous() and t.data_ptr() % 16 == 0 and (t.shape[-1] * t.element_size()) % 16 == 0:
        return t  # the common case, fast: a subset of tma_readable
    return t if tma_readable(t) else t.contiguous()
