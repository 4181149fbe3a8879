"""Sampling: the scale loop shared by VAR, HMAR-NSP and HMAR, HMAR's masked refinement, and their pieces.

    images = sample(model, vqvae, labels=[207, 360], cfg=1.5, top_k=900, top_p=0.96, seed=0)   # (B, 3, R, R) in [0, 1]

Per scale k (0-based, K scales): the model predicts scale k's n_k tokens (VAR: attending its KV cache; HMAR: this
scale's tokens only), logits are mixed with the unconditional half as (1 + t)·cond − t·uncond with the linear
ramp t = cfg·k/(K − 1), filtered in place by top-k then top-p, and sampled with ``torch.multinomial`` on the
call's generator. HMAR then optionally refines the scale with masked-prediction passes (``mask_schedule``), and
the scale is committed to f̂. Images are ``(decoder(f̂) + 1) / 2``.

How the loop runs never changes what it computes (same seed, same tokens, bit for bit):

* ``reference=True``: the plain loop, the one every other way is tested against;
* default: the same kernels on the same values, minus what costs without computing anything: the multinomial
  draw without its host-side input checks (two device→host syncs per draw), the guidance mix with one (B, l, V)
  buffer instead of three, and top-k/top-p filtering in row chunks (its sort keeps values, int64 order and a
  softmax of every logit alive). At 1024 px (n = 4096, B = 32, V = 4096) that is 3 instead of 5 fp32 logit
  buffers of 2.1 GB at the last scale;
* ``cuda_graphs`` (default on CUDA): that loop, every scale and refinement pass, captured once per (model,
  batch, settings) as one CUDA graph and replayed. The small scales are launch-bound (≈ 40 kernels per block,
  hundreds per step, for a few thousand tokens), which the replay removes. VAR gets the same treatment.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import math
import numbers
import weakref
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from .blocks import call_block
from .pairing import check_fit
from .progress import progress_ticks, validate_progress
from .schedules import default_mask_schedule, no_refinement_schedule, validate_mask_schedule

OFFICIAL_REFINE_GUIDANCE_FACTOR = 1e-6  # upstream hard-codes t = cfg·1e-6 in refinement passes (≈ no guidance)


# ---- pieces ----
def guidance_ratio(si: int, num_scales: int) -> float:
    return si / (num_scales - 1) if num_scales > 1 else 0.0


def cfg_mix(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """(1 + t)·cond − t·uncond; the batch holds the conditional half first."""
    B = logits_2BlV.shape[0] // 2
    return (1 + t) * logits_2BlV[:B] - t * logits_2BlV[B:]


def cfg_mix_lean(logits_2BlV: torch.Tensor, t: float) -> torch.Tensor:
    """``cfg_mix`` with the same roundings ((1 + t)·cond, t·uncond, their difference) and one new (B, l, V) buffer
    instead of three; scales the unconditional half of ``logits_2BlV`` in place."""
    B = logits_2BlV.shape[0] // 2
    return torch.mul(logits_2BlV[:B], 1 + t).sub_(logits_2BlV[B:].mul_(t))


def filter_top_k_top_p_(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """In place: −inf below the k-th largest logit (ties kept), then drop the least likely tokens whose total
    probability is ≤ 1 − top_p (the most likely token always stays). ``top_k ≤ 0`` / ``top_p ≤ 0`` disable."""
    V = logits_BlV.shape[-1]
    if top_k > 0:
        kth = logits_BlV.topk(min(top_k, V), dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        ascending, order = logits_BlV.sort(dim=-1, descending=False)
        drop_sorted = ascending.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        drop_sorted[..., -1:] = False
        logits_BlV.masked_fill_(drop_sorted.scatter(-1, order, drop_sorted), -torch.inf)
    return logits_BlV


FILTER_CHUNK_ELEMENTS = 1 << 25  # 8192 rows of V = 4096: the sort's values, int64 order and softmax take 0.5 GB


def filter_rows_(logits_BlV: torch.Tensor, top_k: int, top_p: float,
                 chunk_elements: int = FILTER_CHUNK_ELEMENTS) -> torch.Tensor:
    """``filter_top_k_top_p_`` over chunks of rows (every step is per row: the same values, less scratch memory)."""
    rows = logits_BlV.view(-1, logits_BlV.shape[-1])
    step = max(1, chunk_elements // rows.shape[1])
    for r in range(0, rows.shape[0], step):
        filter_top_k_top_p_(rows[r:r + step], top_k, top_p)
    return logits_BlV


def sample_tokens(logits_BlV: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One multinomial draw per position, (B, l) int64."""
    B, l, V = logits_BlV.shape
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator).view(B, l)


