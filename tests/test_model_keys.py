"""Full-size official configurations on the meta device: state_dict keys, shapes, entry and parameter counts
against the official files' layouts (tests/data holds the VQVAE's 324 keys and shapes). No weights are
allocated."""
from pathlib import Path

import pytest
import torch

from hmar_model import PATCH_NUMS, build_hmar, build_hmar_mp, build_hmar_nsp, build_var, build_vqvae
from hmar_model.checkpoints import official_state_dict, transformer_config_from_state_dict, vqvae_config_from_state_dict

DEPTHS = (16, 20, 24, 30)
# parameters of VAR/NSP, MP (total, trainable with n_layers_train = 8), composite HMAR
PARAMS = {16: (310_283_520, 310_284_544, 157_408_384, 467_691_904),
          20: (600_917_136, 600_918_416, 244_600_736, 845_517_872),
          24: (1_033_399_360, 1_033_400_896, 350_929_600, 1_384_328_960),
          30: (2_010_020_356, 2_010_022_276, 546_303_856, 2_556_324_212)}
ENTRIES = {16: (220, 221, 329), 20: (272, 273, 381), 24: (324, 325, 433), 30: (402, 403, 511)}  # VAR, MP, HMAR


def block_shapes(prefix, C, H):
    shapes = {"attn.scale_mul_1H11": (1, H, 1, 1), "attn.q_bias": (C,), "attn.v_bias": (C,),
              "attn.zero_k_bias": (C,), "attn.mat_qkv.weight": (3 * C, C), "attn.proj.weight": (C, C),
              "attn.proj.bias": (C,), "ffn.fc1.weight": (4 * C, C), "ffn.fc1.bias": (4 * C,),
              "ffn.fc2.weight": (C, 4 * C), "ffn.fc2.bias": (C,), "ada_lin.1.weight": (6 * C, C),
              "ada_lin.1.bias": (6 * C,)}
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def common_shapes(C, L=680):
    return {"pos_start": (1, 1, C), "pos_1LC": (1, L, C), "lvl_1L": (1, L), "attn_bias_for_masking": (1, 1, L, L),
            "class_emb.weight": (1001, C), "lvl_embed.weight": (10, C), "word_embed.weight": (C, 32)}


def var_table(depth):
    C, H = 64 * depth, depth
    table = dict(common_shapes(C), **{"word_embed.bias": (C,), "head_nm.ada_lin.1.weight": (2 * C, C),
                                       "head_nm.ada_lin.1.bias": (2 * C,), "head.weight": (4096, C),
                                       "head.bias": (4096,)})
    for i in range(depth):
        table.update(block_shapes(f"blocks.{i}", C, H))
    return table


def mp_table(depth):
    C = 64 * depth
    table = var_table(depth)
    del table["word_embed.bias"]
    return dict(table, word_embed_bias=(C,), **{"mask_embed.weight": (1, C)})


def hmar_table(depth, n=8):
    C, H = 64 * depth, depth
    table = dict(common_shapes(C), word_embed_bias=(C,), **{"mask_embed.weight": (1, C)})
    for branch in ("ns", "mask"):
        table.update({f"{branch}_head_nm.ada_lin.1.weight": (2 * C, C), f"{branch}_head_nm.ada_lin.1.bias": (2 * C,),
                      f"{branch}_head.weight": (4096, C), f"{branch}_head.bias": (4096,)})
        for i in range(n):
            table.update(block_shapes(f"{branch}_blocks.{i}", C, H))
    for i in range(depth - n):
        table.update(block_shapes(f"base_blocks.{i}", C, H))
    return table


def shapes_of(model):
    return {k: tuple(v.shape) for k, v in official_state_dict(model).items()}


def params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", DEPTHS)
def test_transformer_keys_and_counts(depth):
    var, nsp = build_var(depth, device="meta"), build_hmar_nsp(depth, device="meta")
    mp, hmar = build_hmar_mp(depth, device="meta"), build_hmar(depth, device="meta")
    assert shapes_of(var) == var_table(depth)
    assert shapes_of(nsp) == var_table(depth)
    assert shapes_of(mp) == mp_table(depth)
    assert shapes_of(hmar) == hmar_table(depth)
    assert (len(official_state_dict(var)), len(official_state_dict(mp)), len(official_state_dict(hmar))) == \
        ENTRIES[depth]
    assert official_state_dict(var)["lvl_1L"].dtype == torch.int64
    mp.freeze_for_finetuning()
    trainable = sum(p.numel() for p in mp.parameters() if p.requires_grad)
    assert (params(var), params(mp), trainable, params(hmar)) == PARAMS[depth]


