"""The fast sampler by default: the padded last conv of the compiled decoder (float64 against the plain decoder),
no recompilation for smaller batches, the compile default and its notice, hmar-eval generate compiling once, and
the command-line flags. GPU: Inductor, greedy tokens equal to the reference loop."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import hmar_model as hm
from conftest import requires_cuda
from hmar_model import fast_sampling
from hmar_model.cli import eval as eval_cli
from hmar_model.cli import sample as sample_cli
from hmar_model.eval import generate as gen
from hmar_model.fast_sampling import fast_sampler, resolve_compile
from hmar_model.sampling import CompiledInference
from hmar_model.tiny import randomize_, tiny_transformer, tiny_vqvae
from hmar_model.vqvae import CompiledDecoding, padded_conv


@pytest.fixture(autouse=True)
def fresh_dynamo_caches():
    """Every wrapper adds entries to the cache of the one code object it compiles (``_decode``, the passes);
    earlier tests' entries must not reach Dynamo's recompile limit (past it, frames run uncompiled, uncounted)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as traced (or through Inductor)."""

    def __init__(self, inductor: bool = False):
        self.graphs, self.inductor = 0, inductor

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.inductor:
            from torch._inductor.compile_fx import compile_fx
            return compile_fx(gm, example_inputs)
        return gm.forward


@pytest.mark.parametrize("cout, bias", [(3, True), (5, False), (16, True), (17, True)])
def test_padded_conv_equals_the_conv_in_float64(cout, bias):
    torch.manual_seed(cout)
    conv = nn.Conv2d(6, cout, 3, 1, 1, bias=bias).double()
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    out = padded_conv(conv, x)
    assert out.shape == (2, cout, 7, 5)
    torch.testing.assert_close(out, conv(x), rtol=1e-12, atol=1e-12)


def float64_vqvae():
    torch.manual_seed(0)
    return randomize_(tiny_vqvae(), seed=4, std=0.2).double()


def test_compiled_decoding_equals_the_plain_decoder_in_float64_and_follows_new_weights():
    vqvae = float64_vqvae()
    fast = CompiledDecoding(vqvae, dtype=torch.float32, compile_backend="eager")  # fp32: no autocast, fp64 weights
    f_hat = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast.fhat_to_img(f_hat), vqvae.fhat_to_img(f_hat), rtol=1e-12, atol=1e-12)
        vqvae.decoder.conv_out.weight.mul_(-2.0)  # in place
        vqvae.decoder.conv_out.bias.add_(0.1)
        torch.testing.assert_close(fast.fhat_to_img(f_hat), vqvae.fhat_to_img(f_hat), rtol=1e-12, atol=1e-12)
        vqvae.decoder.conv_out.weight = nn.Parameter(torch.randn_like(vqvae.decoder.conv_out.weight))  # new tensor
        torch.testing.assert_close(fast.fhat_to_img(f_hat), vqvae.fhat_to_img(f_hat), rtol=1e-12, atol=1e-12)


def test_smaller_batches_and_chunks_reuse_the_compiled_graph():
    vqvae = float64_vqvae()
    backend = CountingBackend()
    fast = CompiledDecoding(vqvae, dtype=torch.float32, compile_backend=backend)
    f_hat = torch.randn(7, 8, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        want = vqvae.fhat_to_img(f_hat)
        torch.testing.assert_close(fast.fhat_to_img(f_hat[:4]), want[:4], rtol=1e-12, atol=1e-12)
        assert backend.graphs == 1 and fast.compiled_batch_sizes == {4}
        for B in (3, 1, 4):  # padded up to 4: no new graph, the same images
            torch.testing.assert_close(fast.fhat_to_img(f_hat[:B]), want[:B], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast.fhat_to_img(f_hat, chunk=4), want, rtol=1e-12, atol=1e-12)  # 4 + 3
        assert backend.graphs == 1 and fast.compiled_batch_sizes == {4}
        torch.testing.assert_close(fast.fhat_to_img(f_hat), want, rtol=1e-12, atol=1e-12)  # larger: compiles
        assert backend.graphs == 2 and fast.compiled_batch_sizes == {4, 7}


def test_compile_default_and_its_notice(monkeypatch):
    assert resolve_compile(None, "cpu") is False  # CPU: the eager reference, no notice
    assert resolve_compile(False, "cuda") is False
    assert resolve_compile(True, "cpu") is True
    assert resolve_compile(None, "cuda") is True  # the device need not exist to decide (this machine: Triton here)
    with pytest.raises(TypeError, match="compile must be None, True or False"):
        resolve_compile("yes", "cuda")
    monkeypatch.setattr(fast_sampling, "compile_unavailable_reason",
                        lambda device: "Triton is not installed (test)" if torch.device(device).type == "cuda"
                        else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_compile(None, "cuda") is False
        assert resolve_compile(None, "cuda") is False
    notices = [str(w.message) for w in caught if "Triton is not installed (test)" in str(w.message)]
    assert notices == ["hmar_model: the sampler runs eagerly (slower): Triton is not installed (test)"]  # once
    with pytest.raises(ValueError, match="compile=True: Triton is not installed.*--no-compile"):
        resolve_compile(True, "cuda")


def test_fast_sampler_wraps_once_and_only_when_asked():
    model, vqvae = tiny_transformer("hmar").eval(), tiny_vqvae().eval()
    assert fast_sampler(model, vqvae) == (model, vqvae)  # CPU default: eager
    fast_model, fast_vqvae = fast_sampler(model, vqvae, compile=True, dtype=torch.bfloat16, compile_backend="eager")
    assert isinstance(fast_model, CompiledInference) and isinstance(fast_vqvae, CompiledDecoding)
    assert fast_model.model is model and fast_vqvae.vqvae is vqvae and fast_vqvae.dtype == torch.bfloat16
    assert fast_sampler(fast_model, fast_vqvae, compile=True) == (fast_model, fast_vqvae)
    assert fast_sampler(model, vqvae, compile=True, compile_backend="eager")[1].dtype == torch.float32


def test_generate_compiles_once_for_every_batch_and_the_smaller_last_one(tmp_path, monkeypatch):
    """Batches 3, 3, 3, 1 (greedy): the compiled passes and decoder are compiled for the first batch only, and the
    images equal the eager run's (the decoder's padded conv may move a value by one uint8 step)."""
    torch.manual_seed(0)
    model, vqvae = randomize_(tiny_transformer("hmar"), 3, std=0.1).eval(), tiny_vqvae().eval()
    passes, decoder = CountingBackend(), CountingBackend()
    fast = CompiledInference(model, compile_backend=passes), CompiledDecoding(vqvae, torch.float32,
                                                                               compile_backend=decoder)
    kwargs = dict(classes=[0, 1, 2, 3, 4], per_class=2, batch_size=3, cfg=1.5, top_k=1, top_p=0.0, seed=2,
                  progress=False, keep_shards=True)
    graphs_after_batch, real_sample = [], gen.sample
    monkeypatch.setattr(gen, "sample", lambda *a, **kw: (real_sample(*a, **kw),
                                                         graphs_after_batch.append((passes.graphs, decoder.graphs)))[0])
    out = gen.generate_samples(*fast, str(tmp_path / "fast.npz"), **kwargs)
    assert len(graphs_after_batch) == 4 and passes.graphs > 0 and decoder.graphs == 1
    assert graphs_after_batch == graphs_after_batch[:1] * 4, graphs_after_batch
    eager = gen.generate_samples(model, vqvae, str(tmp_path / "eager.npz"), **kwargs)  # CPU default: eager
    with np.load(out) as a, np.load(eager) as b:
        assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).max() <= 1
        np.testing.assert_array_equal(a["arr_1"], b["arr_1"])
    import json
    settings = json.loads((tmp_path / "fast.shards" / gen.SETTINGS_FILE).read_text())
    assert settings["compiled"] is True and settings["batch_size"] == 3
    assert json.loads((tmp_path / "eager.shards" / gen.SETTINGS_FILE).read_text())["compiled"] is False


def test_default_batch_size_is_recorded(tmp_path):
    model, vqvae = tiny_transformer("hmar").eval(), tiny_vqvae().eval()
    gen.generate_samples(model, vqvae, str(tmp_path / "s.npz"), classes=[0], per_class=2, progress=False,
                         keep_shards=True)
    import json
    settings = json.loads((tmp_path / "s.shards" / gen.SETTINGS_FILE).read_text())
    assert settings["batch_size"] == gen.DEFAULT_BATCH_SIZE == 250


@pytest.mark.parametrize("flags, expected", [([], None), (["--no-compile"], False)])
def test_command_lines_pass_the_compile_choice(tmp_path, monkeypatch, flags, expected):
    seen = {}
    real = sample_cli.fast_sampler

    def recording(model, vqvae, **kw):
        seen["sample"] = kw
        return real(model, vqvae, **kw)

    monkeypatch.setattr(sample_cli, "fast_sampler", recording)
    argv = ["--demo", "--device", "cpu", "--num-images", "1", "--no-progress", "--out", str(tmp_path / "g.png")]
    assert sample_cli.main(argv + flags) == 0
    assert seen["sample"] == dict(compile=expected, dtype=torch.float32)

    monkeypatch.setattr(eval_cli, "generate_samples", lambda *a, **kw: seen.setdefault("eval", kw) and None)
    argv = ["generate", "--demo", "--device", "cpu", "--classes", "0", "--per-class", "1", "--no-progress",
            "--out", str(tmp_path / "s.npz")]
    assert eval_cli.main(argv + flags) == 0
    assert seen["eval"]["compile"] is expected and seen["eval"]["batch_size"] is None


def test_help_names_the_flags(capsys):
    for main, argv in ((sample_cli.main, ["--help"]), (eval_cli.main, ["generate", "--help"])):
        with pytest.raises(SystemExit):
            main(argv)
        text = capsys.readouterr().out
        assert "--no-compile" in text
    assert f"default: {gen.DEFAULT_BATCH_SIZE}" in text


@pytest.mark.gpu
@requires_cuda
def test_gpu_default_sampler_is_compiled_and_draws_the_reference_tokens(tmp_path):
    """On CUDA the default pair is compiled (Inductor), greedy tokens equal the reference loop's through the
    captured loop, and a generate run with a smaller last batch compiles each path once."""
    torch.manual_seed(0)
    model = randomize_(tiny_transformer("hmar", device="cuda"), seed=1, std=0.1).eval()
    vqvae = tiny_vqvae(device="cuda").eval()
    # fp32: Inductor's fused roundings move logits by ~1e-7 relative, far below the gaps between the top logits
    # (in bf16 a near-tie could flip the greedy choice)
    fast_model, fast_vqvae = fast_sampler(model, vqvae)
    assert isinstance(fast_model, CompiledInference) and isinstance(fast_vqvae, CompiledDecoding)
    kw = dict(labels=[1, 2, 3, 4], cfg=1.5, top_k=1, top_p=0.0, return_indices=True)
    for seed in range(3):  # eager warm-up (compiles), capture, replay
        _, want = hm.sample(model, vqvae, seed=seed, reference=True, **kw)
        _, got = hm.sample(fast_model, fast_vqvae, seed=seed, **kw)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), seed

    passes, decoder = CountingBackend(inductor=True), CountingBackend(inductor=True)
    fast = CompiledInference(model, compile_backend=passes), CompiledDecoding(vqvae, compile_backend=decoder)
    graphs, real_sample = [], gen.sample
    gen_kwargs = dict(classes=list(range(5)), per_class=2, batch_size=3, top_k=10, top_p=0.9, dtype=torch.bfloat16,
                      progress=False)
    try:
        gen.sample = lambda *a, **k: (real_sample(*a, **k), graphs.append((passes.graphs, decoder.graphs)))[0]
        gen.generate_samples(*fast, str(tmp_path / "s.npz"), **gen_kwargs)
    finally:
        gen.sample = real_sample
    assert decoder.graphs == 1 and graphs == graphs[:1] * 4, graphs


def test_benchmark_script_smoke_run_writes_its_rows(tmp_path):
    """bench/fast_sampler_gpu.py --smoke (tiny models on the CPU): the first-run and steady generate rows, with
    the 50k estimate built from them."""
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "fast_sampler_gpu.py"
    spec = importlib.util.spec_from_file_location("fast_sampler_gpu", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--smoke", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "eval.csv", newline="") as f:
        first, steady = list(csv.DictReader(f))
    assert first["task"] == steady["task"] == "generate" and first["batch"] == "50"
    assert (first["images"], steady["images"]) == ("100", "100") and not first["est_50k_s"]
    rate, first_s = float(steady["images_per_s"]), float(first["seconds"])
    overhead = max(0.0, first_s - 100 / rate)
    assert float(steady["est_50k_s"]) == pytest.approx(overhead + 50_000 / rate, rel=0.02)


def test_fast_sampler_script_full_run_smoke(tmp_path):
    """bench/fast_sampler_gpu.py --smoke --full: one row for the whole cold run, its seconds covering at least
    the generate call itself (timed from the process's start)."""
    import csv
    import importlib.util
    import time
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "fast_sampler_gpu.py"
    spec = importlib.util.spec_from_file_location("fast_sampler_gpu_full", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    started = time.perf_counter()
    assert script.main(["--smoke", "--full", "--out", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - started
    with open(tmp_path / "eval.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["task"] == "generate" and row["images"] == "150" and "one cold run" in row["note"]
    assert elapsed - 0.01 <= float(row["seconds"]) <= time.perf_counter() - script.STARTED + 0.01  # 2 decimals
    assert float(row["images_per_s"]) == pytest.approx(150 / float(row["seconds"]), rel=0.02)
