"""hmar-train on a CUDA device (skipped without one): bf16 and fp16 (grad scaler) steps, FSDP2 at world size 1,
and exact resume with the prefetching data thread. CPU coverage is in test_train_run.py."""
import json
import shutil

import pytest
import torch

from hmar_model.train.config import load_config
from hmar_model.train.loop import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none found)")]


def _losses(run):
    with open(run / "log.jsonl") as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.mark.parametrize("overrides", [["precision=bf16"], ["precision=fp16"], ["distributed=fsdp"]])
def test_tiny_trains_on_cuda(tmp_path, overrides):
    cfg = load_config("tiny", ["synthetic_samples=8", "batch=8", "max_steps=30", "lr=1e-2", "threads=0",
                               f"out={tmp_path / 'run'}", *overrides])
    train(cfg)
    losses = _losses(tmp_path / "run")
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.8 * losses[0], losses


def test_resume_on_cuda_continues_the_trajectory(tmp_path):
    base = ["data=synthetic", "max_steps=12", "ckpt_every=5", "threads=0", "precision=bf16"]
    train(load_config("tiny", base + [f"out={tmp_path / 'a'}"]))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "ckpt" / "step-00000012")  # resume from step 10, redo steps 11 and 12
    train(load_config("tiny", base + [f"out={tmp_path / 'b'}"]), resume=True)
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    # GPU kernels may reduce in another order between runs (atomics): equal to bf16-level noise, not bitwise
    assert len(b) == 12 and b == pytest.approx(a, rel=2e-2)


@pytest.mark.parametrize("compile", [False, True])
def test_fused_step_equals_unfused_on_cuda(tmp_path, compile):
    """fused=true (q/k-norm kernels, chunked head + CE with hits) against fused=false, fp32 without TF32, with and
    without compile: the same losses and per-scale accuracies up to float rounding."""
    base = ["data=synthetic", "max_steps=6", "precision=fp32", "tf32=false", "threads=0", "save_at_end=false",
            "ckpt_every=1000", f"compile={str(compile).lower()}"]
    records = {}
    for fused in (True, False):
        out = tmp_path / f"fused-{fused}"
        train(load_config("tiny", base + [f"fused={str(fused).lower()}", f"out={out}"]))
        with open(out / "log.jsonl") as f:
            records[fused] = [json.loads(line) for line in f]
    got, want = records[True], records[False]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in want], rel=1e-4)
    for g, w in zip(got, want):
        assert g["scale_loss"] == pytest.approx(w["scale_loss"], rel=1e-4)
        assert g["scale_acc"] == pytest.approx(w["scale_acc"], abs=1 / 256)  # a near-tie may flip one hit


@pytest.mark.parametrize("stage", ["next-scale", "masked"])
def test_cuda_graph_steps_equal_the_steps_without_graph(tmp_path, stage, recwarn):
    """cuda_graph=true (default on CUDA) replays each optimiser step as one graph: the same loss trajectory as
    cuda_graph=false, with no 'without a CUDA graph' notice (a failed capture would give one). No label dropout
    or drop path: the graph draws other random numbers than the eager step."""
    base = ["data=synthetic", "synthetic_samples=16", "batch=8", "accum=2", "max_steps=8", "log_every=1",
            "threads=0", "precision=bf16", "save_at_end=true", "model.cond_drop_rate=0.0", "model.drop_path_rate=0.0"]
    if stage == "masked":
        train(load_config("tiny", base + ["cuda_graph=false", f"out={tmp_path / 'init'}"]))
        base += ["stage=masked", f"init={tmp_path / 'init'}"]
    recwarn.clear()
    for graph in ("true", "false"):
        train(load_config("tiny", base + [f"cuda_graph={graph}", f"out={tmp_path / graph}"]))
    notices = [str(w.message) for w in recwarn if "without a CUDA graph" in str(w.message)]
    assert not notices, notices
    graphed, eager = _losses(tmp_path / "true"), _losses(tmp_path / "false")
    assert len(graphed) == 8 and graphed == pytest.approx(eager, rel=1e-3)


def test_fp16_runs_without_graph_and_says_why(tmp_path):
    cfg = load_config("tiny", ["data=synthetic", "synthetic_samples=8", "batch=8", "max_steps=2", "threads=0",
                               "precision=fp16", f"out={tmp_path / 'run'}"])
    with pytest.warns(UserWarning, match="without a CUDA graph because precision=fp16"):
        train(cfg)
