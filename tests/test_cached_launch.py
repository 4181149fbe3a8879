"""CachedLaunch: a compiled kernel is reused only where Triton would have specialised it the same way."""
import pytest
import torch

from conftest import requires_cuda
from hmar_kernels.tiles import LaunchTables
from hmar_kernels.backends.triton import cached_launch as launcher


class FakeCompiled:
    """What fn[grid] returns on a GPU: records the raw launches made through ``run``."""

    def __init__(self, log):
        self.log, self.function, self.packed_metadata = log, object(), object()

    def run(self, gx, gy, gz, stream, function, metadata, launch_metadata, enter, exit_, *args):
        self.log.append(("run", self, (gx, gy, gz), args))


class FakeJit:
    """Stands in for a @triton.jit function: every fn[grid](...) is a Triton launch (and maybe a compile)."""

    def __init__(self):
        self.log = []

    def __getitem__(self, grid):
        def launch(*args, num_warps, num_stages):
            kernel = FakeCompiled(self.log)
            self.log.append(("triton", kernel, grid, args))
            return kernel
        return launch


@pytest.fixture
def fake_stream(monkeypatch):
    monkeypatch.setattr(launcher, "current_stream", lambda device: 0)


def test_reuses_a_kernel_only_for_the_same_specialisation(fake_stream):
    fn = FakeJit()
    launch = launcher.CachedLaunch(fn)
    x = torch.zeros(64, dtype=torch.float16)
    tables = LaunchTables([torch.zeros(4, dtype=torch.int32), torch.zeros((3, 2), dtype=torch.int32)])
    cases = [(16, 680), (32, 680), (16, 688), (3, 680), (1, 680), (16, 2**31 + 8), (16, 680), (5, 680)]
    for h, length in cases:
        launch((3, 1, 1), [x, h, length, 0.5], tables, (64, 128), 4, 3)
    kinds = [entry[0] for entry in fn.log]
    # 16 and 32 are both multiples of 16 (same class), 3 and 5 neither; 688 is one and 680 not; 1 is specialised
    # (unlike 3); 2**31 + 8 needs 64 bits.
    assert kinds == ["triton", "run", "triton", "triton", "triton", "triton", "run", "run"]
    first = fn.log[0][1]
    assert fn.log[1][1] is first and fn.log[6][1] is first and fn.log[7][1] is fn.log[3][1]
    # The cached launch passes raw pointers for tensors, the table pointers, then the constexprs.
    assert fn.log[1][3] == (x.data_ptr(), 32, 680, 0.5, *tables.pointers, 64, 128)
    assert fn.log[0][3][:4] == (x, 16, 680, 0.5) and fn.log[0][3][4] is tables.tensors[0]


def test_new_dtype_config_or_alignment_compiles_again(fake_stream):
    fn = FakeJit()
    launch = launcher.CachedLaunch(fn)
    base = torch.zeros(64, dtype=torch.float16)
    for x, constexprs, warps in [(base, (64,), 4), (base.float(), (64,), 4), (base, (128,), 4), (base, (64,), 8),
                                 (base[1:], (64,), 4), (base, (64,), 4)]:
        launch((1, 1, 1), [x], None, constexprs, warps, 3)
    assert [entry[0] for entry in fn.log] == ["triton"] * 5 + ["run"]


def test_launch_hooks_go_through_triton(fake_stream, monkeypatch):
    fn = FakeJit()
    launch = launcher.CachedLaunch(fn)
    x = torch.zeros(64, dtype=torch.float16)
    monkeypatch.setattr(launcher, "launch_hooks_set", lambda: True)
    for _ in range(2):
        launch((1, 1, 1), [x], None, (64,), 4, 3)
    assert [entry[0] for entry in fn.log] == ["triton", "triton"]


def test_descriptor_matches_tensor_descriptor():
    from triton.tools.tensor_descriptor import TensorDescriptor

    t = torch.zeros(2, 1, 40, 64, dtype=torch.bfloat16)[:, :, 8:]
    fast = launcher.descriptor(t, 32)
    assert type(fast) is TensorDescriptor
    slow = TensorDescriptor(t, list(t.shape), [t.stride(0), 64, t.stride(2), 1], [1, 1, 32, 64])
    assert (fast.base is slow.base and fast.shape == slow.shape and fast.strides == slow.strides
            and fast.block_shape == slow.block_shape and fast.padding == slow.padding)


@requires_cuda
@pytest.mark.gpu
def test_alternating_specialisations_stay_correct_on_gpu():
    """H = 1 is specialised by Triton as a constant: alternating H and L classes must recompile, not reuse."""
    from test_triton import run_and_check
    from hmar_kernels.tiles import named_pattern_bits

    for pn, heads in [((1, 2, 3, 4), 4), ((1, 2, 3, 4), 1), ((2, 4), 4), ((1, 2, 3, 4), 4), ((2, 4), 1)]:
        torch.manual_seed(heads)
        run_and_check(pn, named_pattern_bits("block_causal", len(pn)), batch=2, heads=heads, head_dim=64,
                      dtype=torch.bfloat16, scale=0.125)
