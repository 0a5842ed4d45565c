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


@pytest.mark.parametrize("argv,words", [
    (["--classes", "12"], "class 12 does not exist"),
    (["--fractions", "1.5"], "strictly between 0 and 1"),
    (["--seeds", "0"], "--seeds and --ulira-shadows must be >= 1")])
def test_bad_request_refused_before_writing(argv, words, tmp_path):
    # --fractions 1.5 used to train the whole fleet first; the others left --out behind.
    table = load_experiment("unlearning_table")
    with pytest.raises(ValueError, match=words):
        table.main([*argv, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script,argv,words", [
    ("unlearn_speed", ["--classes", "12"], "class 12 does not exist"),
    ("unlearn_speed", ["--fractions", "2"], "strictly between 0 and 1"),
    ("unlearn_speed", ["--repeats", "0"], "--repeats must be >= 1"),
    ("unlearn_mia_noise", ["--classes", "12"], "class 12 does not exist"),
    ("unlearn_mia_noise", ["--seeds", "0"], "must be >= 1"),
    ("hyperforget_eval", ["--samples", "0"], "must be >= 1")])
def test_other_experiments_refuse_bad_values_before_writing(script, argv, words, tmp_path,
                                                            capsys):
    # They used to crash with a traceback after creating --out (or, --seeds 0, report NaN).
    exp = load_experiment(script)
    with pytest.raises(SystemExit) as exc:
        exp.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["build_pretrained", "gan_unlearning", "hyperforget_eval",
                                    "privacy_gate", "unlearn_mia_noise", "unlearn_speed",
                                    "unlearning_table"])
def test_experiment_usage_errors_are_one_line(script, tmp_path, capsys):
    # argparse used to print its usage block above the error; the CLI's parser prints one line,
    # and abbreviated options are refused (`--ou` is not taken for `--out`).
    exp = load_experiment(script)
    short = "--wor" if script == "build_pretrained" else "--ou"     # of --work / --out
    # The trailing unknown flag makes the second parse fail even where abbreviations were
    # taken (the experiment never starts); the error then names it alone, not `--ou`.
    for argv, named in ((["--no-such-flag", "1"], "--no-such-flag"),
                        ([short, str(tmp_path / "out"), "--no-such-flag"], short)):
        with pytest.raises(SystemExit) as exc:
            exp.main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        assert ": error: " in err and err.endswith("(see --help)") and named in err, err
    assert not (tmp_path / "out").exists()


def test_gap_plot_error_bars_use_the_tables_std(tmp_path, monkeypatch):
    # table.md reports mean ± std with ddof=1 (metrics.mean_std); the plot's error bars used
    # np.std (ddof=0), sqrt(2/3) of the table's std for 3 seeds.
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    import numpy as np

    table = load_experiment("unlearning_table")
    seen = {}
    real = Axes.errorbar

    def spy(self, x, y, *a, yerr=None, label=None, **k):
        seen[label] = (y, yerr)
        return real(self, x, y, *a, yerr=yerr, label=label, **k)

    monkeypatch.setattr(Axes, "errorbar", spy)
    gaps = [1.0, 2.0, 4.0]
    out = {"dataset": "d", "seeds": [0, 1, 2], "settings": {"class 3": {
        "kind": "class", "times": {"Retrain": [1.0, 1.0, 1.0], "m": [0.1, 0.1, 0.1]},
        "evals": {"Retrain": [{"avg_gap": 0.0}] * 3, "m": [{"avg_gap": g} for g in gaps]}}}}
    table.plot(out, tmp_path)
    mean, std = seen["m"]
    assert mean == pytest.approx(np.mean(gaps))
    assert std == pytest.approx(np.std(gaps, ddof=1))



def test_hyperforget_eval_refuses_an_original_seed_twice(capsys):
    # Originals, their Retrain runs and the tables are keyed by seed: "0:1e-3:20,0:2e-3:10" used
    # to evaluate the second original's samples against the first one's Retrain, and report
    # the two originals as one.
    exp = load_experiment("hyperforget_eval")
    assert len(exp.parse(["--originals", "0:1e-3:20,1:2e-3:10"]).originals) == 2
    with pytest.raises(SystemExit) as exc:
        exp.parse(["--originals", "0:1e-3:20,0:2e-3:10"])
    assert exc.value.code == 2 and "seed 0 is listed twice" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--ulira-settings", "random 30 %"], "name no setting of this run"),
    (["--classes", "3", "--ulira-settings", "class 8"], "name no setting of this run"),
    (["--classes", "3", "3"], "list a setting twice")])
def test_settings_checked_against_the_run(argv, words):
    # A U-LiRA setting the run does not have was ignored (no U-LiRA column, no message), and a
    # setting listed twice ran twice under one name in results.json, the second replacing the
    # first. checked_splits is what main() runs before it trains or writes anything.
    table = load_experiment("unlearning_table")
    table.checked_splits(table.parse_args(["--classes", "0", "3", "8"]))      # the defaults
    with pytest.raises(ConfigError, match=words):
        table.checked_splits(table.parse_args(argv))


def _out(timing, gap_values):
    ev = lambda v: {"retain_acc": 1.0, "forget_acc": 0.0, "test_acc": 0.9, "test_acc_kept": 0.9,
                    "mia_loss_lr": 0.5, "mia_entropy_lr": 0.5, "mia_efficacy_svc": 0.1,
                    "forget_loss": v, "avg_gap": 0.0}
    rows = [ev(v) for v in gap_values]
    return {"dataset": "mnist5k", "sizes": [1, 1, 1], "architecture": {"name": "mlp"},
            "seeds": list(range(len(rows))), "timing": timing, "total_seconds": 1.0,
            "settings": {"class 3": {"kind": "class", "evals": {"Original": rows,
                                                                "Retrain": rows},
                                     "times": {"Retrain": [1.0] * len(rows)}}}}


def test_a_seed_without_a_value_is_not_silently_dropped(tmp_path):
    # _ms used to drop NaN / None values (a NaN is written to results.json as null), so a
    # 3-seed row showed the mean ± std of 2 seeds with nothing saying so.
    table = load_experiment("unlearning_table")
    assert table._ms([0.1, 0.2, 0.3]) == "0.20 ± 0.10"
    assert table._ms([None, None]) == "–"                     # not applicable: all seeds alike
    assert table._ms([0.1, float("nan"), 0.3]) == "0.20 ± 0.14 [2 of 3 seeds]"
    assert table._ms([0.1, None, 0.3]) == "0.20 ± 0.14 [2 of 3 seeds]"
    table.write_report(_out("single", [0.1, None, 0.3]), tmp_path)
    assert "[2 of 3 seeds]" in (tmp_path / "table.md").read_text()


def test_sweep_timing_says_compilation_is_included(tmp_path):
    # --timing sweep reports each sweep's first call (XLA compilation included: ∇τ 2.2 s per
    # member cold vs 0.14 s warm on the mlp), while the header read like warm times.
    table = load_experiment("unlearning_table")
    table.write_report(_out("sweep", [0.1, 0.2]), tmp_path)
    assert "compilation included" in (tmp_path / "table.md").read_text()
    table.write_report(_out("single", [0.1, 0.2]), tmp_path)
    assert "compilation included" not in (tmp_path / "table.md").read_text()
