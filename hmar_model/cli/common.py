"""Pieces shared by hmar-sample and hmar-edit: model arguments (official names, local files or the demo models),
checks that run before any work, the error policy, precision, devices, PNG I/O.

Error policy: a user mistake (a bad file, a wrong model, an unwritable output, no CUDA...) ends the command with
one message naming the argument, the file and the problem, and exit code 2; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Callable

import torch

from .. import hub
from ..checkpoints import (build_model, check_role, detect_format, load_checkpoint, model_config,
                           nsp_mp_to_hmar, read_state_dict)
from ..pairing import check_fit
from ..tiny import demo_models

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
USER_ERRORS = (ValueError, TypeError, OSError)  # what the library raises for bad input, and file-system refusals
FLAG_OF_ROLE = {"vqvae": "--vae", "hmar_mp": "--mp", "hmar": "--model", "var": "--model", "hmar_nsp": "--model",
                "var_or_nsp": "--model"}


def int_list(text: str) -> tuple[int, ...]:
    """'1,2,3' → (1, 2, 3), for argparse."""
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {text!r}") from None


def add_model_arguments(parser: argparse.ArgumentParser):
    names = ", ".join(hub.OFFICIAL)
    g = parser.add_argument_group(
        "models", f"official names ({names}: downloaded once into the Hugging Face cache, see HF_HOME and "
        "HF_HUB_OFFLINE) or local .pth / .safetensors files")
    g.add_argument("--model", default=None, help="transformer: hmar-d16 (composite HMAR), var-d16, a local file, or "
                   "an HMAR next-scale checkpoint (then --mp gives its masked-prediction partner)")
    g.add_argument("--vae", default="vqvae", help="VQVAE (default: vqvae, the official vae_ch160v4096z32.pth)")
    g.add_argument("--kind", choices=("hmar", "var", "hmar_nsp"), default=None,
                   help="what --model is (detected from its keys when omitted); with --demo, which demo model")
    g.add_argument("--mp", default=None, help="HMAR masked-prediction checkpoint to combine with a next-scale --model")
    g.add_argument("--n-layers-train", type=int, default=8, help="blocks finetuned for masked prediction (with --mp)")
    g.add_argument("--patch-nums", type=int_list, default=None,
                   help="comma-separated schedule, only for non-standard checkpoints")
    g.add_argument("--demo", action="store_true",
                   help="small random-weight models instead of checkpoints (no download): the whole pipeline in "
                   "seconds on any machine; the images are noise")
    p = parser.add_argument_group("run")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (cuda when available)")
    p.add_argument("--no-tf32", action="store_true", help="strict fp32 matmuls (upstream samples with TF32 on)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32",
                   help="fp32 (official numerics) or bf16/fp16 autocast (GPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed and settings, same images")
    p.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance at the last scale")
    p.add_argument("--top-k", type=int, default=900, help="sample among the k most likely codes (0: all)")
    p.add_argument("--top-p", type=float, default=0.96, help="nucleus sampling probability mass (0: off)")
    p.add_argument("--refine-guidance", type=float, default=None,
                   help="CFG factor inside HMAR refinement passes (default: cfg·1e-6 as upstream)")
    p.add_argument("--out", required=True, help="output image (.png; the folder must exist)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of errors")


def add_compile_argument(group):
    """--no-compile: the sampler's eager reference path instead of the compiled one (default on CUDA)."""
    group.add_argument("--no-compile", action="store_true",
                       help="run the sampler eagerly (the reference path); by default on CUDA the HMAR passes and the "
                       "VQVAE decoder run compiled with torch.compile (compiled once per run, ≈ 1 min)")


def announce_compile(prog: str, compiled: bool):
    """One line on stderr when the sampler will compile, so that the first batch's wait is explained."""
    if compiled:
        print(f"{prog}: the sampler compiles on its first batch (about 30 s for d16; --no-compile runs it "
              "eagerly)", file=sys.stderr)


def check_model_arguments(parser: argparse.ArgumentParser, args):
    """Argument combinations argparse cannot express (usage errors: exit 2 with the usage line)."""
    if args.demo:
        given = [f for f, v in (("--model", args.model), ("--mp", args.mp), ("--patch-nums", args.patch_nums))
                 if v is not None]
        if args.vae != "vqvae":
            given.append("--vae")
        if given:
            parser.error(f"--demo uses random-weight models: drop {', '.join(given)}")
    elif args.model is None:
        parser.error(f"give --model (an official name: {', '.join(n for n in hub.OFFICIAL if n != 'vqvae')}, or a "
                     "local file), or --demo to try the pipeline without weights")
    if args.n_layers_train < 1:
        parser.error(f"--n-layers-train must be ≥ 1, got {args.n_layers_train}")


SAMPLING_MEMORY_HINT = ("make fewer images at a time (--num-images, --rows), decode in chunks (--decode-chunk) or use "
                        "--dtype bf16")


