"""Every bad input raises ValueError/TypeError naming the problem; 'auto' says once why it is slow."""
import warnings

import numpy as np
import pytest
import torch

import hmar_kernels.backends.cuda
from hmar_kernels import api, attention, notices
from hmar_model.var import TransformerConfig

PN = (1, 2, 3)  # L = 14


def qkv(length=14, head_dim=16, dtype=torch.float32, device="cpu"):
    return [torch.randn(2, 2, length, head_dim, dtype=dtype, device=device) for _ in range(3)]


@pytest.fixture(autouse=True)
def fresh_plan_cache():
    api._cached_plan.cache_clear()
    yield
    api._cached_plan.cache_clear()


def test_length_mismatch_names_both_lengths():
    with pytest.raises(ValueError, match=r"sums to L = Σ p² = 14 but q has L = 15"):
        attention(*qkv(length=15), PN, backend="reference")


@pytest.mark.parametrize("patch_nums,error,match", [
    ((), ValueError, "empty"),
    ((1, 0, 3), ValueError, "positive"),
    ((1, -2), ValueError, "positive"),
    ((1, 2.0), TypeError, "ints"),
    ((1, True), TypeError, "ints"),
    ("123", TypeError, "sequence"),
    (5, TypeError, "sequence"),
    (tuple([1] * 32), ValueError, "at most 31"),
])
def test_bad_patch_nums(patch_nums, error, match):
    with pytest.raises(error, match=match):
        attention(*qkv(), patch_nums, backend="reference")
    with pytest.raises(error, match=match):  # the models check a schedule with the same rule
        TransformerConfig(depth=1, patch_nums=patch_nums)


def test_patch_nums_as_list_and_array_are_accepted():
    q, k, v = qkv()
    a = attention(q, k, v, [1, 2, 3], backend="reference")
    b = attention(q, k, v, np.array([1, 2, 3]), backend="reference")
    assert torch.equal(a, b)


def test_shape_device_dtype_mismatches():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k has shape"):
        attention(q, k[:, :1], v, PN, backend="reference")
    with pytest.raises(ValueError, match="v has shape"):
        attention(q, k, v[..., :8], PN, backend="reference")
    with pytest.raises(TypeError, match="v has dtype"):
        attention(q, k, v.double(), PN, backend="reference")
    with pytest.raises(ValueError, match="k is on meta"):
        attention(q, k.to("meta"), v, PN, backend="reference")
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, L, D\)"):
        attention(q[0], k[0], v[0], PN, backend="reference")
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        attention(q.numpy(), k, v, PN, backend="reference")
    with pytest.raises(TypeError, match="floating point"):
        attention(*(t.to(torch.int32) for t in (q, k, v)), PN, backend="reference")


@pytest.mark.parametrize("pattern,error,match", [
    ("causal", ValueError, "pattern must be one of"),
    (np.ones((2, 2), bool), ValueError, "must be 3×3"),
    (np.ones((3, 4), bool), ValueError, "must be 3×3"),
    (np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]], bool), ValueError, "row 1 allows no scale"),
    (np.full((3, 3), 0.5), TypeError, "booleans"),
    (np.full((3, 3), 2), ValueError, "booleans"),
    ([[True, False, False], [True, True], [True, True, True]], TypeError, "S×S boolean matrix"),
    (torch.ones(3, 3, dtype=torch.bool, device="meta"), ValueError, "must be on the CPU"),
])
def test_bad_patterns(pattern, error, match):
    with pytest.raises(error, match=match):
        attention(*qkv(), PN, pattern=pattern, backend="reference")


def test_matrix_patterns_in_every_form_agree():
    q, k, v = qkv()
    matrix = [[True, False, False], [True, True, False], [False, True, True]]
    outs = [attention(q, k, v, PN, pattern=p, backend="reference")
            for p in (matrix, np.array(matrix), torch.tensor(matrix), torch.tensor(matrix).int())]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])
    causal = attention(q, k, v, PN, pattern=np.tril(np.ones((3, 3), bool)), backend="reference")
    assert torch.equal(causal, attention(q, k, v, PN, pattern="block_causal", backend="reference"))


