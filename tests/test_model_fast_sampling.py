"""The sampler with the compiled decoder (``CompiledDecoding``): the same tokens as the eager sampler, images
within the decoder dtype's rounding of the eager decoder's; on the GPU, Inductor and the captured loop."""
import pytest
import torch

import hmar_model as hm
from conftest import requires_cuda
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae
from hmar_model.vqvae import CompiledDecoding


def models(device="cpu"):
    torch.manual_seed(0)
    vqvae = tiny_vqvae(device=device)
    return randomize_(tiny_transformer("hmar", device=device), seed=1, std=0.1).eval(), vqvae


def test_compiled_decoding_same_tokens_close_images_chunks():
    model, vqvae = models()
    fast = CompiledDecoding(vqvae, dtype=torch.float32, compile_backend="aot_eager")
    kw = dict(labels=[1, 2, 3], cfg=1.5, top_k=20, top_p=0.9, seed=4, return_indices=True)
    want_img, want_idx = hm.sample(model, vqvae, **kw)
    img, idx = hm.sample(model, fast, **kw)
    assert all(torch.equal(a, b) for a, b in zip(idx, want_idx))
    torch.testing.assert_close(img, want_img, rtol=1e-5, atol=1e-5)
    f_hat = torch.randn(3, 8, 4, 4)
    chunked = fast.fhat_to_img(f_hat, chunk=2)  # batches 2 and 1
    assert chunked.shape == (3, 3, 16, 16)
    torch.testing.assert_close(chunked, vqvae.fhat_to_img(f_hat), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="dtype must be"):
        CompiledDecoding(vqvae, dtype=torch.int8)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("kind", ["var", "hmar"])
def test_gpu_fast_sampler_same_tokens_as_reference(kind):
    """Captured loop + Inductor-compiled bf16 decoder against the plain loop and eager decoder: same tokens."""
    torch.manual_seed(0)
    vqvae = tiny_vqvae(device="cuda")
    model = randomize_(tiny_transformer(kind, device="cuda"), seed=1, std=0.1).eval()
    fast = CompiledDecoding(vqvae)
    kw = dict(labels=[1, 2, 3, 4], cfg=1.5, top_k=20, top_p=0.9, dtype=torch.bfloat16, return_indices=True)
    for seed in range(3):  # eager warm-up, capture, replay
        want_img, want_idx = hm.sample(model, vqvae, seed=seed, reference=True, **kw)
        img, idx = hm.sample(model, fast, seed=seed, cuda_graphs=True, **kw)
        assert all(torch.equal(a, b) for a, b in zip(idx, want_idx)), seed
        with torch.no_grad():
            golden = vqvae.indices_to_img(want_idx).float().add(1).mul(0.5)  # fp32 eager decoder, same tokens
        err, eager_err = ((x.float() - golden).abs().mean() for x in (img, want_img))
        assert err <= 2 * eager_err + torch.finfo(torch.bfloat16).eps, (err, eager_err)


@pytest.mark.parametrize("kind", ["hmar", "var"])
def test_compiled_inference_greedy_tokens_equal_the_reference_loop(kind):
    """Greedy (top_k = 1) sampling through the compiled passes draws the reference loop's tokens, refinement
    included; VAR passes through."""
    from hmar_model.sampling import CompiledInference

    torch.manual_seed(0)
    vqvae = tiny_vqvae()
    model = randomize_(tiny_transformer(kind), seed=2, std=0.1).eval()
    fast = CompiledInference(model, compile_backend="aot_eager")
    assert hasattr(fast, "mask_logits") == (kind == "hmar")
    kw = dict(labels=[1, 2, 3], cfg=1.5, top_k=1, top_p=0.0, seed=5, return_indices=True)
    want_img, want_idx = hm.sample(model, vqvae, reference=True, **kw)
    img, idx = hm.sample(fast, vqvae, **kw)
    assert all(torch.equal(a, b) for a, b in zip(idx, want_idx))
    torch.testing.assert_close(img, want_img)