def sample_tokens_sync_free(logits_BlV: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``sample_tokens`` without the host syncs: torch.multinomial draws one sample as argmax(p / q), q ~ Exp(1)
    from one ``exponential_`` over the (B·l, V) probabilities, after checking p on the host (two ``.item()``
    syncs in most versions, which also forbid CUDA-graph capture). This is that draw without the check: the same
    generator calls, the same tokens (tests/test_model_sampling.py compares them)."""
    B, l, V = logits_BlV.shape
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.div(probs, q, out=q).argmax(dim=-1).view(B, l)


class LoopOps(NamedTuple):
    """The three steps whose implementation differs between the reference loop and the default one."""
    mix: Callable[[torch.Tensor, float], torch.Tensor]
    filter: Callable[[torch.Tensor, int, float], torch.Tensor]
    draw: Callable[[torch.Tensor, Optional[torch.Generator]], torch.Tensor]


REFERENCE_OPS = LoopOps(cfg_mix, filter_top_k_top_p_, sample_tokens)
FAST_OPS = LoopOps(cfg_mix_lean, filter_rows_, sample_tokens_sync_free)


def gumbel_soft_codes(filtered_logits_BlV: torch.Tensor, ratio: float, codebook_VC: torch.Tensor,
                      generator: Optional[torch.Generator]) -> torch.Tensor:
    """VAR's "more_smooth" visualisation: a Gumbel-softmax mixture of codes instead of the sampled code, with
    temperature max(0.27·(1 − 0.95·ratio), 0.005) on the filtered logits ×(1 + ratio). (B, l, Cvae)."""
    tau = max(0.27 * (1 - ratio * 0.95), 0.005)
    noise = -torch.empty_like(filtered_logits_BlV).exponential_(generator=generator).log()
    weights = ((filtered_logits_BlV * (1 + ratio) + noise) / tau).softmax(dim=-1)
    return weights @ codebook_VC.to(weights.dtype)


def probability_of(logits_BlV: torch.Tensor, idx_Bl: torch.Tensor) -> torch.Tensor:
    """softmax(logits) at the chosen tokens, (B, l)."""
    return logits_BlV.softmax(dim=-1).gather(-1, idx_Bl.unsqueeze(-1)).squeeze(-1)


def least_confident(prob_Bn: torch.Tensor, candidates_Bn: torch.Tensor, count_B: torch.Tensor) -> torch.Tensor:
    """Bool (B, n): the ``count_B[b]`` lowest-probability positions among ``candidates`` of every sample."""
    score = prob_Bn.masked_fill(~candidates_Bn, torch.inf)
    order = score.argsort(dim=1)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order))
    return rank < count_B.unsqueeze(1)


# ---- the scale loop ----
ScaleHook = Callable[..., torch.Tensor]


@torch.no_grad()
def generate(model, quantizer, label_B: torch.Tensor, *, cfg: float, top_k: int, top_p: float,
             generator: Optional[torch.Generator], more_smooth: bool = False, scale_hook: Optional[ScaleHook] = None,
             reference: bool = False, on_scale: Optional[Callable[[int], object]] = None
             ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run every scale; returns (f̂ (B, Cvae, P, P) fp32, token maps [(B, n_k)]).

    ``scale_hook(si, idx, filtered_logits, f_hat, cond_2BD, lvl_pos)`` may replace a scale's tokens before they
    are committed (HMAR refinement, editing); it returns (idx, refined) with refined telling whether it changed
    anything (Gumbel smoothing is then skipped for that scale, its logits no longer describe the tokens).
    ``reference`` runs the plain ops (REFERENCE_OPS) instead of FAST_OPS: the same tokens.
    ``on_scale(1)`` is called after each scale is committed (progress).
    """
    ops = REFERENCE_OPS if reference else FAST_OPS
    patch_nums, K, B = model.patch_nums, len(model.patch_nums), label_B.shape[0]
    P = patch_nums[-1]
    label_2B = torch.cat((label_B, torch.full_like(label_B, model.num_classes)))
    cond_2BD = model.class_emb(label_2B)
    lvl_pos = model.lvl_pos()
    tokens = model.start_tokens(cond_2BD, lvl_pos)
    f_hat = quantizer.embedding.weight.new_zeros(B, quantizer.channels, P, P)  # fp32 accumulation
    state = model.inference_state()
    indices = []
    for si, p in enumerate(patch_nums):
        ratio = guidance_ratio(si, K)
        logits_BlV = ops.filter(ops.mix(model.next_scale_logits(tokens, cond_2BD, state), cfg * ratio), top_k, top_p)
        idx = ops.draw(logits_BlV, generator)
        refined = False
        if scale_hook is not None:
            idx, refined = scale_hook(si, idx, logits_BlV, f_hat, cond_2BD, lvl_pos)
        if more_smooth and not refined:
            codes = gumbel_soft_codes(logits_BlV, ratio, quantizer.embedding.weight, generator)
            h = codes.transpose(1, 2).reshape(B, quantizer.channels, p, p)
        else:
            h = quantizer.lookup(idx, p)
        f_hat, nxt = quantizer.next_autoregressive_input(si, patch_nums, f_hat, h)
        indices.append(idx)
        if on_scale is not None:
            on_scale(1)
        if si < K - 1:
            begin, end = model.scale_ranges[si + 1]
            tokens = (model.word_tokens(nxt.flatten(2).transpose(1, 2)) + lvl_pos[:, begin:end]).repeat(2, 1, 1)
    return f_hat, indices


def refine(model, quantizer, si: int, idx_Bn: torch.Tensor, masked_Bn: torch.Tensor,
           remaining: Sequence[torch.Tensor], f_hat: torch.Tensor, cond_2BD: torch.Tensor, lvl_pos: torch.Tensor,
           *, guidance: float, top_k: int, top_p: float, generator, reference: bool = False) -> torch.Tensor:
    """Masked-prediction passes over scale si of an HMAR model (f̂ holds scales < si and is not modified).

    Pass s re-samples the ``masked`` positions given the context ↓f̂ and the scale's unmasked tokens; then only
    the ``remaining[s][b]`` least confident of them stay masked for pass s + 1 (the last entry must be 0).
    ``guidance`` is the CFG factor t of these passes; with t = 0 the unconditional half is not computed.
    """
    ops = REFERENCE_OPS if reference else FAST_OPS
    patch_nums, p = model.patch_nums, model.patch_nums[si]
    begin, end = model.scale_ranges[si]
    B = idx_Bn.shape[0]
    cond = cond_2BD if guidance != 0 else cond_2BD[:B]
    for step, count_B in enumerate(remaining):
        ctx, own = quantizer.next_mask_input(si, patch_nums, f_hat, quantizer.lookup(idx_Bn, p))
        tokens = model.mask_tokens(ctx.flatten(2).transpose(1, 2), own.flatten(2).transpose(1, 2), masked_Bn)
        tokens = tokens + lvl_pos[:, begin:end]
        logits = model.mask_logits(tokens.repeat(2, 1, 1) if guidance != 0 else tokens, cond)
        logits = ops.filter(ops.mix(logits, guidance) if guidance != 0 else logits, top_k, top_p)
        new = ops.draw(logits, generator)
        idx_Bn = torch.where(masked_Bn, new, idx_Bn)
        if step == len(remaining) - 1:
            break
        masked_Bn = least_confident(probability_of(logits, idx_Bn), masked_Bn, count_B)
    return idx_Bn


def refinement_hook(model, quantizer, schedule, *, cfg: float, refine_guidance: Optional[float], top_k: int,
                    top_p: float, generator, reference: bool = False) -> ScaleHook:
    """HMAR's confidence-based refinement: keep the schedule[si][0] most confident proposed tokens, then each
    masked pass finalises schedule[si][s] more."""
    guidance = cfg * OFFICIAL_REFINE_GUIDANCE_FACTOR if refine_guidance is None else refine_guidance

    def hook(si, idx, logits, f_hat, cond_2BD, lvl_pos):
        counts = schedule[si]
        if len(counts) == 1 or idx.shape[1] == 1:
            return idx, False
        B, n = idx.shape
        left = [sum(counts[s + 1:]) for s in range(1, len(counts))]  # still masked after each pass
        full = lambda c: torch.full((B,), c, device=idx.device)  # noqa: E731
        masked = least_confident(probability_of(logits, idx), torch.ones_like(idx, dtype=torch.bool),
                                 full(sum(counts[1:])))
        return refine(model, quantizer, si, idx, masked, [full(c) for c in left], f_hat, cond_2BD, lvl_pos,
                      guidance=guidance, top_k=top_k, top_p=top_p, generator=generator, reference=reference), True
    return hook


# ---- compiled forward passes (the default on CUDA through fast_sampling.fast_sampler) ----
class CompiledInference:
    """``model`` for the sampler with the transformer blocks of HMAR's per-scale passes (``next_scale_logits``,
    ``mask_logits``) compiled: regional compilation, one compiled block for every block of both passes.

        images = sample(CompiledInference(hmar), CompiledDecoding(vqvae), labels, dtype=torch.bfloat16, seed=0)

    ``blocks.call_block`` is compiled once with dynamic shapes; the block's parameters are graph inputs, so every
    block (base, next-scale and mask blocks alike) runs the same compiled code, at every scale and batch: two
    graphs in all (Dynamo specialises the one-token first scale), whatever the depth, where compiling whole passes
    traced and compiled every block of each pass. The embeddings and the head (a few kernels per pass) stay eager.
    Inductor fuses the ≈ 40 eager kernels of a block's LayerNorms, modulations, q/k normalisation and GELU into a
    few, and its kernels are captured in the loop's CUDA graph as the eager ones are. Compiled rounding differs
    from eager: greedy tokens (top_k = 1) equal the reference loop's, sampled ones can differ where a draw sits on
    a rounding boundary. VAR's KV-cached steps run uncompiled (its cache lengths change every scale; HMAR-NSP,
    stateless, is compiled). The model itself is not modified; every other attribute is the model's. All wrappers
    share ``call_block``'s Dynamo cache: two entries per block shape and precision, of Dynamo's recompile limit.
    """

    def __init__(self, model, compile_backend: str = "inductor"):
        self.model = model
        self._call_block = torch.compile(call_block, backend=compile_backend, dynamic=True, fullgraph=True)
        if hasattr(model, "mask_logits"):
            self.mask_logits = functools.partial(model.mask_logits, call=self._call_block)

    def next_scale_logits(self, tokens_BlC, cond_BD, state=None):
        if state is not None:  # VAR's KV cache
            return self.model.next_scale_logits(tokens_BlC, cond_BD, state)
        return self.model.next_scale_logits(tokens_BlC, cond_BD, state, call=self._call_block)

    def __getattr__(self, name):  # only called for names not set above: the model's
        return getattr(self.__dict__["model"], name)


# ---- CUDA graphs of the whole loop ----
class GraphedLoop:
    """``loop(label_B, generator) → (f̂, token maps)`` captured once as one CUDA graph, then replayed.

    Replay reads the labels from a static copy and the random stream from a private generator registered with the
    graph: each call loads the caller's generator state into it and hands the advanced state back, so that a
    replay draws exactly what the eager loop would (same seed, same tokens) and the caller's stream goes on as
    after an eager call. Outputs are cloned (the next replay overwrites the captured ones).
    """

    def __init__(self, loop, label_B: torch.Tensor):
        self.label_B = label_B.clone()
        self.generator = torch.Generator(device=label_B.device)
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(self.generator)
        # Autocast caches the low-precision copy of every weight until its context exits. Copies made before the
        # capture live outside the graph's memory and may be freed before a replay; copies made during it must not
        # serve eager code after it. Clearing on both sides puts the casts inside the graph (once per replay).
        torch.clear_autocast_cache()
        with torch.cuda.graph(self.graph):
            self.f_hat, self.indices = loop(self.label_B, self.generator)
        torch.clear_autocast_cache()

    def __call__(self, label_B: torch.Tensor, generator: Optional[torch.Generator]):
        source = generator if generator is not None else torch.cuda.default_generators[label_B.device.index]
        self.label_B.copy_(label_B)
        self.generator.set_state(source.get_state())
        self.graph.replay()
        source.set_state(self.generator.get_state())
        return self.f_hat.clone(), [idx.clone() for idx in self.indices]


# Per model: the settings keys seen once (their first call runs eagerly and is the capture's warm-up) and the one
# graph kept. One graph per model: a graph holds its peak activation memory (VAR: its whole KV cache) while cached.
_GRAPHS: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()
_MAX_SEEN_KEYS = 64


def release_graphs(model=None) -> None:
    """Free the CUDA graph (and its memory pool) cached for ``model``, or for every model."""
    if model is None:
        _GRAPHS.clear()
    else:
        _GRAPHS.pop(model, None)


def graphs_supported(device) -> bool:
    return (torch.device(device).type == "cuda" and torch.cuda.is_available()
            and hasattr(torch.cuda.CUDAGraph, "register_generator_state"))


def resolve_cuda_graphs(cuda_graphs: Optional[bool], device, reference: bool) -> bool:
    """None → on for CUDA models (unless ``reference``); True where graphs cannot run raises."""
    if cuda_graphs is None:
        return not reference and graphs_supported(device)
    if cuda_graphs and reference:
        raise ValueError("cuda_graphs=True replays the default loop but reference=True asks for the plain one; "
                         "pass one of them")
    if cuda_graphs and not graphs_supported(device):
        raise ValueError(f"cuda_graphs=True needs a CUDA model and torch.cuda.CUDAGraph.register_generator_state "
                         f"(torch {torch.__version__}); the model is on {torch.device(device)}")
    return bool(cuda_graphs)


def _numerics_key() -> tuple:
    """Global switches that choose kernels: a graph replays the kernels chosen when it was captured."""
    cuda, cudnn = torch.backends.cuda, torch.backends.cudnn
    return (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), cuda.matmul.allow_tf32,
            cudnn.allow_tf32, torch.get_float32_matmul_precision(),
            cuda.matmul.allow_bf16_reduced_precision_reduction, cuda.matmul.allow_fp16_reduced_precision_reduction,
            cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled(),
            cuda.cudnn_sdp_enabled())


