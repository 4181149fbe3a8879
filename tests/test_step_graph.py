"""The CUDA-graph setting rule of TrainStep and hmar-train on the CPU: off without a word by default, a one-time
warning naming the reason when asked for, and the static reasons themselves. Capture and replay are GPU tests
(test_model_fast_gpu.py, test_train_gpu.py)."""
import warnings

import pytest
import torch

from hmar_model.fast_step import TrainStep
from hmar_model.step_graph import StepGraph, static_problem, use_graph
from hmar_model.tiny import tiny_transformer
from hmar_model.train.config import load_config
from hmar_model.train.loop import Run

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_static_problems_name_the_reason():
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    adamw = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    assert "CUDA graphs need a CUDA device" in static_problem(CPU, adamw)
    assert "no optimizer was given" in static_problem(CUDA, None)
    if "capturable" not in sgd.param_groups[0]:
        assert "SGD has no capturable mode" in static_problem(CUDA, sgd)
    assert static_problem(CUDA, adamw) is None


def test_setting_rule():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert use_graph(None, CUDA, None, "x") and not use_graph(False, CUDA, "anything", "x")
        assert not use_graph(None, CPU, "the model is on cpu", "x")  # the default off a GPU: silent
    with pytest.warns(UserWarning, match="x: the training step runs without a CUDA graph because why"):
        assert not use_graph(True, CPU, "why", "x")
    with pytest.warns(UserWarning, match="because why"):
        assert not use_graph(None, CUDA, "why", "x")


def test_train_step_on_cpu():
    model = tiny_transformer("var")
    optimizer = torch.optim.AdamW(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not TrainStep(model, optimizer).graphed
    with pytest.warns(UserWarning, match="TrainStep: .* because the model is on cpu"):
        assert not TrainStep(model, optimizer, cuda_graph=True).graphed
    with pytest.raises(ValueError, match="cannot capture the step: the model is on cpu"):
        StepGraph(lambda: None, optimizer)


@pytest.mark.parametrize("overrides, reason", [(["cuda_graph=true"], "the model is on cpu"),
                                               (["cuda_graph=true", "precision=fp16"], "precision=fp16")])
def test_trainer_says_why_it_runs_without_graph(tmp_path, overrides, reason):
    cfg = load_config("tiny", ["data=synthetic", f"out={tmp_path}", *overrides])
    with pytest.warns(UserWarning, match=f"hmar-train: the training step runs without a CUDA graph because .*{reason}"):
        run = Run(cfg, resume=False, say=lambda text: None)
    assert not run.graphed
