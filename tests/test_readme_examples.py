"""The README's Python examples run as written on this (CPU) machine: the kernel API example, and the Models
example with its official names served from a fake Hugging Face cache holding small random-weight models of the
same families (no network)."""
import os
import re

import torch
from huggingface_hub import constants

import hmar_model as hm
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae

from test_hub import add_to_cache

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_block(section: str) -> str:
    """The first ```python block under the README heading that starts with ``section``."""
    text = open(README, encoding="utf-8").read()
    body = re.split(r"^## ", text, flags=re.M)
    part = next(p for p in body if p.startswith(section))
    return re.search(r"```python\n(.*?)```", part, re.S).group(1)


def test_kernel_api_example_runs():
    scope = {}
    exec(compile(python_block("Python API"), "README: Python API", "exec"), scope)
    q, out = scope["q"], scope["out"]
    assert out.shape == (4, 16, 680, 64) and q.grad is not None and torch.isfinite(q.grad).all()


def test_models_example_runs_with_names_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)  # the example's classes (207, 360, 281) need the official 1000 classes
    add_to_cache(tmp_path / "hub", "hmar-d16", randomize_(tiny_transformer("hmar", num_classes=1000), 0).eval())
    add_to_cache(tmp_path / "hub", "vqvae", tiny_vqvae().eval())
    scope = {}
    exec(compile(python_block("Models"), "README: Models", "exec"), scope)
    images, edited, mask = scope["images"], scope["edited"], scope["mask"]
    assert images.shape == (2, 3, 16, 16) and edited.shape == images.shape
    assert 0 <= images.min() and images.max() <= 1 and mask.sum() == 8 * 8
    assert isinstance(scope["hmar"], hm.HMAR)
