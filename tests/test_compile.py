"""The custom ops: opcheck, and torch.compile(fullgraph=True) of a small module that calls the attention."""
import pytest
import torch

import hmar_kernels
from conftest import HAS_CUDA
from hmar_kernels import ops
from hmar_kernels.tiles import named_pattern_bits

DEVICE = "cuda" if HAS_CUDA else "cpu"


class TinyAttention(torch.nn.Module):
    """A fused qkv projection feeding the multi-scale attention, as the models do."""

    def __init__(self, width, heads, patch_nums, pattern, backend):
        super().__init__()
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.heads, self.patch_nums, self.pattern, self.backend = heads, patch_nums, pattern, backend

    def forward(self, x_BLC):
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(x_BLC).view(B, L, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = hmar_kernels.attention(q, k, v, self.patch_nums, self.pattern, backend=self.backend)
        return out.transpose(1, 2).reshape(B, L, C)


@pytest.mark.parametrize("backend", ["triton", "reference", "sdpa"])
def test_compile_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    patch_nums = (1, 2, 3)
    module = TinyAttention(64, 2, patch_nums, "block_causal", backend).to(DEVICE)
    x = torch.randn(2, 14, 64, device=DEVICE, requires_grad=True)
    eager = module(x)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    out = compiled(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-5)


def test_opcheck_forward():
    torch.manual_seed(1)
    patch_nums = [1, 2, 3]
    q, k, v = (torch.randn(1, 2, 14, 32, device=DEVICE, requires_grad=True) for _ in range(3))
    torch.library.opcheck(ops.attention_forward, (q, k, v, patch_nums, list(named_pattern_bits("block_diagonal", 3)),
                                                  0.25, "triton"))


def test_eager_function_and_custom_op_agree():
    """Eager calls take ops._EagerAttention, compiled ones the custom op: same kernels, identical results."""
    torch.manual_seed(2)
    patch_nums, bits = (1, 2, 3), named_pattern_bits("block_causal", 3)
    q, k, v = (torch.randn(2, 2, 14, 32, device=DEVICE, requires_grad=True) for _ in range(3))
    dout = torch.randn(2, 2, 14, 32, device=DEVICE)
    eager = ops.attention_op(q, k, v, patch_nums, bits, 0.3, "triton")
    eager_grads = torch.autograd.grad(eager, (q, k, v), dout)
    custom = ops.attention_forward(q, k, v, patch_nums, bits, 0.3, "triton")[0]
    custom_grads = torch.autograd.grad(custom, (q, k, v), dout)
    assert torch.equal(eager, custom)
    for a, b in zip(eager_grads, custom_grads):
        assert torch.equal(a, b)
