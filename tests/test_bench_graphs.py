"""hmar-bench's CUDA-graph column on a GPU (skipped without one): the forward and the forward+backward of our
backends are captured, timed, and their replays give the eager results bit for bit (the same inputs through the
same deterministic kernels), which are themselves within the tolerance rule of the float64 reference."""
import math

import pytest
import torch

from conftest import HAS_CUDA, check_close
from hmar_bench import harness as bm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (none found)")]


# Deterministic backends, so replays equal eager bit for bit (cuda_sm80 sums dQ with atomics).
@pytest.fixture(params=["triton", "cuda"])
def case(request):
    case = bm.AttentionCase.at(256, "block_causal", request.param, "bf16", 2, 3, 64)
    why = case.unavailable(torch.device("cuda"))
    if why:
        pytest.skip(why)
    return case


def test_graph_columns_are_timed(case):
    inputs = bm.make_inputs(case, "cuda", sets=2)
    columns, problem = bm.measure_graphs(case, inputs, reps=3, warmup=1)
    assert problem is None
    assert set(columns) == set(bm.GRAPH_COLUMNS) and all(math.isfinite(v) and v > 0 for v in columns.values())
    assert columns["fwd_graph_ms"] < columns["fwdbwd_graph_ms"]


def test_replays_give_the_eager_outputs_and_gradients(case):
    attend = case.attend()
    inputs = bm.make_inputs(case, "cuda", sets=2, seed=1)
    fwd, fwd_static = bm.graph_replays(lambda s: bm.fwd_call(attend, s), inputs)
    fwdbwd, fwdbwd_static = bm.graph_replays(lambda s: bm.fwd_bwd_call(attend, s), inputs)
    for i, one_set in enumerate(inputs):
        with torch.no_grad():  # the captures ran with these inputs: scribble over the results first
            for t in (fwd_static[i], *fwdbwd_static[i]):
                t.fill_(float("nan"))
        fwd(i)
        fwdbwd(i)
        torch.cuda.synchronize()
        eager = bm.run_fwd_bwd(attend, one_set)
        assert torch.equal(fwd_static[i], eager[0]), f"{case.label()}: forward replay differs from eager"
        for name, got, want in zip(("dq", "dk", "dv"), fwdbwd_static[i], eager[1:]):
            assert torch.equal(got, want), f"{case.label()}: {name} replay differs from eager"
        golden = bm.reference_outputs(case, one_set, torch.float64, whole_batch=True)
        baseline = bm.reference_outputs(case, one_set, case.torch_dtype, whole_batch=True)
        for name, got, gold, base in zip(("out", "dq", "dk", "dv"), (fwd_static[i], *fwdbwd_static[i]), golden,
                                         baseline):
            check_close(f"{case.label()} {name}", got, gold, base)
