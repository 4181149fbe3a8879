"""The fast training step: one compiled graph for forward + loss (+ its backward), fused kernels, and the eager
reference it must match.

    step = TrainStep(model, optimizer)                       # compiled + fused on CUDA, eager reference elsewhere
    loss = step(label_B, x_BLCv_wo_first_l, target_BL)       # VAR / HMAR next-scale
    loss = step(label_B, x_ctx, x_own, masked, target_BL)    # HMAR masked prediction (MaskedPrediction)

The loss is Σ_t ce[b, t]·w[t] averaged over the batch (the official trainers' form; ``loss_weights`` (L,),
default uniform 1/L as VAR). What differs between the modes, never what is computed:

* ``fused``: the q/k normalisation runs as one Triton kernel per pass and the head is fused with the
  cross-entropy over row chunks (the (B, L, V) fp32 logits never exist);
* ``compile``: ``torch.compile(fullgraph=True)`` of forward + loss, shapes static (one graph per schedule and
  batch, no recompiles across steps); the backward is AOT autograd's compiled graph. The optimizer step stays
  outside (the fused AdamW is one multi-tensor kernel already);
* ``cuda_graph``: the whole step (forward, loss, backward, optimizer step, zero_grad) replays as one CUDA graph
  after three warm-up calls (``hmar_model.step_graph``); LR changes made through ``group["lr"]`` are followed.
"""
from __future__ import annotations

import torch

from .step_graph import StepGraph, static_problem, use_graph
from .train.loss import ce_and_hits, next_scale_loss


def uniform_loss_weights(length: int, device=None) -> torch.Tensor:
    """VAR's per-token weights: 1/L everywhere, (L,)."""
    return torch.full((length,), 1.0 / length, device=device)


def token_cross_entropy(model, inputs: tuple, target_BL: torch.Tensor, backend: str, fused: bool, forward=None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs → (ce_BL, hit_BL): per-token cross-entropy (differentiable) and argmax hits (bool).

    fused: hidden state → chunked head + CE (``model.head_cross_entropy``); else the reference, logits → CE.
    ``forward``: what runs the body (a DDP / FSDP wrapper of ``model``); default ``model`` itself."""
    forward = model if forward is None else forward
    if fused:
        x_BLC, cond_BD = forward(*inputs, backend=backend, fused=True, return_hidden=True)
        return model.head_cross_entropy(x_BLC, cond_BD, target_BL, return_hits=True)
    return ce_and_hits(forward(*inputs, backend=backend), target_BL)


def weighted_cross_entropy(model, inputs: tuple, target_BL: torch.Tensor, weights_L: torch.Tensor, backend: str,
                           fused: bool) -> torch.Tensor:
    """mean_b Σ_t ce[b, t]·w[t], fused or the reference (``token_cross_entropy``)."""
    ce_BL, hit_BL = token_cross_entropy(model, inputs, target_BL, backend, fused)
    return next_scale_loss(ce_BL, hit_BL, weights_L)[0]


class TrainStep:
    """``step(*model_inputs, target_BL) -> loss`` (detached): autocast forward, weighted loss, backward, optimizer
    step, gradients set to None.

    Args:
        model: VAR, NextScalePrediction or MaskedPrediction (anything whose forward takes ``backend``, ``fused``
            and ``return_hidden`` and has ``head_cross_entropy``), in train() mode.
        optimizer: stepped after every backward (None: the caller steps; gradients are then left in place).
        dtype: autocast dtype (None: fp32).
        compile, fused: None → on for CUDA models, off elsewhere (the eager, unfused reference).
        backend: attention backend of ``hmar_kernels.attention``.
        loss_weights: (L,) per-token weights; None → 1/L.
        cuda_graph: None → on for CUDA models given an optimizer (a one-time warning when that optimizer has no
            capturable mode); True → on, or a one-time warning saying why not; False → off.
            See ``hmar_model.step_graph``.
    """

    def __init__(self, model, optimizer=None, *, dtype: torch.dtype | None = torch.bfloat16,
                 compile: bool | None = None, fused: bool | None = None, backend: str = "auto",
                 loss_weights: torch.Tensor | None = None, cuda_graph: bool | None = None):
        if not hasattr(model, "head_cross_entropy"):
            raise TypeError(f"TrainStep trains VAR, NextScalePrediction or MaskedPrediction models, got "
                            f"{type(model).__name__} (the composite HMAR is assembled from trained NSP and MP models: "
                            "hmar_model.nsp_mp_to_hmar)")
        device = model.lvl_1L.device
        on_cuda = device.type == "cuda"
        self.model, self.optimizer, self.backend = model, optimizer, backend
        self.fused = on_cuda if fused is None else bool(fused)
        self.compiled = on_cuda if compile is None else bool(compile)
        if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        self.device_type, self.dtype = device.type, dtype
        self.autocast_on = dtype not in (None, torch.float32)
        length = model.lvl_1L.shape[1]
        self.weights_L = uniform_loss_weights(length, device) if loss_weights is None else loss_weights.to(device)
        if self.weights_L.shape != (length,):
            raise ValueError(f"loss_weights must be (L,) = ({length},), got {tuple(self.weights_L.shape)}")
        self.loss = torch.compile(self._loss, fullgraph=True) if self.compiled else self._loss
        if cuda_graph is None and optimizer is None:
            cuda_graph = False  # the caller steps: nothing to capture, nothing to warn about
        self.graphed = use_graph(cuda_graph, device, static_problem(device, optimizer), "TrainStep")
        self.run = StepGraph(self._step, optimizer, "TrainStep") if self.graphed else self._step

    def _loss(self, inputs, target_BL):
        with torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.autocast_on):
            return weighted_cross_entropy(self.model, inputs, target_BL, self.weights_L, self.backend, self.fused)

    def _step(self, *inputs_and_target) -> torch.Tensor:
        *inputs, target_BL = inputs_and_target
        loss = self.loss(tuple(inputs), target_BL)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def __call__(self, *inputs_and_target) -> torch.Tensor:
        return self.run(*inputs_and_target)
