"""experiments/unlearning_table.py's flags: the classifier recipe comes from TrainConfig's fields
(one flag each, help from its docstring), a bad recipe is refused before anything is written."""

from __future__ import annotations

import pytest

from conftest import load_experiment
from hyperforget_jax.errors import ConfigError


def test_recipe_flags_build_the_train_config(capsys):
    table = load_experiment("unlearning_table")
    cfg = table.train_config(table.parse_args(["--arch", "gpt_mlp", "--epochs", "4",
                                               "--lr", "0.01", "--weight-decay", "0"]))
    assert (cfg.arch, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.seed) == (
        "gpt_mlp", 4, 0.01, 0.0, 128, 0)
    with pytest.raises(SystemExit):
        table.parse_args(["--seed", "3"])       # seeds are --seeds, not a recipe field
    with pytest.raises(SystemExit):
        table.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "passes over the training set" in help_text  # TrainConfig.epochs' docstring


def test_bad_recipe_refused_before_writing(tmp_path):
    table = load_experiment("unlearning_table")
    with pytest.raises(ConfigError, match="unknown architecture 'vit'"):
        table.main(["--arch", "vit", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
