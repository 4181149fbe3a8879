"""hmar-train recipes, key=value overrides and the errors users see (exit code 2, one line, no traceback)."""
import os

import pytest

from hmar_model.cli.train import main
from hmar_model.tiny import TINY_DEPTH, TINY_PATCH_NUMS, TINY_TRANSFORMER
from hmar_model.train.config import ConfigError, load_config, lr_peak, recipe_names, to_yaml, valid_keys


def test_recipes_follow_the_official_runs():
    assert set(recipe_names()) >= {"tiny", "d16", "d20", "d24", "d30"}
    d16, d30 = load_config("d16"), load_config("d30")
    assert (d16.model.depth, d16.batch, lr_peak(d16), d16.wpe, d16.loss_weights) == (16, 768, pytest.approx(3e-4), 0.1,
                                                                                      "lognorm")
    assert (d30.batch, lr_peak(d30), d30.wpe, d30.twde, d30.distributed) == (1024, pytest.approx(3.2e-4), 0.01,
                                                                              0.08, "fsdp")
    assert load_config("d24").tblr == 8e-5 and load_config("d20").model.depth == 20
    assert d16.max_steps == 200 * -(-1281167 // 768)  # 200 epochs of ImageNet-1k


def test_tiny_recipe_is_the_tiny_model():
    tiny = load_config("tiny")
    assert tuple(tiny.patch_nums) == TINY_PATCH_NUMS and tiny.model.depth == TINY_DEPTH
    for key, value in TINY_TRANSFORMER.items():
        assert tiny.model[key] == value, key


def test_overrides_are_typed_and_nested():
    cfg = load_config("tiny", ["max_steps=7", "model.depth=2", "lr=0.5", "betas=[0.8,0.9]", "out=/tmp/x"])
    assert (cfg.max_steps, cfg.model.depth, cfg.lr, list(cfg.betas), cfg.out) == (7, 2, 0.5, [0.8, 0.9], "/tmp/x")


@pytest.mark.parametrize("override, message", [
    ("max_stepz=3", "unknown config key 'max_stepz'.*valid keys: .*max_steps"),
    ("model.dpth=3", "unknown config key 'model.dpth'"),
    ("batch=many", "batch"),
    ("stage=pretrain", "stage must be one of"),
    ("precision=fp8", "precision must be one of"),
    ("max_steps", "not key=value"),
    ("accum=5", "not divisible by accum"),
    ("stage=masked model.kind=var", "model.kind must be 'hmar'"),
])
def test_bad_overrides_raise_config_error(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("tiny", override.split())


def test_valid_keys_lists_every_leaf():
    keys = valid_keys()
    assert "max_steps" in keys and "model.depth" in keys and "model" not in keys


def _cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_cli_user_errors_exit_2_without_traceback(tmp_path, capsys):
    code, err = _cli(["--config", "tiny", "bogus_key=1", f"out={tmp_path}/run"], capsys)
    assert code == 2 and "unknown config key 'bogus_key'" in err and "Traceback" not in err
    code, err = _cli(["--config", "no-such-recipe", f"out={tmp_path}/run"], capsys)
    assert code == 2 and "unknown recipe 'no-such-recipe'" in err and "tiny" in err
    code, err = _cli(["--config", "tiny"], capsys)
    assert code == 2 and "out=PATH" in err
    code, err = _cli(["--resume", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no run there" in err
    with pytest.raises(ConfigError):
        main(["--debug", "--config", "tiny", "bogus_key=1"])


def test_model_var_selects_vars_mask_and_uniform_weights(tmp_path):
    from hmar_model.cli.train import build_parser, resolve_config

    args = build_parser().parse_args(["--config", "tiny", "--model", "var", f"out={tmp_path}/run"])
    cfg, resume = resolve_config(args)
    assert (cfg.model.kind, cfg.loss_weights, resume) == ("var", "uniform", False)
    args = build_parser().parse_args(["--config", "tiny", "--model", "var", "loss_weights=equal", f"out={tmp_path}/r"])
    assert resolve_config(args)[0].loss_weights == "equal"


def test_resume_refuses_another_model_or_recipe(tmp_path, capsys):
    run = tmp_path / "run"
    os.makedirs(run)
    (run / "config.yaml").write_text(to_yaml(load_config("tiny", [f"out={run}"])))
    code, err = _cli(["--resume", str(run), "model.depth=4"], capsys)
    assert code == 2 and "model.depth: 3 → 4" in err
    code, err = _cli(["--resume", str(run), "--config", "d16"], capsys)
    assert code == 2 and "is not the recipe of run" in err
    code, err = _cli(["--config", "tiny", f"out={run}"], capsys)
    assert code == 2 and "--resume" in err
