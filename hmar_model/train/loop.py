"""The training loop of hmar-train, top to bottom: set-up, resume, steps, logging, checkpoints, export.

    summary = train(cfg, resume=False)      # cfg from config.load_config; returns the last logged metrics

One optimiser step = ``accum`` micro-batches per rank. Each micro-batch: token maps → teacher-forcing inputs with
the frozen VQVAE quantiser (fp32, no grad) → autocast forward to per-token (ce, hit): fused (hidden state →
chunked head + CE, q/k-norm kernels) or from the logits → stage loss (next_scale_loss or masked_loss) → backward
(DDP syncs on the last micro-batch); ``compile`` compiles forward + loss as one function. Then unscale (fp16),
clip, AdamW step, EMA, and every ``log_every`` steps one host sync for the log line. On CUDA the whole optimiser
step (all micro-batches, clipping, AdamW, EMA) replays as one CUDA graph (``cuda_graph``, hmar_model.step_graph);
the data, the masked stage's masks and the LR/WD schedule stay outside it.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import signal
import time
import warnings

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoints import MASK_KEY, dense_mask_buffer, nsp_mp_to_hmar, save_checkpoint
from ..fast_step import token_cross_entropy
from ..step_graph import StepGraph, static_problem, use_graph
from . import checkpoint, parallel
from .config import ConfigError, to_yaml
from .data import Batches, SyntheticTokens, TokenShards, vae_fingerprint
from .loss import ScaleStats, masked_loss, next_scale_loss, token_weights
from .models import build_model, build_vae, check_vae_matches, init_masked_from, nsp_state_dict
from .optim import build_optimizer, set_lr_wd

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
MAX_LOSS_SCALE = 32768.0  # upstream caps the fp16 loss scale after each step


class StopRequested:
    """SIGTERM / SIGINT set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def build_source(cfg, vqvae):
    if cfg.data == "synthetic":
        return SyntheticTokens(cfg.synthetic_samples, cfg.patch_nums, cfg.model.vocab_size, cfg.model.num_classes,
                               seed=cfg.seed + 1)
    if not cfg.data_path:
        raise ConfigError("data=shards needs data_path=<folder made by hmar-tokenize> (or use data=synthetic)")
    return TokenShards(cfg.data_path, cfg.patch_nums, vae_fingerprint(vqvae), cfg.model.num_classes)


def split_scales(tokens_BL: torch.Tensor, patch_nums) -> list[torch.Tensor]:
    return list(tokens_BL.split([p * p for p in patch_nums], dim=1))


def draw_mask(patch_nums, generator: torch.Generator) -> torch.Tensor:
    """(L − n_0,) bool: p ~ U(0, 1), then ceil(n_k·p) random positions of every scale k ≥ 1 (shared by the batch,
    as upstream; p > 0 so every scale has at least one masked token)."""
    p = max(float(torch.rand((), generator=generator)), 1e-6)
    parts = []
    for side in patch_nums[1:]:
        n = side * side
        part = torch.zeros(n, dtype=torch.bool)
        part[torch.randperm(n, generator=generator)[:math.ceil(n * p)]] = True
        parts.append(part)
    return torch.cat(parts)