def run_command(prog: str, parser: argparse.ArgumentParser, body: Callable, argv=None,
                memory_hint: str = SAMPLING_MEMORY_HINT) -> int:
    """Parse, run ``body(args)``; user errors and running out of GPU memory (with ``memory_hint``: what to change)
    → one message on stderr and exit code 2 (``--debug``: the traceback)."""
    args = parser.parse_args(argv)
    try:
        return body(args)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except torch.cuda.OutOfMemoryError as error:
        if args.debug:
            raise
        print(f"{prog}: error: out of GPU memory ({str(error).splitlines()[0]}); {memory_hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def resolve_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda', 'cuda:N'; ValueError when the device does not exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"--device {name}: CUDA is not available ({why}, torch {torch.__version__}); use "
                             "--device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return device


def check_output_path(path: str, flag: str = "--out") -> str:
    """Before any work: the folder exists and is writable, the path is not a folder, the format is known."""
    Image = _pil()
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a folder; give a file name such as {os.path.join(path, 'out.png')}")
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: the folder {folder} is not writable")
    extension = os.path.splitext(path)[1].lower()
    if extension not in Image.registered_extensions():
        raise ValueError(f"{flag} {path}: unknown image format {extension or '(no extension)'}; use .png")
    return path


def check_input_image(path: str, flag: str) -> str:
    """Before any work: the file exists and Pillow can read it."""
    Image = _pil()
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {path}: file not found")
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as error:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError... on bad files
        raise ValueError(f"{flag} {path}: not an image Pillow can read ({type(error).__name__})") from None
    return path


def prepare_run(args) -> torch.device:
    """The checks before any work (device, output path), then the TF32 setting; returns the device."""
    device = resolve_device(args.device)
    check_output_path(args.out)
    if device.type == "cuda" and not args.no_tf32:  # as upstream's sampler: TF32 matmuls and convolutions
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def _read(flag: str, source, prog: str):
    if hub.is_official_name(source):
        print(f"{prog}: {flag} {source}: {hub.OFFICIAL[source].repo} {hub.OFFICIAL[source].filename}",
              file=sys.stderr)
    try:
        return read_state_dict(source)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def _check_role(sd, expected, flag: str, source) -> str:
    """check_role, plus the argument the file belongs to when it was given to the wrong one."""
    try:
        return check_role(sd, expected, f"{flag} {source}")
    except ValueError as error:
        right = FLAG_OF_ROLE.get(detect_format(sd))
        hint = f"; pass it as {right}" if right and right != flag else ""
        if right == "--mp" and flag == "--model":
            hint += " with its next-scale partner as --model"
        raise ValueError(f"{error}{hint}") from None


def load_models(args, device: torch.device, prog: str, roles=("hmar", "var", "hmar_nsp")) -> tuple:
    """(transformer, vqvae) on ``device``, in eval mode; ``roles``: what --model may be. Every file's role and the
    VQVAE's fit to the transformer are checked before any model is built."""
    if args.demo:
        return demo_models(args.kind or "hmar", seed=args.seed, device=device)
    sd = _read("--model", args.model, prog)
    if args.mp:
        _check_role(sd, ("hmar_nsp",), "--model", args.model)
        mp = _read("--mp", args.mp, prog)
        _check_role(mp, ("hmar_mp",), "--mp", args.mp)
        sd, kind = nsp_mp_to_hmar(sd, mp, args.n_layers_train), "hmar"
    else:
        kind = _check_role(sd, (args.kind,) if args.kind else roles, "--model", args.model)
        if kind == "var_or_nsp" and args.kind is None:
            raise ValueError(f"--model {args.model}: VAR and HMAR-NSP checkpoints have the same keys and this one has "
                             "no mask buffer to tell them apart: pass --kind var or --kind hmar_nsp")
        kind = args.kind or kind
    kind, cfg = model_config(sd, kind, args.patch_nums, f"--model {args.model}")
    vae_sd = _read("--vae", args.vae, prog)
    _check_role(vae_sd, ("vqvae",), "--vae", args.vae)
    _, vae_cfg = model_config(vae_sd, "vqvae", cfg.patch_nums, f"--vae {args.vae}")
    check_fit(cfg, vae_cfg, f"--model {args.model}", f"--vae {args.vae}")
    model = _load(build_model(kind, cfg), sd, f"--model {args.model}")
    vqvae = _load(build_model("vqvae", vae_cfg), vae_sd, f"--vae {args.vae}")
    return model.to(device).eval(), vqvae.to(device).eval()


def _load(model, sd, origin: str):
    try:
        return load_checkpoint(model, sd)
    except ValueError as error:
        raise ValueError(f"{origin}: {error}") from None


def demo_note(args) -> str:
    """Appended to the final line of a --demo run: what the images are and how to get real ones."""
    return " (random-weight demo models: noise; for real images use e.g. --model hmar-d16)" if args.demo else ""


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
    """Tile (B, 3, H, W) images in [0, 1] into rows of ``nrow`` and write the image file (temp file + rename)."""
    Image = _pil()
    B, _, H, W = images.shape
    ncol, nrows = min(nrow, B), -(-B // nrow)
    grid = torch.zeros(3, nrows * (H + padding) + padding, ncol * (W + padding) + padding, dtype=torch.uint8)
    for i, img in enumerate(to_uint8(images.cpu())):
        r, c = divmod(i, ncol)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top:top + H, left:left + W] = img
    image_format = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".partial")
    os.close(fd)
    try:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format=image_format)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    except ImportError:
        raise ValueError("reading and writing images needs Pillow: pip install pillow") from None
    return Image
