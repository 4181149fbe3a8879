"""hmar-train's fused step (q/k-norm kernels in the Triton CPU interpreter, chunked head + cross-entropy with hits)
against the unfused one (logits → cross-entropy): the same losses, per-scale losses and accuracies, gradient norms
and weights, to fp32 tolerance, on the tiny recipe for a few steps of the next-scale and the masked stage."""
import json

import pytest
import torch

from hmar_model.train.config import load_config
from hmar_model.train.loop import Run, _loop

STEPS = 4


def _run(out, fused: bool, *overrides):
    cfg = load_config("tiny", [f"max_steps={STEPS}", "ckpt_every=1000", f"fused={str(fused).lower()}", f"out={out}",
                               *overrides])
    out.mkdir(parents=True)
    run = Run(cfg, resume=False, say=print)
    assert run.fused is fused
    _loop(run)
    with open(out / "log.jsonl") as f:
        return [json.loads(line) for line in f], {n: p.detach().clone() for n, p in run.model.named_parameters()}


def _same_up_to_rounding(fused, unfused):
    (got, got_weights), (want, want_weights) = fused, unfused
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), g["step"]
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-4), g["step"]
        # per-scale losses; the masked stage has none at scale 0 (never masked): None in both
        assert [x is None for x in g["scale_loss"]] == [x is None for x in w["scale_loss"]], g["step"]
        assert ([x for x in g["scale_loss"] if x is not None]
                == pytest.approx([x for x in w["scale_loss"] if x is not None], rel=1e-5)), g["step"]
        # hits: the same argmax unless two logits are within rounding of each other (not at these random weights)
        assert g["scale_acc"] == w["scale_acc"], g["step"]
    assert got[-1]["loss"] != got[0]["loss"]  # the weights did move
    assert any(acc for r in got for acc in r["scale_acc"])  # some hits, so the hit comparison means something
    for name, value in want_weights.items():
        torch.testing.assert_close(got_weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU comparison (Triton interpreter, no TF32); on CUDA "
                    "test_train_gpu.py compares the fused and unfused steps")
def test_fused_trainer_equals_unfused_next_scale_then_masked(tmp_path, one_thread):
    unfused = _run(tmp_path / "nsp", False)
    _same_up_to_rounding(_run(tmp_path / "nsp-fused", True, "save_at_end=false"), unfused)
    masked = ("stage=masked", f"init={tmp_path / 'nsp'}", "save_at_end=false")
    _same_up_to_rounding(_run(tmp_path / "mp-fused", True, *masked), _run(tmp_path / "mp", False, *masked))


def test_fused_default_is_on_for_cuda_only(tmp_path, one_thread):
    cfg = load_config("tiny", [f"out={tmp_path}"])
    assert cfg.fused is None
    run = Run(cfg, resume=False, say=print)
    assert run.fused is (run.env.device.type == "cuda")
