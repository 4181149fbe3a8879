"""Pieces shared by hmar-sample and hmar-edit: loading models from paths, precision, devices, PNG I/O."""
from __future__ import annotations

import argparse
import json

import torch

from ..checkpoints import (load_checkpoint, load_model, nsp_mp_to_hmar, read_state_dict,
                           transformer_config_from_state_dict)
from ..hmar import HMAR

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_model_arguments(parser: argparse.ArgumentParser):
    g = parser.add_argument_group("checkpoints (local files: .pth or .safetensors; nothing is downloaded)")
    g.add_argument("--vae", required=True, help="VQVAE checkpoint, e.g. vae_ch160v4096z32.pth")
    g.add_argument("--model", required=True, help="transformer checkpoint: hmar-d16.pth (composite), var_d16.pth, "
                   "or an HMAR next-scale checkpoint (then --mp gives its masked-prediction partner)")
    g.add_argument("--kind", choices=("hmar", "var", "hmar_nsp"), default=None,
                   help="what --model is (detected from its keys when omitted)")
    g.add_argument("--mp", default=None, help="HMAR masked-prediction checkpoint to combine with a next-scale --model")
    g.add_argument("--n-layers-train", type=int, default=8, help="blocks finetuned for masked prediction (with --mp)")
    g.add_argument("--patch-nums", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                   help="comma-separated schedule, only for non-standard checkpoints")
    p = parser.add_argument_group("run")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    p.add_argument("--no-tf32", action="store_true", help="strict fp32 matmuls (upstream samples with TF32 on)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="fp32 (official numerics) or bf16/fp16 autocast (GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance at the last scale")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.96)
    p.add_argument("--refine-guidance", type=float, default=None,
                   help="CFG factor inside HMAR refinement passes (default: cfg·1e-6 as upstream)")
    p.add_argument("--out", required=True, help="output PNG")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_models(args) -> tuple:
    """(transformer, vqvae) on the chosen device, in eval mode."""
    device = resolve_device(args.device)
    if device.type == "cuda" and not args.no_tf32:  # as upstream's sampler: TF32 matmuls and convolutions
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if args.mp:
        sd = nsp_mp_to_hmar(read_state_dict(args.model), read_state_dict(args.mp), args.n_layers_train)
        model = load_checkpoint(HMAR(transformer_config_from_state_dict(sd, args.patch_nums)), sd)
    else:
        model = load_model(args.model, kind=args.kind, patch_nums=args.patch_nums)
    vqvae = load_model(args.vae, kind="vqvae", patch_nums=model.patch_nums)
    return model.to(device).eval(), vqvae.to(device).eval()


def parse_mask_schedule(text: str | None):
    """'default', 'none' or a JSON list of per-scale count lists."""
    if text is None or text == "default":
        return "default"
    if text == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--mask-schedule must be 'default', 'none' or JSON like [[1],[1,3],...]: {error}") from None


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats → uint8 with round-half-up, (B, 3, H, W)."""
    return images.float().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def save_grid(images: torch.Tensor, path: str, nrow: int, padding: int = 2):
    """Tile (B, 3, H, W) images in [0, 1] into rows of ``nrow`` and write a PNG."""
    Image = _pil()
    B, _, H, W = images.shape
    ncol, nrows = min(nrow, B), -(-B // nrow)
    grid = torch.zeros(3, nrows * (H + padding) + padding, ncol * (W + padding) + padding, dtype=torch.uint8)
    for i, img in enumerate(to_uint8(images.cpu())):
        r, c = divmod(i, ncol)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top:top + H, left:left + W] = img
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)


def load_image(path: str, side: int, mode: str = "RGB") -> torch.Tensor:
    """(1, C, side, side) float in [0, 1]; RGB resized with bicubic, masks ("L") with nearest."""
    Image = _pil()
    img = Image.open(path).convert(mode)
    img = img.resize((side, side), Image.BICUBIC if mode == "RGB" else Image.NEAREST)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(side, side, -1)
    return t.permute(2, 0, 1).unsqueeze(0).float().div_(255)


def _pil():
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError("reading/writing PNG needs Pillow: pip install pillow") from error
    return Image
