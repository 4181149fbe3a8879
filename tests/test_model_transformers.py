"""Transformer numerics in float64 on tiny random models: the AdaLN block against the spec's formula, VAR's
training forward against KV-cached inference, HMAR's block-diagonal training forward against stand-alone
per-scale inference (the Markov property), the masked-prediction path, and the sampler's inputs against
teacher forcing."""
import math

import pytest
import torch
import torch.nn.functional as F

from hmar_model.blocks import KVCache, dense_attention
from hmar_model.checkpoints import hmar_to_nsp_mp, nsp_mp_to_hmar
from hmar_model.hmar import HMAR
from hmar_model.sampling import generate
from hmar_model.tiny import TINY_PATCH_NUMS, randomize_, tiny_transformer, tiny_vqvae

B = 3
SCALES = [(0, 1), (1, 5), (5, 14), (14, 30)]


def model(kind, seed):
    return randomize_(tiny_transformer(kind), seed).double().eval()


@pytest.fixture(scope="module")
def quantizer():
    torch.manual_seed(1)
    return tiny_vqvae().double().quantize


def random_inputs(quantizer, seed):
    g = torch.Generator().manual_seed(seed)
    indices = [torch.randint(quantizer.vocab_size, (B, p * p), generator=g) for p in TINY_PATCH_NUMS]
    labels = torch.randint(0, 11, (B,), generator=g)  # 10 = the null class of the tiny config
    return labels, indices


def teacher_sequence(m, labels, x_in):
    """(cond, the embedded teacher-forcing sequence (B, L, C)) as the training forward builds it."""
    cond, lvl_pos = m.class_emb(labels), m.lvl_pos()
    return cond, torch.cat((m.start_tokens(cond, lvl_pos), m.word_tokens(x_in) + lvl_pos[:, 1:]), dim=1)


def spec_block(block, x, cond):
    """AdaLN block written from the spec (§2.3–2.5) with raw weights, dense full attention."""
    C, H = x.shape[-1], block.attn.num_heads
    gamma1, gamma2, scale1, scale2, shift1, shift2 = F.linear(F.silu(cond), block.ada_lin[1].weight,
                                                              block.ada_lin[1].bias).view(-1, 1, 6, C).unbind(2)
    ln = lambda t: F.layer_norm(t, (C,), eps=1e-6)  # noqa: E731
    a = block.attn
    h = ln(x) * (1 + scale1) + shift1
    qkv = h @ a.mat_qkv.weight.T + torch.cat((a.q_bias, torch.zeros_like(a.q_bias), a.v_bias))
    q, k, v = qkv.view(x.shape[0], x.shape[1], 3, H, C // H).permute(2, 0, 3, 1, 4)
    q = q / q.norm(dim=-1, keepdim=True) * torch.exp(torch.clamp(a.scale_mul_1H11, max=math.log(100)))
    k = k / k.norm(dim=-1, keepdim=True)
    att = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    x = x + gamma1 * (att.transpose(1, 2).reshape(x.shape) @ a.proj.weight.T + a.proj.bias)
    h = ln(x) * (1 + scale2) + shift2
    hidden = h @ block.ffn.fc1.weight.T + block.ffn.fc1.bias
    hidden = 0.5 * hidden * (1 + torch.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden ** 3)))
    return x + gamma2 * (hidden @ block.ffn.fc2.weight.T + block.ffn.fc2.bias)


def test_block_matches_spec_formula():
    var = model("var", 0)
    block = var.blocks[1]
    with torch.no_grad():
        block.attn.scale_mul_1H11[0, 0] = 7.0  # above ln 100: must be clamped
    x, cond = torch.randn(B, 9, 32, dtype=torch.float64), torch.randn(B, 32, dtype=torch.float64)
    torch.testing.assert_close(block(x, cond, dense_attention), spec_block(block, x, cond), rtol=0, atol=1e-12)


def test_var_training_forward_equals_kv_cached_inference(quantizer):
    var = model("var", 2)
    labels, indices = random_inputs(quantizer, 3)
    x_in = quantizer.next_scale_inputs(indices)
    train = var(labels, x_in, backend="reference")
    cond, seq = teacher_sequence(var, labels, x_in)
    cache = KVCache(len(var.blocks), seq.shape[1])
    for begin, end in SCALES:
        step = var.next_scale_logits(seq[:, begin:end], cond, cache)
        torch.testing.assert_close(step, train[:, begin:end], rtol=0, atol=1e-10)
    assert cache.lengths == [30] * len(var.blocks)
    # and block-causal really mixes scales: with dense per-scale attention the answer differs
    assert not torch.allclose(var.next_scale_logits(seq[:, 5:14], cond, None), train[:, 5:14], atol=1e-6)


@pytest.mark.parametrize("kind", ["hmar_nsp", "hmar"])
def test_block_diagonal_training_equals_per_scale_inference(quantizer, kind):
    """Markov property: scale k's training logits depend only on scale k's inputs."""
    m = model(kind, 4)
    labels, indices = random_inputs(quantizer, 5)
    x_in = quantizer.next_scale_inputs(indices)
    train = m(labels, x_in, backend="reference")
    cond, seq = teacher_sequence(m, labels, x_in)
    for begin, end in SCALES:
        torch.testing.assert_close(m.next_scale_logits(seq[:, begin:end], cond, m.inference_state()),
                                   train[:, begin:end], rtol=0, atol=1e-10)


