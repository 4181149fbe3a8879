"""Fused operations of the VAR / HMAR training step and sampler (Triton kernels registered as torch.library
custom ops with fake implementations, and chunked PyTorch formulations), each with a plain reference.

    from hmar_kernels.fused import qk_norm, linear_cross_entropy
"""
from .linear_ce import linear_cross_entropy
from .qk_norm_op import qk_norm, qk_norm_reference

__all__ = ["linear_cross_entropy", "qk_norm", "qk_norm_reference"]
