"""A whole training step (forward, loss, backward, optimizer step, zero_grad) replayed as one CUDA graph.

    graphed = StepGraph(step_fn, optimizer, name="TrainStep")
    outputs = graphed(*tensors)                      # what step_fn(*tensors) returns, as fresh tensors

At 256 px the compiled step still launches thousands of small kernels; a replay launches them all with one host
call, so the GPU no longer waits on Python between kernels (≈ 4 ms of idle GPU per d16 step on an H200).

How: the first ``WARMUP_CALLS`` calls run ``step_fn`` eagerly on a side stream (compilation, autotuning, cuBLAS
workspaces, the optimizer's state). The next call copies its inputs into static buffers, captures ``step_fn``
with the optimizer's groups switched to capturable mode and device-tensor learning rates, and replays the graph;
every later call copies its inputs and replays. Outputs are clones of the graph's static outputs.

What a replay would not see, and what happens instead (never silently: one warning naming the reason):
* each group's lr: copied from the group into its device tensor before every replay, so LR schedules that assign
  ``group["lr"]`` keep working (the tensor is fp32: the lr is rounded to 24 bits);
* any other group hyperparameter (weight decay, betas, eps, ...) is a constant of the graph: when one changes,
  the graph is dropped and the step runs eagerly from then on; likewise for inputs of another shape, dtype or
  device, and for a capture that fails (an op that syncs the host, a copy from pageable CPU memory, ...).
Random numbers drawn on the GPU inside the step are fresh at every replay (PyTorch's graph-safe generator), but
not the same numbers the eager step would draw.
"""
from __future__ import annotations

import warnings

import torch

WARMUP_CALLS = 3  # PyTorch's whole-network capture recipe warms up 3 iterations on a side stream


def warn_no_graph(name: str, reason: str):
    """The one-time notice of a step that runs without a CUDA graph (Python's warning filter shows it once)."""
    warnings.warn(f"{name}: the training step runs without a CUDA graph because {reason}", stacklevel=3)


def static_problem(device: torch.device, optimizer) -> str | None:
    """Why a step on ``device`` with ``optimizer`` cannot be captured, or None."""
    if device.type != "cuda":
        return f"the model is on {device} (CUDA graphs need a CUDA device)"
    if optimizer is None:
        return "no optimizer was given (the graph holds the whole step, optimizer step and zero_grad included)"
    if not all("capturable" in group for group in optimizer.param_groups):
        return f"{type(optimizer).__name__} has no capturable mode"
    return None


def use_graph(requested: bool | None, device: torch.device, problem: str | None, name: str) -> bool:
    """The setting rule: False → off; None → on when nothing stands in the way (off without a word on a
    non-CUDA device); True → on, or a warning naming ``problem`` (what stands in the way, or None)."""
    if requested is False:
        return False
    if problem is None:
        return True
    if requested or device.type == "cuda":
        warn_no_graph(name, problem)
    return False


def _hyperparameters(optimizer) -> list[dict]:
    """Each group's settings other than params and lr (graph constants once captured)."""
    return [{key: value for key, value in group.items() if key not in ("params", "lr")}
            for group in optimizer.param_groups]


class StepGraph:
    """``step_fn(*tensors) -> tensor | tuple of tensors``, replayed as one CUDA graph after warm-up (module doc).

    ``step_fn`` must take only tensors, leave the gradients set to None (the optimizer's ``zero_grad``) and do the
    same work for every input of the captured shapes."""

    def __init__(self, step_fn, optimizer: torch.optim.Optimizer, name: str = "training step"):
        self.device = next(p.device for g in optimizer.param_groups for p in g["params"])
        problem = static_problem(self.device, optimizer)
        if problem is not None:
            raise ValueError(f"{name}: cannot capture the step: {problem}")
        self.step_fn, self.optimizer, self.name = step_fn, optimizer, name
        self.calls, self.graph, self.eager_only = 0, None, False
        self.capturable = [group["capturable"] for group in optimizer.param_groups]  # restored when giving up
        for group in optimizer.param_groups:
            group["capturable"] = True
        for state in optimizer.state.values():  # capturable steps keep their step counters on the device
            if torch.is_tensor(state.get("step")) and state["step"].device != self.device:
                state["step"] = state["step"].to(self.device)

    def _give_up(self, reason: str):
        warn_no_graph(self.name, reason)
        for group, capturable in zip(self.optimizer.param_groups, self.capturable):
            group["capturable"] = capturable  # the uncaptured foreach step is faster without it
        self.graph = self.static_in = self.static_out = self.lr_tensors = None
        self.eager_only = True

    def _warm_up(self, tensors):
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = self.step_fn(*tensors)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, tensors):
        self.static_in = [t.detach().clone() for t in tensors]
        self.lr_tensors = [torch.tensor(float(g["lr"]), dtype=torch.float32, device=self.device)
                           for g in self.optimizer.param_groups]
        self.hyperparameters = _hyperparameters(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated in the graph's pool
        torch.cuda.empty_cache()  # the warm-up's cached blocks: the graph gets a pool of its own, as large
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        graph = torch.cuda.CUDAGraph()
        try:
            for group, lr in zip(self.optimizer.param_groups, self.lr_tensors):
                group["lr"] = lr
            # thread_local: other threads (hmar-train's data prefetcher: pinned copies) may keep using CUDA
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.static_out = self.step_fn(*self.static_in)
        except Exception as err:  # noqa: BLE001 - any capture error: warned, and the step runs eagerly
            self.optimizer.zero_grad(set_to_none=True)  # whatever the failed capture allocated holds no values
            self._give_up(f"capturing it failed ({str(err).splitlines()[0]})")
            return
        finally:
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
        self.graph = graph

    def _replay_problem(self, tensors) -> str | None:
        if len(tensors) != len(self.static_in):
            return f"it was called with {len(tensors)} tensors, captured with {len(self.static_in)}"
        for i, (t, s) in enumerate(zip(tensors, self.static_in)):
            if t.shape != s.shape or t.dtype != s.dtype or t.device != s.device:
                return (f"input {i} is {tuple(t.shape)} {t.dtype} on {t.device}, captured as {tuple(s.shape)} "
                        f"{s.dtype} on {s.device}")
        if _hyperparameters(self.optimizer) != self.hyperparameters:
            return "an optimizer setting other than lr changed after capture (it is a constant of the graph)"
        return None

    def __call__(self, *tensors: torch.Tensor):
        if not all(isinstance(t, torch.Tensor) for t in tensors):
            raise TypeError(f"{self.name}: every step input must be a tensor, got "
                            f"{[type(t).__name__ for t in tensors]}")
        self.calls += 1
        if self.eager_only:
            return self.step_fn(*tensors)
        if self.calls <= WARMUP_CALLS:
            return self._warm_up(tensors)
        if self.graph is None:
            self._capture(tensors)
            if self.graph is None:
                return self.step_fn(*tensors)
        else:
            problem = self._replay_problem(tensors)
            if problem is not None:
                self._give_up(problem)
                return self.step_fn(*tensors)
        for static, t in zip(self.static_in, tensors):
            static.copy_(t)
        for group, lr in zip(self.optimizer.param_groups, self.lr_tensors):
            if torch.is_tensor(group["lr"]):
                lr.copy_(group["lr"])
            else:
                lr.fill_(group["lr"])
        self.graph.replay()
        if isinstance(self.static_out, torch.Tensor):
            return self.static_out.clone()
        return tuple(t.clone() for t in self.static_out)
