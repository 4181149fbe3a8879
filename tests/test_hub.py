"""Official weights by name through the Hugging Face cache (hmar_model/hub.py), with a fake cache folder built
here: no test touches the network (conftest sets HF_HUB_OFFLINE; the download step itself is replaced where a
test needs it to fail)."""
import os
import subprocess
import sys

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants, errors

import hmar_model as hm
from hmar_model import hub
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_to_cache(cache, name, model):
    """Put ``model`` where the Hugging Face cache keeps ``name``'s file: models--ORG--REPO/{refs/main,
    snapshots/COMMIT/FILE}."""
    f = hub.OFFICIAL[name]
    repo = cache / ("models--" + f.repo.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True, exist_ok=True)
    path = repo / "snapshots" / COMMIT / f.filename
    hm.save_checkpoint(model, path)
    return path


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty cache folder used by huggingface_hub, offline."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_official_names():
    assert set(hub.OFFICIAL) == {"vqvae", *(f"{f}-d{d}" for f in ("hmar", "var") for d in (16, 20, 24, 30))}
    assert hub.OFFICIAL["hmar-d24"][:2] == ("nvidia/HMAR", "hmar-d24.pth")
    assert hub.OFFICIAL["var-d30"][:2] == ("FoundationVision/var", "var_d30.pth")
    assert hub.OFFICIAL["vqvae"][:2] == ("FoundationVision/var", "vae_ch160v4096z32.pth")
    assert hub.download_command("hmar-d16") == "hf download nvidia/HMAR hmar-d16.pth"


def test_names_load_from_the_cache(cache):
    torch.manual_seed(0)
    hmar, vqvae = randomize_(tiny_transformer("hmar"), 1).eval(), tiny_vqvae().eval()
    path = add_to_cache(cache, "hmar-d16", hmar)
    add_to_cache(cache, "vqvae", vqvae)
    assert hub.resolve("hmar-d16") == str(path)
    loaded = hm.load_model("hmar-d16")
    assert type(loaded) is hm.HMAR
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), hmar.state_dict().values()))
    assert type(hm.load_model("vqvae")) is hm.VQVAE
    assert hm.read_state_dict("hmar-d16").keys() == hm.read_state_dict(path).keys()
    hm.load_checkpoint(tiny_transformer("hmar"), "hmar-d16")  # names work wherever a path does


def test_plain_paths_win_and_are_untouched(cache, tmp_path, monkeypatch):
    local = tmp_path / "hmar-d16"  # a local file of the same name as an official model
    hm.save_checkpoint(tiny_vqvae(), local)
    monkeypatch.chdir(tmp_path)
    assert hub.resolve("hmar-d16") == "hmar-d16"
    assert type(hm.load_model("hmar-d16")) is hm.VQVAE
    assert hub.resolve(tmp_path / "missing.pth") == tmp_path / "missing.pth"  # the reader reports it


def test_offline_empty_cache_names_repo_file_and_command(cache):
    with pytest.raises(ValueError) as info:
        hm.load_model("hmar-d20")
    text = str(info.value)
    for part in ("'hmar-d20'", "hmar-d20.pth", "nvidia/HMAR", str(cache), "HF_HUB_OFFLINE",
                 "hf download nvidia/HMAR hmar-d20.pth", "huggingface-cli download nvidia/HMAR hmar-d20.pth"):
        assert part in text, (part, text)


@pytest.mark.parametrize("failure, message", [
    (errors.LocalEntryNotFoundError("connection refused"), "the Hub cannot be reached"),
    (ConnectionError("network is unreachable"), "could not be downloaded (ConnectionError: network is unreachable)"),
])
def test_failed_download_names_repo_file_and_command(cache, monkeypatch, failure, message):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_download(repo, filename, **kwargs):  # the cache lookup misses, the download fails: no network
        calls.append(kwargs.get("local_files_only", False))
        if kwargs.get("local_files_only"):
            raise errors.LocalEntryNotFoundError("not in the cache")
        raise failure
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(ValueError) as info:
        hub.resolve("var-d16")
    assert calls == [True, False]  # the cache first, then one download attempt
    text = str(info.value)
    assert message in text and "hf download FoundationVision/var var_d16.pth" in text, text


def test_environment_variables_choose_the_cache(tmp_path):
    """HF_HOME and HF_HUB_OFFLINE as huggingface_hub reads them at import, in a fresh process."""
    add_to_cache(tmp_path / "home" / "hub", "vqvae", tiny_vqvae())
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO_ROOT}
    env.pop("HF_HUB_CACHE", None)
    code = ("import hmar_model as hm; print(type(hm.load_model('vqvae')).__name__)\n"
            "try: hm.load_model('var-d24')\nexcept ValueError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()[:2]
    assert first == "VQVAE"
    assert str(tmp_path / "home" / "hub") in second and "var_d24.pth" in second and "HF_HUB_OFFLINE" in second