def test_composite_equals_its_nsp_and_mp_parts(quantizer):
    """nsp_mp_to_hmar: the composite's next-scale path is the NSP, its mask path the MP (frozen base shared)."""
    nsp, mp = model("hmar_nsp", 6), model("hmar_mp", 7)
    mp_sd = mp.state_dict()
    for key, value in nsp.state_dict().items():  # MP finetuning froze everything but the top blocks and heads
        if key in mp_sd and not key.startswith(("blocks.1.", "blocks.2.", "head")):
            mp_sd[key] = value
    mp_sd["word_embed_bias"] = nsp.state_dict()["word_embed.bias"]
    mp.load_state_dict(mp_sd)
    hmar = HMAR(nsp.cfg).double().eval()
    hmar.load_state_dict(nsp_mp_to_hmar(nsp.state_dict(), mp.state_dict(), n_layers_train=2))
    labels, indices = random_inputs(quantizer, 8)
    x_ctx, x_own = quantizer.next_scale_inputs(indices), quantizer.masked_inputs(indices)
    torch.testing.assert_close(hmar.forward_next_scale(labels, x_ctx, backend="reference"),
                               nsp(labels, x_ctx, backend="reference"), rtol=0, atol=1e-10)
    masked = torch.rand(B, x_ctx.shape[1]) < 0.5
    train = mp(labels, x_ctx, x_own, masked, backend="reference")
    torch.testing.assert_close(hmar.forward_masked(labels, x_ctx, x_own, masked, backend="reference"), train,
                               rtol=0, atol=1e-10)
    # the sampler's mask pass for scale k (built from f̂ of scales < k) equals the training forward's slice
    cond = hmar.class_emb(labels)
    lvl_pos = hmar.lvl_pos()
    f_hat = torch.zeros(B, 8, 4, 4, dtype=torch.float64)
    for si, (p, (begin, end)) in enumerate(zip(TINY_PATCH_NUMS, SCALES)):
        h = quantizer.lookup(indices[si], p)
        if si > 0:
            ctx, own = quantizer.next_mask_input(si, TINY_PATCH_NUMS, f_hat, h)
            tokens = hmar.mask_tokens(ctx.flatten(2).transpose(1, 2), own.flatten(2).transpose(1, 2),
                                      masked[:, begin - 1:end - 1]) + lvl_pos[:, begin:end]
            torch.testing.assert_close(hmar.mask_logits(tokens, cond), train[:, begin:end], rtol=0, atol=1e-10)
        f_hat, _ = quantizer.next_autoregressive_input(si, TINY_PATCH_NUMS, f_hat, h)
    back_nsp, back_mp = hmar_to_nsp_mp(hmar.state_dict())
    assert all(torch.equal(back_nsp[k], v) for k, v in nsp.state_dict().items())
    assert all(torch.equal(back_mp[k], v) for k, v in mp.state_dict().items())


@pytest.mark.parametrize("kind", ["var", "hmar"])
def test_sampler_inputs_equal_teacher_forcing_inputs(quantizer, kind):
    """Forcing the sampler to pick given indices, the tokens it feeds each step are the training inputs."""
    m = model(kind, 9)
    labels, indices = random_inputs(quantizer, 10)
    fed = []
    original = m.next_scale_logits

    def spy(tokens, cond, state):
        fed.append(tokens[:B].clone())
        return original(tokens, cond, state)
    m.next_scale_logits = spy
    f_hat, out = generate(m, quantizer, labels, cfg=1.0, top_k=0, top_p=0.0, generator=torch.Generator(),
                          scale_hook=lambda si, idx, *rest: (indices[si], True))
    _, seq = teacher_sequence(m, labels, quantizer.next_scale_inputs(indices))
    torch.testing.assert_close(torch.cat(fed, dim=1), seq, rtol=0, atol=1e-12)
    torch.testing.assert_close(f_hat, quantizer.indices_to_fhats(indices)[-1], rtol=0, atol=1e-12)


def test_training_forward_is_differentiable_and_drops_labels():
    var = tiny_transformer("var").double().train()
    x_in = torch.randn(B, 29, 8, dtype=torch.float64)
    labels = torch.tensor([1, 2, 3])
    loss = var(labels, x_in, backend="reference").logsumexp(-1).mean()
    loss.backward()
    assert var.blocks[0].attn.mat_qkv.weight.grad.abs().sum() > 0
    assert var.pos_1LC.grad.abs().sum() > 0
    torch.manual_seed(0)
    var.cfg.cond_drop_rate = 1.0  # every label becomes the null class
    var.blocks.eval()
    with torch.no_grad():
        dropped = var(labels, x_in, backend="reference")
        var.eval()
        null = var(torch.full((B,), 10), x_in, backend="reference")
    torch.testing.assert_close(dropped, null, rtol=0, atol=1e-12)