@pytest.mark.parametrize("scale,error", [(-1.0, ValueError), (0.0, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), ("0.1", TypeError), (True, TypeError)])
def test_bad_softmax_scale(scale, error):
    with pytest.raises(error, match="softmax_scale"):
        attention(*qkv(), PN, softmax_scale=scale, backend="reference")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        attention(*qkv(), PN, backend="flash")


def test_unsupported_head_dim_on_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors pass the device check everywhere
    with pytest.raises(ValueError, match="head dims"):
        attention(*qkv(head_dim=48), PN, backend="triton")


def test_unsupported_dtype_on_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="dtypes"):
        attention(*qkv(dtype=torch.float64), PN, backend="triton")


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        attention(*qkv(), PN, backend="triton")


@pytest.mark.parametrize("backend", ["cuda", "cuda_sm80"])
def test_cuda_backend_not_available_here_says_why(backend):
    with pytest.raises(ValueError, match=f"backend '{backend}' needs CUDA tensors"):
        attention(*qkv(), PN, backend=backend)


def test_varlen_rejects_other_patterns_and_cpu():
    with pytest.raises(ValueError, match="only pattern='block_diagonal'"):
        attention(*qkv(), PN, pattern="block_causal", backend="varlen")
    with pytest.raises(ValueError, match="needs CUDA bf16/fp16"):
        attention(*qkv(), PN, backend="varlen")


def test_auto_on_cpu_warns_once_and_uses_reference():
    notices._said.clear()
    q, k, v = qkv()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = attention(q, k, v, PN)
        attention(q, k, v, PN)
    messages = [str(w.message) for w in caught if "backend='auto'" in str(w.message)]
    assert len(messages) == 1 and "reference" in messages[0]
    assert torch.equal(out, attention(q, k, v, PN, backend="reference"))


def test_bad_cuda_scheduler_option():
    with pytest.raises(ValueError, match="cuda_scheduler must be one of"):
        with hmar_kernels.kernel_options(cuda_scheduler="round_robin"):
            pass


def test_bad_cuda_backward_options():
    with pytest.raises(ValueError, match="cuda_backward must be one of"):
        hmar_kernels.kernel_options(cuda_backward="cudnn")
    with pytest.raises(TypeError, match="cuda_bwd_config must be an int or None"):
        hmar_kernels.KernelOptions(cuda_bwd_config="4")


def test_validation_does_not_depend_on_the_plan_cache():
    """(1.0, 2.0, 3.0) equals (1, 2, 3) and True equals 1.0 as cache keys; they are refused all the same."""
    q, k, v = qkv()
    attention(q, k, v, (1, 2, 3), softmax_scale=1.0, backend="reference")
    with pytest.raises(TypeError, match="ints"):
        attention(q, k, v, (1.0, 2.0, 3.0), backend="reference")
    with pytest.raises(TypeError, match="softmax_scale"):
        attention(q, k, v, (1, 2, 3), softmax_scale=True, backend="reference")
    attention(q, k, v, (1, 2, 3), pattern=np.eye(3, dtype=bool), backend="reference")
    with pytest.raises(TypeError, match="booleans"):
        attention(q, k, v, (1, 2, 3), pattern=np.eye(3), backend="reference")


def test_zero_head_dim_is_a_value_error():
    with pytest.raises(ValueError, match="D = 0"):
        attention(*qkv(head_dim=0), PN, backend="reference")


@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
def test_meta_tensors_are_a_value_error(backend):
    with pytest.raises(ValueError, match="meta tensors"):
        attention(*qkv(device="meta"), PN, backend=backend)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU interpreter's refusal (with a GPU, bf16 runs there)")
def test_bf16_under_the_cpu_interpreter_is_refused():
    q, k, v = qkv(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="refuses bf16 under TRITON_INTERPRET=1"):
        attention(q, k, v, PN, backend="triton")


def test_options_per_call_must_be_kernel_options():
    with pytest.raises(TypeError, match="KernelOptions"):
        attention(*qkv(), PN, backend="reference", options={"autotune": False})
