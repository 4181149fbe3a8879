"""Checkpoints: strict loading with listed mismatches, official-format files (.pth, .safetensors) through plain
load_state_dict(strict=True), format detection, converters, the VQVAE usage buffer."""
import pytest
import torch

import hmar_model as hm
from hmar_model.checkpoints import (MASK_KEY, dense_mask_buffer, read_safetensors, read_state_dict,
                                    write_safetensors)
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"vqvae": tiny_vqvae(), **{k: randomize_(tiny_transformer(k), i).eval()
                                      for i, k in enumerate(("var", "hmar_nsp", "hmar_mp", "hmar"))}}


def test_mismatched_state_dict_lists_missing_unexpected_and_shapes(models):
    var = models["var"]
    sd = hm.official_state_dict(var)
    del sd["blocks.1.ffn.fc2.bias"], sd["head.weight"]
    sd["blocks.7.attn.q_bias"] = torch.zeros(32)
    sd["pos_1LC"] = torch.zeros(1, 31, 32)
    with pytest.raises(ValueError) as info:
        hm.load_checkpoint(tiny_transformer("var"), sd)
    msg = str(info.value)
    assert "missing keys (2):" in msg and "blocks.1.ffn.fc2.bias" in msg and "head.weight" in msg
    assert "unexpected keys (1):" in msg and "blocks.7.attn.q_bias" in msg
    assert "shape mismatches (1):" in msg and "pos_1LC: checkpoint (1, 31, 32) vs model (1, 30, 32)" in msg


def test_wrong_family_is_named(models):
    with pytest.raises(ValueError, match="looks like a 'hmar' file") as info:
        hm.load_checkpoint(tiny_transformer("var"), hm.official_state_dict(models["hmar"]))
    assert "base_blocks.0.attn.q_bias" in str(info.value)
    sd = hm.official_state_dict(models["var"])
    sd[MASK_KEY] = torch.zeros(1, 1, 29, 29)
    with pytest.raises(ValueError, match=r"attn_bias_for_masking: checkpoint \(1, 1, 29, 29\)"):
        hm.load_checkpoint(tiny_transformer("var"), sd)
    with pytest.raises(RuntimeError, match="attn_bias_for_masking"):  # plain load_state_dict reports it too
        tiny_transformer("var").load_state_dict(sd)


@pytest.mark.parametrize("kind", ["var", "hmar_nsp", "hmar_mp", "hmar"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_official_format_files_load_strictly(models, tmp_path, kind, suffix):
    path = tmp_path / f"model{suffix}"
    hm.save_checkpoint(models[kind], path)
    sd = read_state_dict(path)
    assert MASK_KEY in sd and sd["lvl_1L"].dtype == torch.int64
    fresh = tiny_transformer(kind)
    fresh.load_state_dict(sd, strict=True)  # the plain PyTorch call takes official files unchanged
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), models[kind].state_dict().values()))
    loaded = hm.load_model(path)  # kind read off the keys (VAR vs NSP from the mask buffer)
    assert type(loaded) is type(models[kind])
    assert loaded.cfg.depth == 3 and loaded.cfg.num_classes == 10 and loaded.patch_nums == (1, 2, 3, 4)


def test_mask_buffer_content_matches_family(models):
    causal, diagonal = dense_mask_buffer(models["var"])[0, 0], dense_mask_buffer(models["hmar"])[0, 0]
    assert causal[5, 0] == 0 and causal[4, 5] == -torch.inf  # scale 2 sees scale 0; scale 1 not scale 2
    assert diagonal[5, 0] == -torch.inf and diagonal[6, 5] == 0 and diagonal[5, 4] == -torch.inf
    assert hm.detect_format({k: v for k, v in hm.official_state_dict(models["var"]).items() if k != MASK_KEY}) \
        == "var_or_nsp"
    with pytest.raises(ValueError, match="pass kind='var' or kind='hmar_nsp'"):
        hm.load_model(models["var"].state_dict())


def test_vqvae_file_and_usage_buffer_of_another_schedule(models, tmp_path):
    path = tmp_path / "vae.pth"
    hm.save_checkpoint(models["vqvae"], path)
    vqvae = hm.load_model(path, patch_nums=(1, 2, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(vqvae.state_dict().values(), models["vqvae"].state_dict().values()))
    five = hm.load_model(path, patch_nums=(1, 2, 3, 3, 4))  # a 4-scale file used with 5 scales
    assert five.quantize.ema_vocab_hit_SV.shape == (5, 64)
    bad = read_state_dict(path)
    bad["quantize.embedding.weight"] = torch.zeros(65, 8)
    with pytest.raises(ValueError, match=r"quantize.embedding.weight: checkpoint \(65, 8\) vs model \(64, 8\)"):
        hm.load_checkpoint(tiny_vqvae(), bad)


def test_converters_round_trip(models):
    nsp_sd, mp_sd = hm.hmar_to_nsp_mp(hm.official_state_dict(models["hmar"]))
    hm.load_checkpoint(tiny_transformer("hmar_nsp"), nsp_sd)
    hm.load_checkpoint(tiny_transformer("hmar_mp"), mp_sd)
    back = hm.nsp_mp_to_hmar(nsp_sd, mp_sd, n_layers_train=2)
    assert back.keys() == models["hmar"].state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in models["hmar"].state_dict().items())
    with pytest.warns(UserWarning, match="differ"):  # an MP that was not finetuned from this NSP
        hm.nsp_mp_to_hmar(nsp_sd, models["hmar_mp"].state_dict(), n_layers_train=2)


def test_safetensors_layout(tmp_path):
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, dtype=torch.bfloat16),
          "empty": torch.zeros(0, 3)}
    write_safetensors(sd, tmp_path / "x.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert header_len % 8 == 0 and raw[8:9] == b"{"
    back = read_safetensors(tmp_path / "x.safetensors")
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())
    st = pytest.importorskip("safetensors.torch", reason="cross-check with the safetensors package")
    assert all(torch.equal(st.load_file(str(tmp_path / "x.safetensors"))[k], v) for k, v in sd.items())
    st.save_file(sd, str(tmp_path / "y.safetensors"))
    assert all(torch.equal(read_safetensors(tmp_path / "y.safetensors")[k], v) for k, v in sd.items())


def test_bad_sources():
    with pytest.raises(ValueError, match="not found"):
        read_state_dict("/nonexistent/hmar-d16.pth")
    with pytest.raises(ValueError, match="not a flat state_dict"):
        read_state_dict({"trainer": {"transformer_wo_ddp": {}}})
    with pytest.raises(TypeError, match="path or a state_dict"):
        read_state_dict(42)
