"""The models compile as one graph with our attention custom op inside: torch.compile(fullgraph=True), no graph
break, no recompile across training steps (fresh inputs of the same shapes), the same loss and gradients as eager.

On the CPU the attention runs through the Triton interpreter ("triton") or plain PyTorch ("reference"). The
"aot_eager" backend traces exactly what Inductor would receive (dynamo graph, AOT autograd with the custom op's
fake implementation) without spending a minute on C++ code generation; the GPU test compiles with Inductor.
"""
import pytest
import torch
import torch._dynamo.testing

from conftest import HAS_CUDA
from hmar_model.tiny import TINY_PATCH_NUMS, randomize_, tiny_transformer

B, L = 2, sum(p * p for p in TINY_PATCH_NUMS)
DEVICE = "cuda" if HAS_CUDA else "cpu"


def step_inputs(seed, kind):
    g = torch.Generator().manual_seed(seed)
    label_B = torch.randint(0, 10, (B,), generator=g)
    x_BLCv = torch.randn(B, L - 1, 8, generator=g)
    inputs = (label_B, x_BLCv)
    if kind == "hmar_mp":
        inputs += (torch.randn(B, L - 1, 8, generator=g), torch.rand(B, L - 1, generator=g) < 0.5)
    return tuple(x.to(DEVICE) for x in inputs)


def loss_and_grads(call, model, inputs, backend):
    """Loss of ``call`` (the model or its compiled wrapper) and the gradients it leaves on ``model``."""
    model.zero_grad(set_to_none=True)
    logits_BLV = call(*inputs, backend=backend)
    loss = logits_BLV.square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind, backend", [("var", "triton"), ("hmar_mp", "reference")])
def test_one_graph_no_recompile_matches_eager(kind, backend):
    # No label dropout / drop path: the compiled and eager steps must draw nothing random to be compared.
    model = randomize_(tiny_transformer(kind, cond_drop_rate=0.0, drop_path_rate=0.0), seed=3).to(DEVICE).train()
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for step in range(2):
        inputs = step_inputs(step, kind)
        loss, grads = loss_and_grads(compiled, model, inputs, backend)
        want_loss, want_grads = loss_and_grads(model, model, inputs, backend)
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
        assert grads.keys() == want_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert counter.frame_count == 1, f"{counter.frame_count} graphs for 2 steps (graph break or recompile)"


def test_training_randomness_compiles_once():
    """Label dropout and drop path draw fresh random numbers every step inside the one graph."""
    model = randomize_(tiny_transformer("hmar_nsp", cond_drop_rate=0.5, drop_path_rate=0.5), seed=4).to(DEVICE).train()
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    losses = [loss_and_grads(compiled, model, step_inputs(0, "hmar_nsp"), "reference")[0] for _ in range(2)]
    assert counter.frame_count == 1
    assert len({float(x) for x in losses}) > 1, "the same inputs gave the same loss: randomness was traced once"
