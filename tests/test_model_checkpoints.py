"""Checkpoints: strict loading with listed mismatches, official-format files (.pth, .safetensors) through plain
load_state_dict(strict=True), format detection, converters, the VQVAE usage buffer; damaged files, roles and the
VQVAE's fit raise ValueError naming the file and the problem."""
import argparse

import pytest
import safetensors.torch
import torch

import hmar_model as hm
from hmar_model.checkpoints import MASK_KEY, dense_mask_buffer, model_config, read_state_dict
from hmar_model.pairing import check_fit
from hmar_model.tiny import TINY_PATCH_NUMS, TINY_VQVAE, randomize_, tiny_transformer, tiny_vqvae


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


def test_safetensors_files_are_the_packages_format(tmp_path):
    sd = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, dtype=torch.bfloat16),
          "empty": torch.zeros(0, 3), "view": torch.randn(4, 6)[:, 1:3]}
    hm.save_checkpoint(sd, tmp_path / "x.safetensors")
    back = safetensors.torch.load_file(str(tmp_path / "x.safetensors"))  # written by us, read by the package
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "y.safetensors"))
    back = read_state_dict(tmp_path / "y.safetensors")  # written by the package, read by us
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in sd.items())
    assert not list(tmp_path.glob("*.partial"))  # written through a temporary file renamed into place


def test_legacy_pickle_format_loads(models, tmp_path):
    """Files from torch < 1.6 (not zip) cannot be memory-mapped: they are read whole."""
    path = tmp_path / "legacy.pth"
    torch.save(hm.official_state_dict(models["vqvae"]), path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:4] != b"PK\x03\x04"
    loaded = hm.load_model(path, patch_nums=(1, 2, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), models["vqvae"].state_dict().values()))


def _damaged_files(folder):
    """(path, what the error must say) for files torch.load / safetensors cannot read."""
    good = folder / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    cases = {"empty.pth": (b"", "the file is empty"),
             "random.pth": (bytes(range(256)) * 8, "cannot be read as a PyTorch checkpoint"),
             "text.pth": (b"hello world\n", "cannot be read as a PyTorch checkpoint"),
             "truncated.pth": (good.read_bytes()[: good.stat().st_size // 2], "cannot be read as a PyTorch checkpoint"),
             "text.safetensors": (b"hello world, not a tensor file\n", "not a valid .safetensors file")}
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    return [(folder / name, message) for name, (_, message) in cases.items()]


def test_damaged_files_name_the_file_and_the_problem(tmp_path):
    for path, message in _damaged_files(tmp_path):
        with pytest.raises(ValueError) as info:
            hm.load_model(path)
        text = str(info.value)
        assert str(path) in text and message in text, text
        assert "weights_only" not in text and "file an issue" not in text  # torch's unsafe advice is not passed on


def test_files_with_python_objects_are_refused_without_running_them(tmp_path):
    path = tmp_path / "training.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "trainer": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ValueError, match=r"holds Python objects besides tensors .*argparse.Namespace") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    torch.save({"trainer": {"transformer_wo_ddp": {"w": torch.zeros(2)}}}, path)
    with pytest.raises(ValueError, match="not a flat state_dict"):
        read_state_dict(path)


def test_roles_are_checked_before_building(models):
    vqvae_sd, hmar_sd = hm.official_state_dict(models["vqvae"]), hm.official_state_dict(models["hmar"])
    with pytest.raises(ValueError, match=r"is a VQVAE checkpoint, not a composite HMAR one"):
        hm.load_model(vqvae_sd, kind="hmar")
    with pytest.raises(ValueError, match=r"is a composite HMAR checkpoint, not a VQVAE one"):
        hm.load_model(hmar_sd, kind="vqvae")
    with pytest.raises(ValueError, match=r"VAR checkpoint, not a HMAR next-scale \(NSP\) one \(the keys are the same"):
        hm.load_model(hm.official_state_dict(models["var"]), kind="hmar_nsp")  # spec: VAR weights only into VAR
    with pytest.raises(ValueError, match="not a VQVAE, VAR or HMAR checkpoint"):
        hm.load_model({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="unknown checkpoint kind 'nsp'"):
        hm.load_model(hmar_sd, kind="nsp")
    incomplete = dict(hmar_sd)
    del incomplete["class_emb.weight"]
    with pytest.raises(ValueError, match="composite HMAR checkpoint but has no tensor 'class_emb.weight'"):
        model_config(incomplete)


def test_vqvae_fit_is_checked_before_any_work(models):
    other = hm.build_vqvae(TINY_PATCH_NUMS, **{**TINY_VQVAE, "z_channels": 4, "vocab_size": 48}).eval()
    check_fit(models["hmar"].cfg, models["vqvae"].cfg)
    with pytest.raises(ValueError, match=r"predicts 64 codes but the VQVAE's codebook has 48.*8-channel latents "
                                         r"but the VQVAE's are 4-channel"):
        check_fit(models["hmar"].cfg, other.cfg)
    with pytest.raises(ValueError, match="does not fit"):  # the API checks too, before sampling
        hm.sample(models["hmar"], other, labels=[1], seed=0)
    with pytest.raises(ValueError, match="does not fit"):
        hm.inpaint(models["hmar"], other, torch.rand(1, 3, 16, 16), torch.ones(1, 1, 16, 16))


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match=r"not found: '/nonexistent/hmar-d16.pth'; to use the official file, pass "
                                         r"the name 'hmar-d16'"):
        read_state_dict("/nonexistent/hmar-d16.pth")
    with pytest.raises(ValueError, match="official weights are available by name: hmar-d16, "):
        read_state_dict("no-such-model")
    with pytest.raises(ValueError, match="is a directory"):
        read_state_dict(tmp_path)
    with pytest.raises(ValueError, match="not a flat state_dict"):
        read_state_dict({"trainer": {"transformer_wo_ddp": {}}})
    with pytest.raises(TypeError, match="path, an official name or a state_dict"):
        read_state_dict(42)
