"""One launch plan per key (hmar_kernels/plan.py): built on a key's first call, then reused as it is by the eager
path, the custom op and the backward; another key (options, shape, scale) gets its own plan."""
import torch

from conftest import HAS_CUDA
from hmar_kernels import KernelOptions, attention, kernel_options, ops
from hmar_kernels.options import using_options
from hmar_kernels.plan import _plans, launch_plan
from hmar_kernels.tiles import named_pattern_bits

DEVICE = "cuda" if HAS_CUDA else "cpu"
PN = (1, 2, 3)
BITS = named_pattern_bits("block_causal", 3)


def _inputs(length=14, heads=2):
    return [torch.randn(1, heads, length, 32, device=DEVICE, requires_grad=True) for _ in range(3)]


def test_a_key_builds_its_launches_once_and_every_path_reuses_them():
    options = KernelOptions(autotune=False, poison_outputs=True)
    q, k, v = _inputs()
    out = attention(q, k, v, PN, "block_causal", 0.25, backend="triton", options=options)
    out.sum().backward()
    plan = _plans[("triton", PN, BITS, 0.25, q.shape, q.dtype, q.device, options)]
    launches = (plan.triton_forward, plan.triton_preprocess, plan.triton_backward)
    assert all(launch is not None for launch in launches) and plan.cuda_forward is None
    assert plan.triton_forward.tables.programs == plan.triton_forward.grid[0] > 0

    again = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    attention(*again, PN, "block_causal", 0.25, backend="triton", options=options).sum().backward()
    with torch.no_grad(), using_options(options):
        assert launch_plan("triton", PN, BITS, 0.25, q) is plan
        custom, _ = ops.attention_forward(q, k, v, PN, BITS, 0.25, "triton")
    assert all(a is b for a, b in zip((plan.triton_forward, plan.triton_preprocess, plan.triton_backward), launches))
    assert torch.equal(custom, out.detach())


def test_other_keys_get_other_plans():
    q, k, v = _inputs()
    plan = launch_plan("triton", PN, BITS, 0.25, q)
    assert launch_plan("triton", PN, BITS, 0.25, q.detach()) is plan  # the key holds no tensor
    assert launch_plan("triton", PN, BITS, 0.5, q) is not plan
    assert launch_plan("triton", PN, BITS, 0.25, _inputs(heads=3)[0]) is not plan
    with kernel_options(poison_outputs=True):
        assert launch_plan("triton", PN, BITS, 0.25, q) is not plan


def test_many_plans_warn_once(monkeypatch):
    """Plans are kept for the process's life; a run that builds MANY_PLANS of them is told so, once."""
    from hmar_kernels import notices, plan as plan_module
    monkeypatch.setattr(plan_module, "_plans", {})
    monkeypatch.setattr(plan_module, "MANY_PLANS", 3)
    monkeypatch.setattr(notices, "_said", set())
    q = _inputs()[0]
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for length in (4, 5, 5, 6, 7, 8):  # 5 distinct shapes: the 3rd new one warns, repeats build nothing
            launch_plan("triton", PN, BITS, 0.25, q[:, :, :length])
    messages = [str(w.message) for w in caught if "launch plans built" in str(w.message)]
    assert len(messages) == 1 and "3 launch plans" in messages[0]
    assert len(plan_module._plans) == 5