def test_512_and_1024_schedules_change_only_sequence_tables():
    for px, L in ((512, 2240), (1024, 9451)):
        var = build_var(16, PATCH_NUMS[px], device="meta")
        sd = shapes_of(var)
        assert sd["pos_1LC"] == (1, L, 1024) and sd["attn_bias_for_masking"] == (1, 1, L, L)
        assert sd["lvl_embed.weight"] == (len(PATCH_NUMS[px]), 1024)


def test_vqvae_keys_and_counts():
    vqvae = build_vqvae(device="meta")
    sd = {k: tuple(v.shape) for k, v in vqvae.state_dict().items()}
    assert len(sd) == 324
    enc = sum(p.numel() for n, p in vqvae.named_parameters() if n.startswith("encoder."))
    dec = sum(p.numel() for n, p in vqvae.named_parameters() if n.startswith("decoder."))
    assert (enc, dec, params(vqvae)) == (44_107_872, 64_653_923, 108_948_355)
    spot = {"encoder.down.2.block.0.nin_shortcut.weight": (320, 160, 1, 1), "encoder.down.4.attn.1.qkv.weight":
            (1920, 640, 1, 1), "decoder.up.1.block.0.conv1.weight": (160, 320, 3, 3),
            "decoder.up.3.block.0.nin_shortcut.weight": (320, 640, 1, 1), "decoder.up.4.attn.2.proj_out.bias": (640,),
            "decoder.up.1.upsample.conv.weight": (160, 160, 3, 3), "quantize.ema_vocab_hit_SV": (10, 4096),
            "quantize.quant_resi.qresi_ls.3.weight": (32, 32, 3, 3), "quantize.embedding.weight": (4096, 32),
            "encoder.conv_out.weight": (32, 640, 3, 3), "decoder.conv_out.weight": (3, 160, 3, 3)}
    assert {k: sd[k] for k in spot} == spot
    assert not any(".attn." in k for k in sd if k.startswith(("encoder.down.", "decoder.up.")) and
                   not k.startswith(("encoder.down.4.", "decoder.up.4.")))
    assert "decoder.up.0.upsample.conv.weight" not in sd and "encoder.down.4.downsample.conv.weight" not in sd


def _official_vqvae_shapes() -> dict:
    """key → shape of the official vae_ch160v4096z32.pth, from tests/data (read off the released file's layout)."""
    table = {}
    for line in (Path(__file__).parent / "data" / "vqvae_state_dict_shapes.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            table[key] = tuple(int(x) for x in shape.split(",") if x)
    return table


def test_vqvae_keys_equal_the_official_file():
    table = _official_vqvae_shapes()
    assert len(table) == 324
    assert {k: tuple(v.shape) for k, v in build_vqvae(device="meta").state_dict().items()} == table


def test_configs_read_off_full_size_state_dicts():
    cfg = transformer_config_from_state_dict(official_state_dict(build_hmar(20, device="meta")))
    assert (cfg.depth, cfg.width, cfg.num_heads, cfg.n_layers_train, cfg.patch_nums) == (20, 1280, 20, 8,
                                                                                        PATCH_NUMS[256])
    cfg = transformer_config_from_state_dict(official_state_dict(build_var(30, PATCH_NUMS[512], device="meta")))
    assert (cfg.depth, cfg.width, cfg.mlp_ratio, cfg.patch_nums) == (30, 1920, 4.0, PATCH_NUMS[512])
    vcfg = vqvae_config_from_state_dict(build_vqvae(device="meta").state_dict())
    assert (vcfg.ch, vcfg.ch_mult, vcfg.num_res_blocks, vcfg.num_phis, vcfg.vocab_size, vcfg.z_channels) == \
        (160, (1, 1, 2, 2, 4), 2, 4, 4096, 32)
