"""hmar-sample / hmar-edit on user mistakes: exit code 2 and one message naming the argument, the file and the
problem, no traceback (``--debug`` shows it), and every check before any model is built or any sampling runs.
Also the first run: ``--demo`` end to end with its progress bar, and official names from an empty offline cache."""
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import constants

import hmar_model as hm
from hmar_model.cli import common, edit, sample
from hmar_model.tiny import TINY_PATCH_NUMS, TINY_VQVAE, randomize_, tiny_transformer, tiny_vqvae

pytest.importorskip("PIL.Image", reason="the CLIs write images through Pillow")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    models = {"vqvae": tiny_vqvae(), "hmar": randomize_(tiny_transformer("hmar"), 1),
              "var": randomize_(tiny_transformer("var"), 2), "hmar_mp": randomize_(tiny_transformer("hmar_mp"), 3),
              "other_vqvae": hm.build_vqvae(TINY_PATCH_NUMS, **{**TINY_VQVAE, "z_channels": 4})}
    paths = {}
    for name, model in models.items():
        paths[name] = str(folder / f"{name}.pth")
        hm.save_checkpoint(model, paths[name])
    good = folder / "good.pth"
    torch.save({"w": torch.randn(32, 32)}, good)
    damaged = {"corrupt.pth": bytes(range(256)) * 4, "empty.pth": b"", "text.safetensors": b"not tensors\n",
               "truncated.pth": good.read_bytes()[:300]}
    for name, data in damaged.items():
        paths[name] = str(folder / name)
        (folder / name).write_bytes(data)
    return paths


@pytest.fixture()
def no_building(monkeypatch):
    """Fails the test if a model is built: the checks must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the inputs were checked")
    monkeypatch.setattr(common, "build_model", refuse)
    monkeypatch.setattr(common, "demo_models", refuse)


def run_cli(main, argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def expect_error(main, argv, capsys, *parts):
    code, err = run_cli(main, argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for part in parts:
        assert part in err, (part, err)
    return err


def sample_args(files, tmp_path, **flags):
    argv = {"--model": files["hmar"], "--vae": files["vqvae"], "--out": str(tmp_path / "grid.png"),
            "--device": "cpu", **flags}
    return [x for k, v in argv.items() for x in ((k,) if v is True else (k, v))]


@pytest.mark.parametrize("flag", ["--model", "--vae"])
@pytest.mark.parametrize("name, problem", [("corrupt.pth", "cannot be read as a PyTorch checkpoint"),
                                           ("empty.pth", "the file is empty"),
                                           ("truncated.pth", "cannot be read as a PyTorch checkpoint"),
                                           ("text.safetensors", "not a valid .safetensors file")])
def test_damaged_files(files, tmp_path, capsys, no_building, flag, name, problem):
    err = expect_error(sample.main, sample_args(files, tmp_path, **{flag: files[name]}), capsys,
                       flag, files[name], problem)
    assert "weights_only" not in err


@pytest.mark.parametrize("flag, name, parts", [
    ("--model", "vqvae", ("is a VQVAE checkpoint", "pass it as --vae")),
    ("--model", "hmar_mp", ("HMAR masked-prediction (MP) checkpoint", "pass it as --mp with its next-scale partner")),
    ("--vae", "hmar", ("is a composite HMAR checkpoint, not a VQVAE one", "pass it as --model")),
    ("--vae", "var", ("is a VAR checkpoint, not a VQVAE one", "pass it as --model")),
    ("--vae", "other_vqvae", ("does not fit", "8-channel latents but the VQVAE's are 4-channel")),
])
def test_wrong_roles_and_misfits(files, tmp_path, capsys, no_building, flag, name, parts):
    expect_error(sample.main, sample_args(files, tmp_path, **{flag: files[name]}), capsys, flag, files[name], *parts)


def test_next_scale_and_masked_prediction_pair(files, tmp_path, capsys):
    """--model NSP --mp MP samples what the composite file samples; the pair's roles are checked."""
    nsp, mp = hm.hmar_to_nsp_mp(files["hmar"])
    paths = {name: str(tmp_path / f"{name}.pth") for name in ("nsp", "mp")}
    hm.save_checkpoint(nsp, paths["nsp"])
    hm.save_checkpoint(mp, paths["mp"])
    flags = {"--classes": "1", "--n-layers-train": "2", "--top-k": "5"}
    assert sample.main(sample_args(files, tmp_path, **flags, **{"--out": str(tmp_path / "a.png")})) == 0
    assert sample.main(sample_args(files, tmp_path, **flags, **{"--model": paths["nsp"], "--mp": paths["mp"],
                                                                 "--out": str(tmp_path / "b.png")})) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    capsys.readouterr()
    expect_error(sample.main, sample_args(files, tmp_path, **{"--model": paths["nsp"], "--mp": paths["nsp"]}),
                 capsys, f"--mp {paths['nsp']}: is a VAR or HMAR-NSP checkpoint, not a HMAR masked-prediction",
                 "pass it as --model")
    expect_error(sample.main, sample_args(files, tmp_path, **{"--model": files["hmar"], "--mp": paths["mp"]}),
                 capsys, f"--model {files['hmar']}: is a composite HMAR checkpoint, not a HMAR next-scale (NSP) one")
    expect_error(sample.main, sample_args(files, tmp_path, **{"--model": paths["nsp"]}), capsys,
                 "no mask buffer to tell them apart: pass --kind var or --kind hmar_nsp")