def graph_key(model, quantizer, label_B: torch.Tensor, settings: tuple) -> tuple:
    """What a captured loop depends on besides the values it reads at replay: settings, batch, numerics, and
    where every weight lives (a graph reads addresses: in-place updates are seen, new tensors need a capture)."""
    tensors = itertools.chain(model.parameters(), model.buffers(), quantizer.parameters(), quantizer.buffers())
    return (settings, tuple(label_B.shape), label_B.device, model.training, _numerics_key(),
            tuple((t.data_ptr(), t.dtype, tuple(t.shape)) for t in tensors))


def _cached_graph(model, key, capture) -> Optional[GraphedLoop]:
    """The graph for ``key``: None on its first call (run eagerly), captured on the second, then reused."""
    entry = _GRAPHS.setdefault(model, {"seen": set(), "key": None, "graph": None})
    if entry["key"] == key:
        return entry["graph"]
    if key not in entry["seen"]:
        if len(entry["seen"]) >= _MAX_SEEN_KEYS:
            entry["seen"].clear()
        entry["seen"].add(key)
        return None
    entry.update(key=None, graph=None)  # free the previous graph's memory before capturing
    entry.update(key=key, graph=capture())
    return entry["graph"]


def scale_loop(model, quantizer, label_B: torch.Tensor, *, cfg: float, top_k: int, top_p: float,
               generator: Optional[torch.Generator], mask_schedule=None, refine_guidance: Optional[float] = None,
               more_smooth: bool = False, cuda_graphs: Optional[bool] = None, reference: bool = False,
               on_scale: Optional[Callable[[int], object]] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``sample`` without labels and decoder: (f̂, token maps), under the caller's no_grad / autocast.

    ``mask_schedule``: a validated per-scale schedule (``resolve_mask_schedule``) or None (no refinement).
    ``cuda_graphs``: None → on for CUDA models. The first call with given settings runs eagerly (the warm-up),
    the second captures the loop, later ones replay it (``release_graphs`` frees it).
    ``on_scale(steps)``: progress, after every scale (eager) or once with K after a replay.
    """
    refined = mask_schedule is not None and any(len(c) > 1 for c in mask_schedule)

    def loop(label_B, generator, on_scale=None):
        hook = None
        if refined:
            hook = refinement_hook(model, quantizer, mask_schedule, cfg=cfg, refine_guidance=refine_guidance,
                                   top_k=top_k, top_p=top_p, generator=generator, reference=reference)
        return generate(model, quantizer, label_B, cfg=cfg, top_k=top_k, top_p=top_p, generator=generator,
                        more_smooth=more_smooth, scale_hook=hook, reference=reference, on_scale=on_scale)

    if not resolve_cuda_graphs(cuda_graphs, label_B.device, reference):
        return loop(label_B, generator, on_scale)
    settings = (cfg, top_k, top_p, tuple(mask_schedule) if refined else None, refine_guidance if refined else None,
                more_smooth)
    with torch.cuda.device(label_B.device):
        graphed = _cached_graph(model, graph_key(model, quantizer, label_B, settings),
                                lambda: GraphedLoop(loop, label_B))
        if graphed is None:
            return loop(label_B, generator, on_scale)
        out = graphed(label_B, generator)
        if on_scale is not None:  # host code does not run in a replay: every scale at once
            on_scale(len(model.patch_nums))
        return out


# ---- public entry point ----
def make_generator(seed: Optional[int], device) -> Optional[torch.Generator]:
    if seed is None:
        return None
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def labels_tensor(labels, num_images: Optional[int], num_classes: int, generator, device) -> torch.Tensor:
    """int (all the same; negative → the null class), sequence/tensor of ints, or None (uniformly random)."""
    if labels is None:
        if num_images is None:
            raise ValueError("give labels or num_images (with labels=None the classes are drawn at random)")
        uniform = torch.ones(num_classes, device=device)
        return torch.multinomial(uniform, num_images, replacement=True, generator=generator)
    if isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        if num_images is None:
            raise ValueError("labels is a single class: give num_images too")
        value = num_classes if labels < 0 else int(labels)
        labels = [value] * num_images
    label_B = torch.as_tensor(labels, device=device).long().view(-1)
    if num_images is not None and label_B.numel() != num_images:
        raise ValueError(f"got {label_B.numel()} labels but num_images = {num_images}")
    if label_B.numel() == 0 or label_B.min() < 0 or label_B.max() > num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}] ({num_classes} = unconditional), got "
                         f"{label_B.tolist()}")
    return label_B


def precision_context(device, dtype):
    """autocast to bf16/fp16, or nothing for fp32 (the official HMAR numerics)."""
    if dtype in (None, torch.float32):
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    return torch.autocast(torch.device(device).type, dtype=dtype)


def resolve_mask_schedule(model, mask_schedule):
    """"default" → the official schedule of the model's resolution (HMAR) or none (VAR/NSP); None → none."""
    has_mask_path = hasattr(model, "mask_logits")
    if isinstance(mask_schedule, str):
        if mask_schedule != "default":
            raise ValueError(f"mask_schedule must be 'default', None or a per-scale list, got {mask_schedule!r}")
        return default_mask_schedule(model.patch_nums) if has_mask_path else no_refinement_schedule(model.patch_nums)
    if mask_schedule is None:
        return no_refinement_schedule(model.patch_nums)
    schedule = validate_mask_schedule(mask_schedule, model.patch_nums)
    if not has_mask_path and any(len(c) > 1 for c in schedule):
        raise ValueError(f"mask_schedule asks for refinement but {type(model).__name__} has no masked-prediction "
                         "path; use the composite HMAR model (build_hmar / load an hmar-d*.pth)")
    return schedule


def sample(model, vqvae, labels=None, *, num_images: Optional[int] = None, cfg: float = 1.5, top_k: int = 900,
           top_p: float = 0.96, seed: Optional[int] = None, mask_schedule="default",
           refine_guidance: Optional[float] = None, more_smooth: bool = False, dtype: Optional[torch.dtype] = None,
           decode_chunk: Optional[int] = None, return_indices: bool = False, cuda_graphs: Optional[bool] = None,
           reference: bool = False, progress=False):
    """Class-conditional images (B, 3, R, R) in [0, 1] from VAR, HMAR-NSP or the composite HMAR model.

    Args:
        labels: int (with num_images), list/tensor of classes, or None (random classes); 1000 = unconditional.
        cfg: classifier-free guidance at the last scale (linear ramp from 0 at the first scale).
        top_k, top_p: filtering of the logits (≤ 0 disables).
        seed: seeds a generator on the model's device; same seed and settings → same images.
        mask_schedule: HMAR refinement, "default" (official schedule of the resolution), None (no refinement)
            or one count list per scale, e.g. [[1], [1, 3], [1, 1, 2, 5], [16], ...] (validated).
        refine_guidance: the CFG factor t of refinement passes; None reproduces upstream (t = cfg·1e-6), 0 skips
            the unconditional half.
        more_smooth: Gumbel-smoothed code maps (VAR's visualisation trick), on unrefined scales.
        dtype: None/float32, or torch.bfloat16 / torch.float16 autocast.
        decode_chunk: decode this many images at a time (bounds the decoder's memory at 1024 px).
        return_indices: also return the token maps [(B, n_k)].
        cuda_graphs: replay the scale loop as one CUDA graph (None: on for CUDA models). The first call with given
            settings and batch runs eagerly, the second captures; the graph stays cached with the model (one per
            model, ``release_graphs`` frees it). Same images as without.
        reference: the plain loop (torch.multinomial with its checks, whole-batch filtering), for comparisons.
        progress: True shows a tqdm bar (one step per scale, one for decoding); a callable gets the step counts.
    """
    device = model.lvl_1L.device
    check_fit(model.cfg, vqvae.cfg)
    validate_progress(progress)
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be finite, got {cfg}")
    schedule = resolve_mask_schedule(model, mask_schedule)
    resolve_cuda_graphs(cuda_graphs, device, reference)  # bad combinations fail before anything runs
    generator = make_generator(seed, device)
    label_B = labels_tensor(labels, num_images, model.num_classes, generator, device)
    with torch.no_grad(), precision_context(device, dtype), \
            progress_ticks(progress, len(model.patch_nums) + 1, "sampling") as tick:
        f_hat, indices = scale_loop(model, vqvae.quantize, label_B, cfg=cfg, top_k=top_k, top_p=top_p,
                                    generator=generator, mask_schedule=schedule, refine_guidance=refine_guidance,
                                    more_smooth=more_smooth, cuda_graphs=cuda_graphs, reference=reference,
                                    on_scale=tick)
        images = vqvae.fhat_to_img(f_hat, decode_chunk).float().add_(1).mul_(0.5)
        if tick is not None:
            tick(1)
    return (images, indices) if return_indices else images
