"""CUDA backend pieces that need no GPU: build flags, generated instantiations, problem() messages, the metadata
tensors handed to the extension."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hmar_kernels.backends import cuda

ROOT = Path(__file__).resolve().parent.parent


def _load_build():
    spec = importlib.util.spec_from_file_location("hmar_kernels_build", ROOT / "hmar_kernels" / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build


def test_build_flags_target_sm90a_for_sm90_sources_and_find_cutlass():
    build = _load_build()
    kwargs = build.extension_kwargs()
    nvcc = kwargs["extra_compile_args"]["nvcc"]
    assert "-gencode=arch=compute_90a,code=sm_90a" in nvcc
    assert not any(f.startswith("-std") for f in nvcc), "torch chooses the C++ standard"
    assert any((Path(d) / "cute" / "tensor.hpp").is_file() for d in kwargs["include_dirs"])
    sources = [Path(s).name for s in build.sources()]
    assert "api.cpp" in sources and "fwd_dispatch.cpp" in sources
    assert sum(s.startswith("fwd_") and s.endswith("_sm90.cu") for s in sources) == 12
    assert sum(s.startswith("bwd_") and s.endswith("_sm90.cu") for s in sources) == 4 * 7  # (D, dtype) × config
    assert "bwd_dispatch.cpp" in sources and "fwd_dispatch_sm80.cpp" in sources and "api_bwd.cpp" in sources
    assert not any(s.endswith("_sm80.cu") for s in sources), "the sm80 kernels need their own arch flags"
    assert [Path(s).name for s in build.sm80_sources()] == sorted(
        f"{p}_hdim{d}_{t}_sm80.cu" for p in ("fwd", "bwd") for d in (64, 128) for t in ("bf16", "fp16"))


def test_sm80_objects_use_their_arch_flags_and_are_reused(tmp_path, monkeypatch):
    """sm80 instantiations: sm_80 and sm_90 SASS plus compute_80 PTX (runs on A100 and Hopper), no sm_90a; one
    object per source, compiled again only when a source, header or flag changes."""
    build = _load_build()
    fake = tmp_path / "nvcc"  # records its calls and writes the object it is asked for
    fake.write_text("#!/bin/sh\necho \"$@\" >> %s/calls\nwhile [ $# -gt 1 ]; do [ \"$1\" = -o ] && : > \"$2\"; "
                    "shift; done\n" % tmp_path)
    fake.chmod(0o755)
    command = build.sm80_nvcc_command("nvcc", "a.cu", "a.o", [])
    for flag in ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_80,code=sm_90",
                 "-gencode=arch=compute_80,code=compute_80", "-fPIC"):
        assert flag in command
    assert not any("sm_90a" in f or "DIRECT_CUDA_DRIVER" in f for f in command)
    objects = build.sm80_objects(str(tmp_path / "objs"), str(fake), jobs=2)
    assert len(objects) == 8 and all(Path(o).is_file() for o in objects)
    assert len((tmp_path / "calls").read_text().splitlines()) == 8
    assert build.sm80_objects(str(tmp_path / "objs"), str(fake), jobs=2) == objects
    assert len((tmp_path / "calls").read_text().splitlines()) == 8, "unchanged sources were compiled again"
    monkeypatch.setenv("HMAR_CUDA_DEV_BUILD", "bf16")
    changed = build.sm80_objects(str(tmp_path / "objs"), str(fake), jobs=2)
    assert not set(changed) & set(objects) and "-DHMAR_NO_FP16" in (tmp_path / "calls").read_text()


def test_dev_build_switches(monkeypatch):
    build = _load_build()
    monkeypatch.setenv("HMAR_CUDA_DEV_BUILD", "hdim64,bf16")
    assert set(build.dev_build_defines()) == {"-DHMAR_NO_HDIM128", "-DHMAR_NO_FP16"}
    monkeypatch.setenv("HMAR_CUDA_DEV_BUILD", "hdim96")
    with pytest.raises(ValueError, match="hdim96"):
        build.dev_build_defines()


def test_instantiations_are_generated():
    subprocess.run([sys.executable, str(ROOT / "csrc" / "generate_kernels.py"), "--check"], check=True)


def test_problem_names_the_reason_on_cpu():
    assert "CUDA tensors" in cuda.problem(torch.device("cpu"), torch.bfloat16, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without the extension")
def test_problem_says_how_to_build():
    if cuda._extension()[0] is not None:
        pytest.skip("extension is built here")
    message = cuda.problem(torch.device("cuda", 0), torch.bfloat16, 64)
    assert "not built" in message and "HMAR_CUDA_JIT" in message


def test_forward_tables_are_packed_in_kernel_order():
    """The forward's tables: one int32 buffer, every table 16-byte aligned, holding the TileMask's arrays in
    KERNEL_FIELDS order and then the program table; the views the Triton kernels take are those tables."""
    from hmar_kernels.tiles import FORWARD_TABLES, TileMask, forward_tables, launch_order, named_pattern_bits, tile_mask

    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    bits = named_pattern_bits("block_causal", len(pn))
    cpu = torch.device("cpu")
    tables = forward_tables(pn, bits, 128, 128, 6, cpu)
    mask = tile_mask(pn, bits, 128, 128, cpu)
    assert FORWARD_TABLES == TileMask.KERNEL_FIELDS + ("programs",) and tuple(tables.offsets) == FORWARD_TABLES
    assert tables.buffer.dtype == torch.int32 and tables.buffer.is_contiguous()
    expected = [mask.host[name] for name in TileMask.KERNEL_FIELDS] + [launch_order([mask.visits], 6)]
    for name, view, array in zip(FORWARD_TABLES, tables.tensors, expected):
        start, size = tables.offsets[name], tables.sizes[name]
        assert start % 4 == 0 and size == array.size, name
        assert torch.equal(tables.buffer[start:start + size], torch.from_numpy(array.reshape(-1))), name
        assert view.data_ptr() == tables.buffer.data_ptr() + 4 * start, name
    assert tables.tensors[-1].shape == (tables.programs, 2) and tables.sizes["row_lo"] == mask.length


@pytest.mark.skipif(cuda._extension()[0] is None, reason="needs the built CUDA extension (its bound structs)")
def test_binding_structs_name_the_tables_python_packs():
    """The extension's TileTables has a field per table Python packs (the binding takes structs, not positions),
    and CudaForward / PlanSpec the fields Python sets."""
    from hmar_kernels.tiles import FORWARD_TABLES

    ext = cuda.module()
    for name in (*FORWARD_TABLES, "buffer", "length", "row_tiles", "visits", "num_programs"):
        assert hasattr(ext.TileTables(), name), name
    for name in ("tables", "softmax_scale", "config", "num_ctas", "dynamic", "arch"):
        assert hasattr(ext.CudaForward(), name), name
    for name in ("kv", "q", "pairs", "softmax_scale", "config", "arch"):
        assert hasattr(ext.CudaBackward(), name), name
    for name in ("triton_forward", "cuda_forward", "cuda_backward", "preprocess", "backward", "tables", "like",
                 "poison"):
        assert hasattr(ext.PlanSpec(), name), name


def test_backward_tables_are_built_once_per_schedule():
    """The CUDA backward's tables: the transposed pattern's TileMask (rows = keys) and the pattern's, with the
    backward tile, each with its program table; the paired program table covers both kinds; cached."""
    from hmar_kernels.tiles import (TileMask, backward_tables, launch_order, named_pattern_bits, tile_mask,
                                    transpose_bits)

    pn, cpu = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), torch.device("cpu")
    bits = named_pattern_bits("block_causal", len(pn))
    kv, q, pairs = backward_tables(pn, bits, 128, 64, 3, cpu)
    assert backward_tables(pn, bits, 128, 64, 3, cpu)[0] is kv
    kv_mask, q_mask = tile_mask(pn, transpose_bits(bits), 128, 64, cpu), tile_mask(pn, bits, 128, 64, cpu)
    for tables, mask in ((kv, kv_mask), (q, q_mask)):
        for name in TileMask.KERNEL_FIELDS:
            start, size = tables.offsets[name], tables.sizes[name]
            assert torch.equal(tables.buffer[start:start + size], torch.from_numpy(mask.host[name])), name
    expected = launch_order([4 * kv_mask.visits, 3 * q_mask.visits], 3)
    assert tuple(pairs.offsets) == ("programs",) and torch.equal(pairs.tensors[-1], torch.from_numpy(expected))
    assert set((expected[:, 0] >> 24).tolist()) == {0, 1}
