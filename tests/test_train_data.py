"""Training data: the deterministic distributed order, token shards and their checks, hmar-tokenize on images
made here (PIL), and the data errors of hmar-train / hmar-tokenize."""
import json
import os

import numpy as np
import pytest
import torch

from hmar_model.cli.tokenize import main as tokenize_main
from hmar_model.tiny import TINY_PATCH_NUMS
from hmar_model.train.data import Batches, DataError, SampleOrder, SyntheticTokens, TokenShards, vae_fingerprint
from hmar_model.train.models import build_vae
from hmar_model.train.tokenize import tokenize_folder


def test_sample_order_visits_a_permutation_per_epoch():
    order = SampleOrder(7, views=3, seed=5)
    idx, views = order.take(0, 21)
    for epoch in range(3):
        assert sorted(idx[7 * epoch:7 * epoch + 7].tolist()) == list(range(7))
    assert not torch.equal(idx[:7], idx[7:14])  # reshuffled every epoch
    assert ((views >= 0) & (views < 3)).all()
    again, again_views = SampleOrder(7, 3, 5).take(5, 10)  # position-only: no state but the position
    assert torch.equal(again, idx[5:15]) and torch.equal(again_views, views[5:15])


@pytest.mark.parametrize("world, accum", [(2, 1), (4, 2)])
def test_ranks_and_micro_batches_split_the_same_global_batch(world, accum):
    source = SyntheticTokens(11, TINY_PATCH_NUMS, 64, 10, seed=0)
    G = 8
    single = Batches(source, G, 1, 1, 0, seed=3, device="cpu")
    ranks = [Batches(source, G, accum, world, r, seed=3, device="cpu") for r in range(world)]
    for step in (0, 1, 4):
        _, _, label, tokens = next(single.iterate(step, step + 1))
        parts = {}
        for r, b in enumerate(ranks):
            for s, m, lab, tok in b.iterate(step, step + 1):
                parts[(m, r)] = tok
        stacked = torch.cat([parts[(m, r)] for m in range(accum) for r in range(world)])
        assert torch.equal(stacked, tokens)


def test_more_ranks_than_samples_is_an_error():
    source = SyntheticTokens(3, TINY_PATCH_NUMS, 64, 10, seed=0)
    with pytest.raises(DataError, match="4 ranks but the dataset has only 3 samples"):
        Batches(source, 8, 1, 4, 0, seed=0, device="cpu")
    with pytest.raises(DataError, match="not divisible"):
        Batches(SyntheticTokens(30, TINY_PATCH_NUMS, 64, 10, 0), 10, 1, 4, 0, seed=0, device="cpu")


def _make_images(root, sizes, corrupt=True):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for c, name in enumerate(("apple", "boat")):
        os.makedirs(root / name, exist_ok=True)
        for i, (h, w) in enumerate(sizes):
            path = root / name / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            paths.append(path)
    if corrupt:
        (root / "boat" / "broken.jpg").write_bytes(b"definitely not a jpeg")
    return paths


def test_tokenize_encodes_the_official_preprocessing(tmp_path, capsys):
    # 18 = round(1.125·16): an 18×18 image needs no resize, so the expected crop can be taken by hand
    paths = _make_images(tmp_path / "imgs", [(18, 18), (25, 19), (20, 31)])
    meta = tokenize_folder(str(tmp_path / "imgs"), str(tmp_path / "shards"), "tiny", TINY_PATCH_NUMS, flip=True,
                           views=2, shard_size=4)
    out = capsys.readouterr().out
    assert meta["num_samples"] == 6 and meta["views"] == 4 and len(meta["shards"]) == 2
    assert len(meta["skipped"]) == 1 and "broken.jpg" in meta["skipped"][0][0] and "skipped 1" in out
    vqvae = build_vae("tiny", 0, TINY_PATCH_NUMS, "cpu")
    from PIL import Image

    pixels = torch.from_numpy(np.array(Image.open(paths[0]).convert("RGB"))).permute(2, 0, 1).double()
    crop = (pixels[:, 1:17, 1:17] / 127.5 - 1).float()  # centre 16×16 crop of 18×18, [−1, 1]
    want = torch.cat(vqvae.img_to_indices(torch.stack((crop, crop.flip(-1)))), dim=1)
    shards = TokenShards(str(tmp_path / "shards"), TINY_PATCH_NUMS, vae_fingerprint(vqvae), num_classes=10)
    label, tokens = shards.get(torch.tensor([0, 0]), torch.tensor([0, 2]))  # view 2 = the mirrored centre crop
    assert torch.equal(tokens, want) and label.tolist() == [0, 0]
    labels, _ = shards.get(torch.arange(6), torch.zeros(6, dtype=torch.long))
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_tokenize_resumes_and_shards_from_another_vae_or_schedule_are_refused(tmp_path):
    _make_images(tmp_path / "imgs", [(18, 18), (21, 30)], corrupt=False)
    data, out = str(tmp_path / "imgs"), str(tmp_path / "shards")
    meta = tokenize_folder(data, out, "tiny", TINY_PATCH_NUMS, shard_size=1)
    os.remove(os.path.join(out, "shard-00003.json"))  # as if killed during the last shard
    os.remove(os.path.join(out, "meta.json"))
    assert tokenize_folder(data, out, "tiny", TINY_PATCH_NUMS, shard_size=1) == meta
    other = vae_fingerprint(build_vae("tiny", 1, TINY_PATCH_NUMS, "cpu"))
    with pytest.raises(DataError, match="another VQVAE"):
        TokenShards(out, TINY_PATCH_NUMS, other, num_classes=10)
    with pytest.raises(DataError, match="patch_nums"):
        TokenShards(out, (1, 2, 4), meta["vae_fingerprint"], num_classes=10)
    with pytest.raises(DataError, match="another tokenisation"):
        tokenize_folder(data, out, "tiny", TINY_PATCH_NUMS, vae_seed=1, shard_size=1)
    tokens_file = os.path.join(out, "shard-00001.tokens.u16")
    with open(tokens_file, "r+b") as f:
        f.truncate(os.path.getsize(tokens_file) - 2)
    with pytest.raises(DataError, match="truncated"):
        TokenShards(out, TINY_PATCH_NUMS, meta["vae_fingerprint"], num_classes=10)
    with open(os.path.join(out, "meta.json")) as f:
        assert json.load(f)["num_samples"] == 4


def test_tokenize_cli_errors(tmp_path, capsys):
    code = tokenize_main(["--data", str(tmp_path / "missing"), "--vae", "tiny", "--patch-nums", "1,2,3,4",
                          "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "data folder not found" in err and "Traceback" not in err
    os.makedirs(tmp_path / "empty" / "cls")
    code = tokenize_main(["--data", str(tmp_path / "empty"), "--vae", "tiny", "--patch-nums", "1,2,3,4",
                          "--out", str(tmp_path / "o")])
    assert code == 2 and "no images" in capsys.readouterr().err
    (tmp_path / "bad" / "cls").mkdir(parents=True)
    (tmp_path / "bad" / "cls" / "x.jpg").write_bytes(b"junk")
    code = tokenize_main(["--data", str(tmp_path / "bad"), "--vae", "tiny", "--patch-nums", "1,2,3,4",
                          "--out", str(tmp_path / "o2")])
    assert code == 2 and "none of the 1 images" in capsys.readouterr().err
    code = tokenize_main(["--data", str(tmp_path / "bad"), "--vae", str(tmp_path / "nope.pth"),
                          "--out", str(tmp_path / "o3")])
    assert code == 2 and "vae checkpoint not found" in capsys.readouterr().err