def test_var_is_refused_by_the_editor(files, tmp_path, capsys, no_building):
    image = tmp_path / "in.png"
    __import__("PIL.Image").Image.new("RGB", (20, 20)).save(image)
    expect_error(edit.main, sample_args(files, tmp_path, **{"--model": files["var"], "--image": str(image),
                                                            "--box": "2,2,8,8"}),
                 capsys, "--model", "is a VAR checkpoint, not a composite HMAR one")


@pytest.mark.parametrize("out, problem", [("/nonexistent/dir/x.png", "the folder /nonexistent/dir does not exist"),
                                          ("{tmp}", "is a folder"),
                                          ("{tmp}/grid.unknownext", "unknown image format .unknownext")])
def test_output_checked_before_anything(files, tmp_path, capsys, no_building, out, problem):
    out = out.format(tmp=tmp_path)
    argv = sample_args(files, tmp_path, **{"--model": "/nonexistent/model.pth", "--out": out})
    expect_error(sample.main, argv, capsys, "--out", problem)  # not the missing model: the output comes first


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda(files, tmp_path, capsys, no_building):
    expect_error(sample.main, sample_args(files, tmp_path, **{"--device": "cuda"}), capsys,
                 "--device cuda: CUDA is not available", "--device cpu")
    expect_error(sample.main, sample_args(files, tmp_path, **{"--device": "tpu9"}), capsys, "--device 'tpu9'")


def test_missing_files_and_images(files, tmp_path, capsys, no_building):
    expect_error(sample.main, sample_args(files, tmp_path, **{"--model": str(tmp_path / "hmar-d16.pth")}), capsys,
                 "--model", "not found", "pass the name 'hmar-d16'")
    (tmp_path / "notimage.png").write_text("not an image")
    expect_error(edit.main, sample_args(files, tmp_path, **{"--image": str(tmp_path / "notimage.png"),
                                                            "--box": "1,1,8,8"}),
                 capsys, "--image", "notimage.png", "not an image Pillow can read")
    expect_error(edit.main, sample_args(files, tmp_path, **{"--image": str(tmp_path / "none.png"),
                                                            "--box": "1,1,8,8"}),
                 capsys, "--image", "none.png: file not found")


def test_official_name_offline_with_empty_cache(files, tmp_path, capsys, monkeypatch, no_building):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    expect_error(sample.main, sample_args(files, tmp_path, **{"--model": "hmar-d30"}), capsys,
                 "--model", "hmar-d30.pth", "nvidia/HMAR", "hf download nvidia/HMAR hmar-d30.pth")


def test_bad_settings_after_loading(files, tmp_path, capsys):
    expect_error(sample.main, sample_args(files, tmp_path, **{"--mask-schedule": "[[1],[1,3],[3,5],[16]]"}), capsys,
                 "sums to 8")
    expect_error(sample.main, sample_args(files, tmp_path, **{"--classes": "11"}), capsys, "labels must be in [0, 10]")
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("argv, message", [([], "give --model"), (["--demo", "--model", "x.pth"], "drop --model"),
                                           (["--demo", "--num-images", "0"], "--num-images must be ≥ 1"),
                                           (["--demo", "--patch-nums", "1,x"], "comma-separated integers"),
                                           (["--demo", "--patch-nums", "1,2"], "drop --patch-nums")])
def test_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        sample.main(argv + ["--out", str(tmp_path / "x.png")])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_out_of_gpu_memory_is_one_message(files, tmp_path, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")
    monkeypatch.setattr(sample, "sample", oom)
    expect_error(sample.main, sample_args(files, tmp_path), capsys, "out of GPU memory (CUDA out of memory.",
                 "--num-images")


def test_debug_shows_the_traceback(files, tmp_path):
    with pytest.raises(ValueError, match="the file is empty"):
        sample.main(sample_args(files, tmp_path, **{"--model": files["empty.pth"], "--debug": True}))


def test_demo_first_run_with_progress(tmp_path, capsys):
    pil = pytest.importorskip("PIL.Image")
    out = tmp_path / "demo.png"
    code = sample.main(["--demo", "--classes", "1", "2", "--num-images", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0 and "sampling" in captured.err and "11/11" in captured.err  # 10 scales + decoding
    assert "random-weight demo models" in captured.out and "--model hmar-d16" in captured.out
    assert pil.open(out).size == (2 * 66 + 2, 2 * 66 + 2)  # 64 px images, 2 px padding
    out = tmp_path / "edit.png"
    code, err = run_cli(edit.main, ["--demo", "--num-images", "1", "--refine-steps", "1", "--out", str(out)], capsys)
    assert code == 0 and "editing" in err and "11/11" in err
    assert pil.open(out).size == (2 * 66 + 2, 66 + 2)
    assert not list(tmp_path.glob("*.partial"))


def test_real_process_exit_code_and_message(files, tmp_path):
    """As a user sees it: exit status 2, one line, no traceback; --debug prints the traceback."""
    argv = [sys.executable, "-m", "hmar_model.cli.sample", "--model", files["empty.pth"], "--vae", files["vqvae"],
            "--out", str(tmp_path / "x.png"), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"hmar-sample: error: --model: {files['empty.pth']}: the file is empty (an interrupted download or copy?)"]
    out = subprocess.run(argv + ["--debug"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1 and "Traceback" in out.stderr and "the file is empty" in out.stderr
