"""The fast training path of the models against their eager reference, float64 on tiny random models: the fused
q/k normalisation inside the blocks, ``return_hidden`` + the fused head cross-entropy, per-token loss weights,
every parameter gradient, and ``TrainStep`` stepping the optimizer as a hand-written step does."""
import pytest
import torch

from conftest import HAS_CUDA
from hmar_model.fast_step import TrainStep, weighted_cross_entropy
from hmar_model.tiny import TINY_PATCH_NUMS, randomize_, tiny_transformer

B, L = 3, sum(p * p for p in TINY_PATCH_NUMS)
DEVICE = "cuda" if HAS_CUDA else "cpu"  # the q/k-norm kernel runs on CUDA, or in the CPU interpreter


def batch(kind, seed):
    g = torch.Generator().manual_seed(seed)
    inputs = (torch.randint(0, 11, (B,), generator=g), torch.randn(B, L - 1, 8, generator=g, dtype=torch.float64))
    if kind == "hmar_mp":
        inputs += (torch.randn(B, L - 1, 8, generator=g, dtype=torch.float64), torch.rand(L - 1, generator=g) < 0.4)
    target, weights = torch.randint(0, 64, (B, L), generator=g), torch.rand(L, generator=g, dtype=torch.float64)
    return tuple(x.to(DEVICE) for x in inputs), target.to(DEVICE), weights.to(DEVICE)


def model_of(kind, seed):
    model = randomize_(tiny_transformer(kind, cond_drop_rate=0.0, drop_path_rate=0.0), seed)
    return model.double().to(DEVICE).train()


def loss_and_grads(model, inputs, target, weights, fused):
    model.zero_grad(set_to_none=True)
    loss = weighted_cross_entropy(model, inputs, target, weights, "reference", fused)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["var", "hmar_mp"])  # NSP runs VAR's forward
def test_fused_loss_and_gradients_equal_reference(kind):
    model = model_of(kind, seed=5)
    inputs, target, weights = batch(kind, seed=6)
    loss, grads = loss_and_grads(model, inputs, target, weights, fused=True)
    want_loss, want_grads = loss_and_grads(model, inputs, target, weights, fused=False)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    assert grads.keys() == want_grads.keys() and len(grads) == len(list(model.parameters()))
    for name in grads:
        torch.testing.assert_close(grads[name], want_grads[name], rtol=1e-9, atol=1e-12, msg=name)


def test_return_hidden_and_head_cross_entropy():
    model = model_of("var", seed=7).eval()
    inputs, target, _ = batch("var", seed=8)
    x_BLC, cond_BD = model(*inputs, backend="reference", return_hidden=True)
    assert x_BLC.shape == (B, L, 32) and cond_BD.shape == (B, 32)
    ce_BL = model.head_cross_entropy(x_BLC, cond_BD, target, chunk_rows=5)
    want = torch.nn.functional.cross_entropy(model(*inputs, backend="reference").flatten(0, 1), target.flatten(),
                                             reduction="none").view(B, L)
    torch.testing.assert_close(ce_BL, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="target_BL must be"):
        model.head_cross_entropy(x_BLC, cond_BD, target[:, 1:])


def test_train_step_steps_the_optimizer_like_a_plain_step():
    fast, plain = model_of("hmar_nsp", seed=9), model_of("hmar_nsp", seed=9)
    inputs, target, weights = batch("hmar_nsp", seed=10)
    fast_opt, plain_opt = (torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (fast, plain))
    step = TrainStep(fast, fast_opt, dtype=None, compile=False, fused=True, backend="reference",
                     loss_weights=weights)
    for _ in range(2):
        loss = step(*inputs, target)
        logits = plain(*inputs, backend="reference")
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        want = (ce.view(B, L) * weights).sum(1).mean()
        want.backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
        torch.testing.assert_close(loss, want.detach(), rtol=1e-10, atol=0)
    for (name, p), q in zip(fast.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)
        assert p.grad is None


def test_train_step_bad_arguments():
    model = model_of("var", seed=1)
    with pytest.raises(ValueError, match="loss_weights must be"):
        TrainStep(model, loss_weights=torch.ones(L + 1, device=DEVICE))
    with pytest.raises(TypeError, match="dtype must be"):
        TrainStep(model, dtype=torch.int8)
    with pytest.raises(TypeError, match="TrainStep trains VAR"):
        TrainStep(tiny_transformer("hmar"))