class Run:
    """Everything one process holds for a run (models, optimiser, data, logging)."""

    def __init__(self, cfg, resume: bool, say):
        self.cfg, self.say = cfg, say
        self.env = env = parallel.setup(cfg.distributed)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.patch_nums = tuple(cfg.patch_nums)
        self.L = sum(p * p for p in self.patch_nums)
        self.vqvae = build_vae(cfg.vae, cfg.vae_seed, self.patch_nums, env.device)
        self.source = build_source(cfg, self.vqvae)
        self.batches = Batches(self.source, cfg.batch, cfg.accum, env.world, env.rank, cfg.seed, env.device)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank and for every world size
        self.model = build_model(cfg, env.device)
        check_vae_matches(self.model, self.vqvae)
        has_checkpoint = resume and any(checkpoint.problem(f) is None for _, f in checkpoint.checkpoints(cfg.out))
        if cfg.stage == "masked":
            if not has_checkpoint:
                if not cfg.init:
                    raise ConfigError("stage=masked needs init=<next-scale run folder or checkpoint>")
                say(f"hmar-train: masked stage starts from {init_masked_from(self.model, cfg.init)}")
            self.model.freeze_for_finetuning()
        seed_everything(cfg.seed * env.world + env.rank)  # label dropout, drop path: per rank, as upstream
        self.wrapped = parallel.wrap(self.model, cfg.distributed, env)
        # FSDP2 warns that the logits are a view (in-place ops on them would skip its hook); the loss never
        # modifies them in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        self.fused = env.device.type == "cuda" if cfg.fused is None else cfg.fused
        self.losses = torch.compile(self._losses) if cfg.compile else self._losses
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg)
        self.ema = ({n: p.detach().clone().float() for n, p in self.model.named_parameters() if p.requires_grad}
                    if cfg.ema > 0 else None)
        self.scaler = torch.amp.GradScaler(env.device.type, init_scale=2.0 ** 11, growth_interval=1000,
                                           enabled=cfg.precision == "fp16")
        self.weight_L = token_weights(self.patch_nums, cfg.loss_weights).to(env.device)
        self.stats = ScaleStats(self.patch_nums, env.device)
        self.step = 0
        if resume:
            state = checkpoint.load_latest(cfg.out, self.wrapped, self.optimizer, self.ema,
                                           checkpoint.model_fingerprint(self.model), say=self.say_main)
            if state is not None:
                self.step = state["step"]
                self.scaler.load_state_dict(state["scaler"])
                self.say_main(f"hmar-train: resumed from {state['folder']} (step {self.step}, "
                              f"{state['samples_seen']} samples seen)")
        self.graphed = use_graph(cfg.cuda_graph, env.device, self.graph_problem(), "hmar-train")
        self.train_step = StepGraph(self._train_step, self.optimizer, "hmar-train") if self.graphed else \
            self._train_step
        if env.main:
            self._trim_log()

    def say_main(self, text: str):
        if self.env.main:
            self.say(text)

    # ---- one micro-batch ----
    def _losses(self, inputs: tuple, tokens_BL, masked_BL):
        """Autocast forward → (loss, ce_BL detached, hit_BL) of the stage (masked_BL None: next-scale)."""
        dtype = AUTOCAST[self.cfg.precision]
        with torch.autocast(self.env.device.type, dtype=dtype, enabled=dtype is not None):
            ce_BL, hit_BL = token_cross_entropy(self.model, inputs, tokens_BL, self.cfg.attn_backend, self.fused,
                                                forward=self.wrapped)
        if masked_BL is None:
            return next_scale_loss(ce_BL, hit_BL, self.weight_L)
        return masked_loss(ce_BL, hit_BL, masked_BL)

    def graph_problem(self) -> str | None:
        """Why this run's optimiser step cannot replay as one CUDA graph, or None."""
        cfg = self.cfg
        if self.env.world > 1:
            return f"it runs on {self.env.world} ranks (no collectives inside a captured step here)"
        if cfg.distributed == "fsdp":
            return "distributed=fsdp (FSDP2's hooks are not captured here)"
        if cfg.precision == "fp16":
            return "precision=fp16: the GradScaler's inf check and scale update sync the host every step"
        if cfg.twde is not None and cfg.twde != cfg.twd:
            return "the weight decay follows a schedule (twde): AdamW's weight_decay is a constant of the graph"
        return static_problem(self.env.device, self.optimizer)

    def step_inputs(self, micro_batches) -> list[torch.Tensor]:
        """The tensors of one optimiser step: per micro-batch label_B, tokens_BL and, in the masked stage, the mask
        masked_L (L,), drawn on the CPU (no host sync, ≥ 1 masked token per scale ≥ 1) and copied to the device
        here, outside any graph."""
        cfg, n_0 = self.cfg, self.patch_nums[0] ** 2
        tensors = []
        for step, micro, label_B, tokens_BL in micro_batches:
            tensors += [label_B, tokens_BL]
            if cfg.stage == "masked":
                g = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 1009 + micro) * 1009
                                                  + self.env.rank)
                masked_L = torch.cat((torch.zeros(n_0, dtype=torch.bool), draw_mask(self.patch_nums, g)))
                tensors.append(masked_L.to(self.env.device))
        return tensors

    def _train_step(self, *tensors) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step over the ``accum`` micro-batches of ``step_inputs`` → (mean micro-batch loss (fp64),
        grad norm)."""
        accum = self.cfg.accum
        per_micro = len(tensors) // accum
        loss_mean = torch.zeros((), dtype=torch.float64, device=self.env.device)
        for micro in range(accum):
            last_micro = micro == accum - 1
            no_sync = (self.wrapped.no_sync() if hasattr(self.wrapped, "no_sync") and not last_micro
                       else contextlib.nullcontext())
            with no_sync:
                loss = self.micro_step(*tensors[micro * per_micro:(micro + 1) * per_micro])
                self.scaler.scale(loss / accum).backward()
            loss_mean += loss.detach().double() / accum
        return loss_mean, self.optimizer_step()

    def micro_step(self, label_B, tokens_BL, masked_L=None) -> torch.Tensor:
        """Loss of one micro-batch (masked_L (L,) bool: the masked stage's mask, shared by the batch)."""
        indices = split_scales(tokens_BL, self.patch_nums)
        with torch.no_grad():
            x_BLCv = self.vqvae.quantize.next_scale_inputs(indices, self.patch_nums)
        if masked_L is None:
            loss, ce_BL, hit_BL = self.losses((label_B, x_BLCv), tokens_BL, None)
            self.stats.add(ce_BL, hit_BL)
            return loss
        masked_l = masked_L[self.patch_nums[0] ** 2:]  # (L − n_0,): the model's argument
        with torch.no_grad():
            own_BLCv = self.vqvae.quantize.masked_inputs(indices, self.patch_nums)
        masked_BL = masked_L.expand_as(tokens_BL)
        loss, ce_BL, hit_BL = self.losses((label_B, x_BLCv, own_BLCv, masked_l), tokens_BL, masked_BL)
        self.stats.add(ce_BL, hit_BL, masked_BL)
        return loss

    def optimizer_step(self) -> torch.Tensor:
        cfg = self.cfg
        self.scaler.unscale_(self.optimizer)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.trainable, cfg.clip) if cfg.clip > 0
                     else torch.zeros((), device=self.env.device))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scaler.is_enabled():  # cap on the device: get_scale() would sync the host every step
            self.scaler._scale.clamp_(max=MAX_LOSS_SCALE)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for (name, p) in self.model.named_parameters():
                    if name in self.ema:
                        self.ema[name].lerp_(p.detach().float(), 1 - cfg.ema)
        return grad_norm

    # ---- checkpoints, logs, export ----
    def save(self):
        state = {"step": self.step, "samples_seen": self.step * self.cfg.batch, "scaler": self.scaler.state_dict(),
                 "config": to_yaml(self.cfg), "model_fingerprint": checkpoint.model_fingerprint(self.model),
                 "world_size": self.env.world}
        folder = checkpoint.save(self.cfg.out, self.step, self.wrapped, self.optimizer, self.ema, state,
                                 self.cfg.keep_last)
        return folder

    def _trim_log(self):
        """A resumed run re-does the steps after its checkpoint: drop their lines (and a torn last line) from
        log.jsonl."""
        path = os.path.join(self.cfg.out, "log.jsonl")
        if not os.path.isfile(path):
            return
        with open(path) as f:
            lines = f.readlines()
        kept = [line for line in lines if _logged_step(line) <= self.step]
        if len(kept) != len(lines):
            with open(path + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(path + ".tmp", path)

    def export(self):
        """Final weights in the official layout: export/model.pth (+ model-ema.pth, vae.pth for a random VQVAE,
        hmar.pth: the composite of the init's next-scale model and the finetuned masked model)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.tensor import DTensor

        sd = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        ema = None if self.ema is None else {
            k: (v.full_tensor() if isinstance(v, DTensor) else v).cpu() for k, v in self.ema.items()}
        if not self.env.main:
            return
        out = os.path.join(self.cfg.out, "export")
        os.makedirs(out, exist_ok=True)
        sd[MASK_KEY] = dense_mask_buffer(self.model).cpu()
        save_checkpoint(sd, os.path.join(out, "model.pth"))
        if ema is not None:
            save_checkpoint({k: ema[k].to(v.dtype) if k in ema else v for k, v in sd.items()},
                            os.path.join(out, "model-ema.pth"))
        if not os.path.isfile(self.cfg.vae):
            save_checkpoint(self.vqvae, os.path.join(out, "vae.pth"))
        if self.cfg.stage == "masked":
            save_checkpoint(nsp_mp_to_hmar(nsp_state_dict(self.cfg.init), sd, self.cfg.model.n_layers_train),
                            os.path.join(out, "hmar.pth"))
        self.say(f"hmar-train: exported the official layout to {out}/")


def _logged_step(line: str) -> float:
    """The step of a log.jsonl line; a line torn by a kill mid-write counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _peak_mem_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: peak resident set (Linux: KiB)


def train(cfg, resume: bool = False, say=print) -> dict:
    """Run (or resume) ``cfg`` to cfg.max_steps; returns the last log record (or {} when nothing was left)."""
    os.makedirs(cfg.out, exist_ok=True)
    with tf32_matmuls(cfg.tf32):
        return _train(cfg, resume, say)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """TF32 matmuls and convolutions on or off for the run (both ways: a process may have turned them on before),
    the process's previous setting restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _train(cfg, resume: bool, say) -> dict:
    run = Run(cfg, resume, say)
    env, last = run.env, {}
    try:
        if env.main:
            with open(os.path.join(cfg.out, "config.yaml.tmp"), "w") as f:
                f.write(to_yaml(cfg))
            os.replace(os.path.join(cfg.out, "config.yaml.tmp"), os.path.join(cfg.out, "config.yaml"))
        if run.step >= cfg.max_steps:
            run.say_main(f"hmar-train: the run is already at step {run.step} ≥ max_steps={cfg.max_steps}; "
                         "nothing to do (extend it with max_steps=N)")
            return {}
        last = _loop(run)
    finally:
        parallel.teardown()
    return last


def _loop(run: Run) -> dict:
    cfg, env = run.cfg, run.env
    log_path = os.path.join(cfg.out, "log.jsonl")
    with contextlib.ExitStack() as closing:  # the log files are closed however the loop ends (a signal included)
        log_file = closing.enter_context(open(log_path, "a")) if env.main else None
        tb = None
        if cfg.tensorboard and env.main:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(os.path.join(cfg.out, "tb"))
            closing.callback(tb.close)
        return _steps(run, log_file, tb)


def _steps(run: Run, log_file, tb) -> dict:
    cfg, env = run.cfg, run.env
    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not env.main, dynamic_ncols=True, desc="hmar-train")
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    window_start, window_steps, data_s, last = time.perf_counter(), 0, 0.0, {}
    batches = run.batches.iterate(run.step, cfg.max_steps)
    sync_ranks = env.world > 1
    with StopRequested() as stop:
        while run.step < cfg.max_steps:
            lr = set_lr_wd(run.optimizer, cfg, run.step)
            micro_batches = []
            for micro in range(cfg.accum):
                t0 = time.perf_counter()
                micro_batches.append(next(batches))
                data_s += time.perf_counter() - t0
                assert micro_batches[-1][:2] == (run.step, micro)
            step_loss, grad_norm = run.train_step(*run.step_inputs(micro_batches))
            loss_sum += step_loss
            run.step += 1
            window_steps += 1
            bar.update(1)
            log_now = run.step % cfg.log_every == 0 or run.step == cfg.max_steps
            stopping = stop.signum is not None
            if sync_ranks:  # saving is collective: ranks agree on stopping at log / checkpoint steps only
                if log_now or run.step % cfg.ckpt_every == 0:
                    flag = torch.tensor([float(stopping)], device=env.device)
                    stopping = bool(parallel.all_reduce_sum(flag).item() > 0)
                else:
                    stopping = False
            if log_now:
                last = _log(run, loss_sum, grad_norm, lr, window_steps, time.perf_counter() - window_start, data_s,
                            log_file, tb, bar)
                loss_sum.zero_()
                window_start, window_steps, data_s = time.perf_counter(), 0, 0.0
            at_end = run.step == cfg.max_steps and cfg.save_at_end
            if stopping or run.step % cfg.ckpt_every == 0 or at_end:
                folder = run.save()
                if stopping:
                    bar.close()
                    signum = stop.signum or signal.SIGTERM
                    run.say_main(f"hmar-train: stopped by {signal.Signals(signum).name} after step {run.step}; "
                                 f"checkpoint {folder}; continue with: hmar-train --resume {cfg.out}")
                    raise SystemExit(128 + int(signum))
    bar.close()
    if cfg.save_at_end:
        run.export()
    return last


def _log(run: Run, loss_sum, grad_norm, lr, steps, seconds, data_s, log_file, tb, bar) -> dict:
    cfg, env = run.cfg, run.env
    from torch.distributed.tensor import DTensor

    if isinstance(grad_norm, DTensor):
        grad_norm = grad_norm.full_tensor()
    loss = parallel.all_reduce_sum(loss_sum.clone()).item() / env.world / steps
    scale = run.stats.reduce_and_reset(parallel.all_reduce_sum)
    images = cfg.batch * steps
    record = {"step": run.step, "loss": loss, **scale, "lr": lr, "grad_norm": float(grad_norm),
              "tokens_per_s": images * run.L / seconds, "images_per_s": images / seconds,
              "step_ms": 1000 * seconds / steps, "data_ms": 1000 * data_s / steps,
              "peak_mem_gb": _peak_mem_gb(env.device)}
    if run.scaler.is_enabled():
        record["loss_scale"] = run.scaler.get_scale()
    if not env.main:
        return record
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    if tb is not None:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "peak_mem_gb"):
            tb.add_scalar(f"train/{key}", record[key], run.step)
        for k, (sl, sa) in enumerate(zip(scale["scale_loss"], scale["scale_acc"])):
            if sl is not None:
                tb.add_scalar(f"scale_loss/{k}", sl, run.step)
                tb.add_scalar(f"scale_acc/{k}", sa, run.step)
        tb.flush()
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
    acc_last = scale["scale_acc"][-1]
    bar.write(f"step {run.step:>7d}  loss {loss:.4f}  acc(last scale) "
              f"{'-' if acc_last is None else f'{acc_last:.3f}'}  lr {lr:.3e}  {record['step_ms']:.1f} ms/step  "
              f"{record['tokens_per_s']:.0f} tok/s  {record['peak_mem_gb']:.2f} GB")
    return record



