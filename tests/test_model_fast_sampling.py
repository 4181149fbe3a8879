"""The sampler with the compiled decoder (``CompiledDecoding``): the same tokens as the eager sampler, images
within the decoder dtype's rounding of the eager decoder's; the compiled blocks (``CompiledInference``): greedy
tokens equal the reference loop's, one block graph whatever the depth, scale, batch or pass; on the GPU, Inductor
and the captured loop."""
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


class CountingRuns:
    """A torch.compile backend that counts the graphs it is given and the times they run (as traced)."""

    def __init__(self):
        self.graphs = self.runs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1

        def run(*args):
            self.runs += 1
            return gm.forward(*args)
        return run


REFINING = [[1], [1, 3], [2, 3, 4], [4, 12]]  # refinement passes at scales 1, 2 (two) and 3


@pytest.mark.parametrize("depth", [2, 5])
def test_compiled_inference_compiles_the_block_once_for_every_depth_scale_batch_and_pass(depth):
    """Regional compilation: two block graphs (Dynamo specialises the one-token first scale) for depth 2 and 5
    alike, over three batch sizes and both passes; every block of every pass runs compiled; the model itself still
    runs eagerly; greedy tokens equal the reference loop's."""
    from hmar_model.sampling import CompiledInference

    torch._dynamo.reset()  # earlier wrappers' entries for call_block must not count here
    torch.manual_seed(depth)
    vqvae = tiny_vqvae()
    model = randomize_(tiny_transformer("hmar", depth=depth, n_layers_train=1, drop_path_rate=0.2), seed=depth,
                       std=0.1).eval()
    assert len({block.drop_path_rate for block in model.modules() if hasattr(block, "drop_path_rate")}) > 1
    backend = CountingRuns()
    fast = CompiledInference(model, compile_backend=backend)
    passes = len(REFINING) + sum(len(counts) - 1 for counts in REFINING)  # next-scale passes + refinement passes
    for calls, labels in enumerate(([1, 2, 3], [4], [5, 6]), start=1):
        kw = dict(labels=labels, cfg=1.5, top_k=1, top_p=0.0, seed=calls, mask_schedule=REFINING,
                  return_indices=True)
        _, idx = hm.sample(fast, vqvae, **kw)
        _, want = hm.sample(model, vqvae, reference=True, **kw)  # eager: runs no compiled graph
        assert all(torch.equal(a, b) for a, b in zip(idx, want)), labels
        assert backend.graphs == 2, f"{backend.graphs} block graphs (a recompile per depth, scale, batch or pass?)"
        assert backend.runs == calls * passes * depth, (backend.runs, calls, passes, depth)
