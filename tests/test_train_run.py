"""hmar-train end to end on the CPU (tiny recipe): the interface other tools rely on, exact resume after SIGKILL
and SIGTERM, a damaged checkpoint, two-process gloo DDP, overfitting, and masked finetuning.

Each CLI run is a real process (python -m hmar_model.cli.train, torchrun for DDP), as users run it.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hmar_model.checkpoints import load_model, read_state_dict
from hmar_model.cli.sample import main as sample_main
from hmar_model.cli.train import main as train_main
from hmar_model.train.config import load_config
from hmar_model.train.loop import Run, _loop, train

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("step", "loss", "scale_loss", "scale_acc", "lr", "grad_norm")


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "hmar_model.cli.train", *map(str, args)], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _popen(*args):
    return subprocess.Popen([sys.executable, "-m", "hmar_model.cli.train", *map(str, args)], env=_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _records(run) -> list[dict]:
    with open(Path(run) / "log.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def _wait_for_lines(run, count: int, proc, limit=180.0):
    log, start = Path(run) / "log.jsonl", time.monotonic()
    while time.monotonic() - start < limit:
        if log.is_file() and sum(1 for _ in open(log)) >= count:
            return
        assert proc.poll() is None, f"the run ended before {count} log lines: {proc.stdout.read()[-2000:]}"
        time.sleep(0.02)
    raise AssertionError(f"no {count} log lines after {limit} s")


def _same_trajectory(got: list[dict], want: list[dict]):
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        assert {k: g[k] for k in COMPARED} == {k: w[k] for k in COMPARED}, f"step {w['step']} differs"


@pytest.fixture
def one_thread():
    """In-process runs use one CPU thread (as the tiny recipe does in its own process), restored afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The interface run: hmar-train --config tiny data=synthetic max_steps=40 out=RUN (uninterrupted)."""
    run = tmp_path_factory.mktemp("train") / "ref"
    start = time.monotonic()
    result = _cli("--config", "tiny", "data=synthetic", "max_steps=40", f"out={run}")
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    return run, seconds, _records(run)


def test_interface_run_logs_checkpoints_and_exports(reference):
    run, seconds, records = reference
    assert seconds < 120, f"the tiny 40-step run took {seconds:.0f} s (limit 120 s on a 2-core CPU)"
    assert [r["step"] for r in records] == list(range(1, 41))
    for key in ("loss", "scale_loss", "scale_acc", "lr", "tokens_per_s", "step_ms", "peak_mem_gb", "grad_norm"):
        assert key in records[-1], key
    assert len(records[-1]["scale_loss"]) == 4 and all(0 <= a <= 1 for a in records[-1]["scale_acc"])
    assert sorted(os.listdir(run / "ckpt")) == ["step-00000030", "step-00000040"]  # keep_last = 2
    model = load_model(run / "export" / "model.pth")  # detected as an HMAR next-scale file (its mask buffer)
    assert type(model).__name__ == "NextScalePrediction"
    vqvae = load_model(run / "export" / "vae.pth")
    code = sample_main(["--vae", str(run / "export" / "vae.pth"), "--model", str(run / "export" / "model.pth"),
                        "--classes", "1", "--num-images", "2", "--top-k", "8", "--out", str(run / "grid.png")])
    assert code == 0 and (run / "grid.png").is_file()
    assert vqvae.cfg.vocab_size == model.cfg.vocab_size


def test_extend_a_finished_run(reference, tmp_path, one_thread):
    run, _, records = reference
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert train_main(["--resume", str(copy), "max_steps=50"]) == 0
    extended = _records(copy)
    assert [r["step"] for r in extended] == list(range(1, 51))
    _same_trajectory(extended[:40], records)
    assert (copy / "ckpt" / "step-00000050").is_dir()


def test_sigkill_at_a_random_step_then_resume_is_bitwise_equal(reference, tmp_path):
    _, _, records = reference
    seed = random.randrange(2**32)
    kill_after = random.Random(seed).randint(3, 36)
    run = tmp_path / "run"
    proc = _popen("--config", "tiny", "data=synthetic", "max_steps=40", f"out={run}")
    try:
        _wait_for_lines(run, kill_after, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 1.')  # as if killed in the middle of a line
    result = _cli("--resume", run)
    assert result.returncode == 0, f"seed {seed}: {result.stderr[-3000:]}"
    _same_trajectory(_records(run), records)


def test_sigterm_saves_a_checkpoint_and_resume_is_bitwise_equal(reference, tmp_path):
    _, _, records = reference
    run = tmp_path / "run"
    proc = _popen("--config", "tiny", "data=synthetic", "max_steps=40", f"out={run}")
    _wait_for_lines(run, 13, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output[-2000:]
    done = len(_records(run))
    assert "stopped by SIGTERM" in output and f"--resume {run}" in output
    assert (run / "ckpt" / f"step-{done:08d}").is_dir()  # saved at the step it stopped, not the last ckpt_every
    result = _cli("--resume", run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {run / 'ckpt' / f'step-{done:08d}'}" in result.stdout
    _same_trajectory(_records(run), records)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, one_thread, capsys):
    run, _, records = reference
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shard = copy / "ckpt" / "step-00000040" / "__0_0.distcp"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    assert train_main(["--resume", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint step-00000040 is damaged" in out and "falling back" in out
    assert f"resumed from {copy / 'ckpt' / 'step-00000030'}" in out
    _same_trajectory(_records(copy), records)


def test_resume_with_a_checkpoint_of_another_model_is_refused(reference, tmp_path, one_thread, capsys):
    run, _, _ = reference
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(config.replace("width: 32", "width: 48"))
    assert train_main(["--resume", str(copy), "max_steps=50"]) == 2
    err = capsys.readouterr().err
    assert "holds another model" in err and "Traceback" not in err


def test_two_process_gloo_ddp_equals_one_process(tmp_path):
    """Same global batch (16) split over 2 ranks; label dropout and drop path off (their RNG is per rank).
    Tolerance: relative 1e-5 on every logged loss (fp32 reductions in another order; measured ~2e-7)."""
    common = ["--config", "tiny", "data=synthetic", "max_steps=8", "model.cond_drop_rate=0",
              "model.drop_path_rate=0"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "hmar_model.cli.train", *common, f"out={tmp_path / 'ddp'}"],
                         env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    one = _cli(*common, f"out={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    got, want = _records(tmp_path / "ddp"), _records(tmp_path / "one")
    assert [r["step"] for r in got] == list(range(1, 9))
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5), g["step"]
        assert g["scale_loss"] == pytest.approx(w["scale_loss"], rel=1e-5)
    # the 2-rank (sharded DCP) checkpoint resumes in one process
    more = _cli("--resume", tmp_path / "ddp", "max_steps=10")
    assert more.returncode == 0 and len(_records(tmp_path / "ddp")) == 10, more.stderr[-3000:]


def test_tiny_recipe_overfits_a_few_samples(tmp_path, one_thread):
    cfg = load_config("tiny", ["synthetic_samples=4", "batch=4", "max_steps=40", "lr=1e-2",
                               "model.cond_drop_rate=0", "ckpt_every=1000", f"out={tmp_path / 'run'}"])
    train(cfg)
    losses = [r["loss"] for r in _records(tmp_path / "run")]
    assert losses[-1] <= losses[0] / 2, f"loss {losses[0]:.3f} → {losses[-1]:.3f}"


def test_masked_finetuning_changes_exactly_the_trainable_parameters(reference, tmp_path, one_thread):
    nsp_run, _, _ = reference
    cfg = load_config("tiny", ["stage=masked", f"init={nsp_run}", "max_steps=3", "ema=0.5",
                               f"out={tmp_path / 'mp'}"])
    os.makedirs(cfg.out)
    run = Run(cfg, resume=False, say=print)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in before if n.startswith(("blocks.1.", "blocks.2.", "head.", "head_nm.",
                                                            "mask_embed."))}
    nsp = read_state_dict(nsp_run / "export" / "model.pth")
    for name, value in before.items():  # started from the next-scale weights
        source = "word_embed.bias" if name == "word_embed_bias" else name
        if source in nsp:
            assert torch.equal(value, nsp[source]), name
    _loop(run)
    for name, p in run.model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == (name in trainable), f"{name}: changed={changed}, trainable={name in trainable}"
    export = tmp_path / "mp" / "export"
    mp, ema = read_state_dict(export / "model.pth"), read_state_dict(export / "model-ema.pth")
    for name in before:
        assert torch.equal(mp[name], ema[name]) == (name not in trainable), name
    composite = load_model(export / "hmar.pth")
    assert torch.equal(composite.ns_head.weight, nsp["head.weight"])
    assert torch.equal(composite.mask_head.weight, mp["head.weight"])
    assert torch.equal(composite.mask_blocks[1].ffn.fc1.weight, mp["blocks.2.ffn.fc1.weight"])


@pytest.mark.parametrize("tf32", [False, True])
def test_tf32_setting_holds_for_the_run_and_is_restored(tmp_path, one_thread, monkeypatch, tf32):
    """tf32=false turns TF32 off even where the process had it on (an earlier run's setting must not leak into
    an fp32 comparison), tf32=true on; the process's own setting comes back after the run."""
    import hmar_model.train.loop as loop

    seen = []
    run_once = loop._train
    monkeypatch.setattr(loop, "_train", lambda *args: seen.append(
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)) or run_once(*args))
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    outside = not tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = outside
    try:
        train(load_config("tiny", ["data=synthetic", "max_steps=1", "save_at_end=false", f"tf32={str(tf32).lower()}",
                                   f"out={tmp_path / 'run'}"]), say=lambda *_: None)
        assert seen == [(tf32, tf32)]
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (outside, outside)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
