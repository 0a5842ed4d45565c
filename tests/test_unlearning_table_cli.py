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
    ("unlearn_speed", ["--classes", "--fractions"], "both empty: no request to time"),
    ("unlearn_speed", ["--classes", "3", "3"], "list a request twice"),
    ("unlearn_mia_noise", ["--classes", "12"], "class 12 does not exist"),
    ("unlearn_mia_noise", ["--seeds", "0"], "must be >= 1"),
    # argparse kept the last list alone: the table of class 8 only, as if asked for it
    ("unlearning_table", ["--classes", "3", "--classes", "8"], "every item: --classes 3 8"),
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
                                    "unlearning_table", "hyperforget_endpoint_mia"])
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


def test_every_experiment_script_runs_through_exit_on_error():
    # report.exit_on_error makes a script's report printable under any locale and its errors
    # one line; hyperforget_endpoint_mia.py printed "ΔRA ... ±" with a bare print(), so under
    # LC_ALL=C PYTHONUTF8=0 it ended in UnicodeEncodeError after its 1.7-minute run.
    import ast
    from pathlib import Path

    bare = []
    for f in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.py")):
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                if not ast.unparse(node.body[0]).startswith("report.exit_on_error("):
                    bare.append(f.name)
    assert not bare, bare


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


def test_hyperforget_eval_titles_only_the_cli_recipe_as_the_default():
    """--batch-size 16 --weight-decay 0.05 trains every original off the CLI's recipe; their
    tables were still titled "`hyperforget train` default recipe"."""
    exp = load_experiment("hyperforget_eval")
    groups = lambda argv: [o[0] for o in exp.originals(exp.parse(argv))]  # noqa: E731
    assert groups(["--originals", "7:1e-3:20,8:2e-3:10"]) == ["default", "other"]
    assert groups(["--originals", "7:1e-3:20", "--batch-size", "16"]) == ["other"]
    assert set(groups(["--weight-decay", "0.05"])) == {"other"}
    assert "default" in groups([])


def test_hyperforget_eval_memorisation_says_what_its_std_is_over():
    # Every other ± of the report (and the README's "every table here") is over seeds; the
    # memorisation table's is over the 60 sampled models, and said nothing.
    exp = load_experiment("hyperforget_eval")
    m = {"bank": 10, "sample_retain_acc": 0.9, "noise_sigma": 0.1, "noise_retain_acc": 0.9,
         **{k: [1.0, 0.5] for k in ("sample_nearest_l2", "sample_agreement",
                                    "noise_nearest_l2", "noise_agreement")}}
    text = "".join(exp._memo_lines(m))
    assert "1.00 ± 0.50" in text and "mean ± std over the models" in text


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


def test_default_ulira_settings_are_those_the_run_has():
    # The default --ulira-settings ("class 3", "random 30%") was checked like a given one:
    # `--classes 9` (no --ulira-settings) was refused, "--ulira-settings ['class 3', 'random
    # 30%'] name no setting of this run", naming a flag the user never passed.
    table = load_experiment("unlearning_table")
    for argv, ulira in (([], ["class 3", "random 30%"]),                  # the defaults
                        (["--classes", "9", "--fractions", "0.3"], ["random 30%"]),
                        (["--classes", "0", "9", "--fractions", "0.01"], [])):
        args = table.parse_args(argv)
        table.checked_splits(args)
        assert args.ulira_settings == ulira, argv
    with pytest.raises(ConfigError, match="name no setting of this run"):      # given: checked
        table.checked_splits(table.parse_args(["--classes", "9", "--ulira-settings", "class 3"]))


def test_one_seed_is_counted_in_the_singular(tmp_path, monkeypatch):
    # "1 seeds" in the plot's title and "1 paired runs" in table.md under --seeds 1.
    import matplotlib
    matplotlib.use("Agg")
    table = load_experiment("unlearning_table")
    figs = []
    monkeypatch.setattr(table.report, "save_figure", lambda fig, path: figs.append(fig))
    out = _out("single", [0.1])
    out["settings"]["class 3"]["times"]["gradtau"] = [0.5]
    table.plot(out, tmp_path)
    assert figs[0].get_suptitle() == "Avg. Gap vs wall time, mnist5k, 1 seed"
    assert table.speed_summary(out) == [
        "- class removal: median 2.0× (min 2.0×, max 2.0×, 1 paired run)"]


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


def test_sweep_timing_says_compilation_is_included(tmp_path, monkeypatch):
    # --timing sweep reports each sweep's first call (XLA compilation included: ∇τ 2.2 s per
    # member cold vs 0.14 s warm on the mlp), while the header read like warm times; the
    # plot's time axis too.
    import matplotlib
    matplotlib.use("Agg")
    table = load_experiment("unlearning_table")
    figs = []
    monkeypatch.setattr(table.report, "save_figure", lambda fig, path: figs.append(fig))
    table.write_report(_out("sweep", [0.1, 0.2]), tmp_path)
    assert "compilation included" in (tmp_path / "table.md").read_text()
    table.write_report(_out("single", [0.1, 0.2]), tmp_path)
    assert "compilation included" not in (tmp_path / "table.md").read_text()
    # The legend gave every attack an ideal of 0.5; mia_efficacy_svc's is Retrain's (1.00 on
    # class requests), a share of D_f, not an attack accuracy.
    assert ("mia_efficacy_svc: share of D_f the SVC calls non-members (ideal: Retrain's, not "
            "0.5)") in (tmp_path / "table.md").read_text()
    for timing in ("sweep", "single"):
        table.plot(_out(timing, [0.1, 0.2]), tmp_path)
    assert [f.axes[0].get_xlabel() for f in figs] == [
        "time per member of its sweep s, compilation included (log)", "wall time s (log)"]


def test_one_seed_has_no_std(tmp_path):
    # The std of a single value is not defined; the tables printed "± 0.00" for one seed
    # (--seeds 1), which reads as a spread measured to be zero.
    from hyperforget_jax import metrics
    table = load_experiment("unlearning_table")
    assert metrics.format_mean_std([0.1234], scale=100) == "12.34 ± –"
    assert metrics.format_mean_std([1.0, 2.0], digits=1) == "1.5 ± 0.7"      # unchanged
    assert table._ms([0.1]) == "0.10 ± –"
    assert table._ms([0.1, None, None]) == "0.10 ± – [1 of 3 seeds]"
    table.write_report(_out("single", [0.1]), tmp_path)
    assert "± 0.00" not in (tmp_path / "table.md").read_text()
    assert load_experiment("gan_unlearning").ms([0.5]) == "0.50 ± –"


def test_privacy_gate_one_seed_has_no_std(tmp_path):
    import argparse
    gate = load_experiment("privacy_gate")
    from hyperforget_jax import data
    row = {"mia_loss_lr": 0.5, "ulira_acc": 0.5, "ulira_auc": 0.5, "forget_acc": 0.0}
    args = argparse.Namespace(tol_mia=0.05, tol_ulira=0.1, seeds=1, shadows=2,
                              dataset="mnist5k")
    gate.gate({"retrain": [row], "gradtau": [row]}, args, data.ForgetRequest(classes=(9,)),
              argparse.Namespace(name="mlp"), 1.0, tmp_path)
    md = (tmp_path / "gate.md").read_text()
    assert "0.500 ± –" in md and "± 0.000" not in md


def test_privacy_gate_refuses_a_one_item_request_before_training(tmp_path, capsys,
                                                                 monkeypatch):
    # --forget-fraction 0.0003 (1 of 3,500 images) trained the first seed's original, Retrain
    # and noise-floor target, then stopped on U-LiRA's "needs at least 2 forget samples".
    gate = load_experiment("privacy_gate")
    monkeypatch.setattr(gate.train, "fit", lambda *a, **k: pytest.fail("it trained"))
    assert gate.main(["--forget-fraction", "0.0003", "--out", str(tmp_path / "out")]) == 2
    assert "need at least 2 forget samples; random 0.03% is 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,words", [
    (["--methods", "gradtau", "finetune", "gradtau"], "--methods lists ['gradtau'] twice"),
    (["--classes", "--fractions", "--ulira-settings"], "no setting to run"),
    (["--ulira-shadows", "2"], "--ulira-shadows must be >= 3")])
def test_table_refuses_what_it_would_misreport_or_crash_on(argv, words):
    # A method listed twice ran twice per seed, its times appended twice: the ∇τ speed-up
    # summary paired seed 1's Retrain with seed 0's second ∇τ run. No setting at all trained
    # the fleet, then failed in the plot; --ulira-shadows 1 failed after the first setting's
    # sweeps (U-LiRA needs 2 shadow pairs).
    table = load_experiment("unlearning_table")
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        table.checked_splits(table.parse_args(argv))
    table.checked_splits(table.parse_args(["--ulira-shadows", "1", "--ulira-settings"]))


def test_render_only_reads_a_null_target_value(tmp_path):
    # A NaN (a diverged ∇τ seed) is written to results.json as null; re-rendering the targets
    # from it failed with a TypeError (np.mean of None), the first render said MISSED.
    import json

    from hyperforget_jax import report
    table = load_experiment("unlearning_table")
    out = _out("single", [0.1, 0.2])
    s = out["settings"]["class 3"]
    s["evals"]["gradtau"] = [dict(s["evals"]["Retrain"][0]),
                             dict(s["evals"]["Retrain"][1], forget_acc=float("nan"))]
    s["times"]["gradtau"] = [0.1, 0.1]
    report.write_json(tmp_path / "results.json", out)
    table.write_report(json.loads((tmp_path / "results.json").read_text()), tmp_path)
    assert "- MISSED: FA ≤ 1% (nan%)" in (tmp_path / "table.md").read_text()


def test_a_not_applicable_attack_is_not_a_missed_target(tmp_path):
    # A 1-item forget set (--fractions 0.0003) has no mia_loss_lr (evaluate_unlearning: None,
    # "not_applicable"); the targets said "MISSED: mia_loss_lr within 0.03 of Retrain's (nan)".
    table = load_experiment("unlearning_table")
    out = _out("single", [0.1])
    s = out["settings"]["class 3"]
    why = "needs at least 2 members and non-members, got 1 forget and 1000 held-out samples"
    s["evals"]["gradtau"] = [dict(s["evals"]["Retrain"][0], mia_loss_lr=None,
                                  not_applicable={"mia_loss_lr": why})]
    s["times"]["gradtau"] = [0.1]
    lines = table.targets(s, "fraction")
    assert f"- not applicable: mia_loss_lr within 0.03 of Retrain's ({why})" in lines
    assert not any("MISSED: mia" in x for x in lines)
    s["evals"]["gradtau"][0].pop("not_applicable")      # a null from a NaN: still a miss
    assert "- MISSED: mia_loss_lr within 0.03 of Retrain's (nan)" in table.targets(s,
                                                                                "fraction")


@pytest.mark.parametrize("argv,words", [
    (["--classes", "3", "3"], "--classes lists a class twice"),
])
def test_mia_noise_refuses_a_class_twice(argv, words, tmp_path, capsys, monkeypatch):
    # The per-class summary pooled both runs: "mean over 6 seeds" for 3 seeds.
    exp = load_experiment("unlearn_mia_noise")
    monkeypatch.setattr(exp.train, "fit", lambda *a, **k: pytest.fail("it trained"))
    with pytest.raises(SystemExit) as exc:
        exp.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gap_plot_leaves_no_empty_panel(tmp_path, monkeypatch):
    # The panels are a 2-row grid: one setting (or any odd number) drew an empty, axed panel.
    import matplotlib
    matplotlib.use("Agg")
    table = load_experiment("unlearning_table")
    figs = []
    monkeypatch.setattr(table.report, "save_figure", lambda fig, path: figs.append(fig))
    out = {"dataset": "d", "seeds": [0], "settings": {"class 9": {
        "kind": "class", "times": {"Retrain": [1.0], "m": [0.1]},
        "evals": {"Retrain": [{"avg_gap": 0.0}], "m": [{"avg_gap": 1.0}]}}}}
    table.plot(out, tmp_path)
    assert [ax.axison for ax in figs[0].axes] == [True, False]


def test_recorded_command_can_be_rerun():
    # The command in results.json / table.md was joined with spaces: `--ulira-settings
    # "class 3"` came back as `--ulira-settings class 3`, which names the settings "class", "3".
    import shlex
    table = load_experiment("unlearning_table")
    argv = ["--classes", "3", "--ulira-settings", "class 3", "random 30%"]
    cmd = table.command_line(argv)
    assert shlex.split(cmd)[2:] == argv
    assert table.parse_args(shlex.split(cmd)[2:]).ulira_settings == ["class 3", "random 30%"]


def test_unwritable_out_is_one_line_naming_the_flag(tmp_path):
    # prepare_dir's error told the user to "choose another --run-dir", a flag no experiment
    # has, and unlearn_speed / unlearn_mia_noise / gan_unlearning / hyperforget_eval let it
    # out as a traceback.
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hyperforget_jax import report
    (tmp_path / "file").write_text("")
    bad = tmp_path / "file" / "out"
    with pytest.raises(ConfigError, match="choose another --out"):
        report.prepare_dir(bad, flag="--out")
    with pytest.raises(ConfigError, match="choose another --run-dir"):    # the CLI's default
        report.prepare_dir(bad)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "experiments" / "unlearn_speed.py"),
                           "--out", str(bad)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    err = [line for line in proc.stderr.splitlines() if "Warning" not in line
           and not line.startswith("  ")]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("unlearn_speed: error: output directory") and "--out" in err[0]


@pytest.mark.parametrize("script,work", [("unlearning_table", "run"),
                                         ("gan_unlearning", "judge_from_recipe"),
                                         ("hyperforget_eval", "data")])
def test_experiments_refuse_an_out_that_holds_a_cli_run(script, work, tmp_path, monkeypatch):
    # `--out runs/original` (a `hyperforget train` run): the script's results.json and report
    # replaced the run's own (gan_unlearning also removes an earlier report.md at its start).
    # Every script checks its --out with the same call; `work` is what each does next.
    from hyperforget_jax.errors import RunDirError

    exp = load_experiment(script)
    monkeypatch.setattr(exp, work, None)      # the work after the check fails at once
    run = tmp_path / "orig"
    run.mkdir()
    files = {"run.json": '{"identity": {"role": "original"}}', "results.json": "{}",
             "report.md": "# Train"}
    for name, text in files.items():
        (run / name).write_text(text)
    with pytest.raises(RunDirError, match="holds a hyperforget run"):
        exp.main(["--out", str(run)])
    assert {p.name: p.read_text() for p in run.iterdir()} == files


def _fake_sweeps(table, monkeypatch, raise_at=None):
    """Replaces the fleet and each setting's sweeps by a cheap deterministic stand-in (what is
    tested is the resume machinery around them); ``raise_at``: the setting call that is
    interrupted (KeyboardInterrupt, as Ctrl-C). Returns the settings computed."""
    from types import SimpleNamespace

    import numpy as np

    calls = []
    if not _SPLITS:                             # the data, loaded and checked once
        _SPLITS[0] = table.checked_splits(table.parse_args(_TINY))
    monkeypatch.setattr(table, "checked_splits", lambda args: _SPLITS[0])
    monkeypatch.setattr(table.train, "fit_fleet", lambda arch, train, cfg, seeds: [
        SimpleNamespace(params={"w": np.arange(len(seeds), dtype=np.float32)})])
    monkeypatch.setattr(table, "plot", lambda out, path: (path / "gap_vs_time.png").write_text(
        str(sorted(out["settings"]))))

    def setting(args, arch, cfg, splits, originals, seeds, make_request):
        name = make_request(0).describe()
        calls.append(name)
        if len(calls) == raise_at:
            raise KeyboardInterrupt
        v = np.float32(len(name) / 3)        # a float32 and a NaN, as real evaluations give
        ev = lambda x: {k: x for k, _, _ in table.COLS} | {"mia_efficacy_svc": float("nan")}
        return {"kind": make_request(0).kind, "info": {},
                "evals": {r: [ev(v + i) for i in range(len(seeds))]
                          for r in ("Original", "Retrain", "finetune")},
                "times": {r: [0.5 + i for i in range(len(seeds))] for r in ("Retrain",
                                                                             "finetune")}}

    monkeypatch.setattr(table, "_setting", setting)
    return calls


_SPLITS: dict = {}
_TINY = ["--classes", "3", "8", "--fractions", "0.1", "--seeds", "2", "--methods", "retrain",
         "finetune", "--no-tau-ablation", "--ulira-settings"]


def _report_without_timings(path):
    return [line for line in (path / "table.md").read_text().splitlines()
            if not line.startswith("Total run time")]


def test_an_interrupted_table_resumes_to_the_uninterrupted_report(tmp_path, monkeypatch):
    # An interrupted sweep (Ctrl-C or kill after an hour) kept nothing: the rerun started over,
    # and the --out of an earlier run kept its report beside nothing of this one. Each setting
    # is now a cell of <out>/cells, reused by the same command only.
    import json

    from hyperforget_jax.errors import RunDirError
    table = load_experiment("unlearning_table")
    _fake_sweeps(table, monkeypatch)
    table.main([*_TINY, "--out", str(tmp_path / "a")])       # uninterrupted
    calls = _fake_sweeps(table, monkeypatch, raise_at=3)
    with pytest.raises(KeyboardInterrupt):
        table.main([*_TINY, "--out", str(tmp_path / "b")])
    b = tmp_path / "b"
    assert sorted(p.name for p in b.iterdir()) == ["cells", "run.json"]   # no report yet
    assert len(list((b / "cells").iterdir())) == 2
    calls = _fake_sweeps(table, monkeypatch)
    table.main([*_TINY, "--out", str(b)])                     # the same command resumes
    assert calls == ["random 10%"]
    assert _report_without_timings(b) == _report_without_timings(tmp_path / "a")
    md = (b / "table.md").read_text()
    assert "Resumed: class 3, class 8 reused" in md.splitlines()[-1] and "Resumed" not in (
        tmp_path / "a" / "table.md").read_text()
    res = [json.loads((d / "results.json").read_text()) for d in (tmp_path / "a", b)]
    # The command recorded is main's argv (it was the calling process's: pytest's here).
    for r, d in zip(res, (tmp_path / "a", b)):
        assert r["command"] == table.command_line([*_TINY, "--out", str(d)])
        assert f"(`{r['command']}`)" in (d / "table.md").read_text()
        del r["total_seconds"], r["reused"], r["command"]
    assert res[0] == res[1]
    # Another configuration is refused, naming the difference; --restart starts it clean.
    with pytest.raises(RunDirError, match="its seeds is 2, this command's is 1"):
        table.main([*_TINY, "--seeds", "1", "--out", str(b)])
    assert (b / "table.md").read_text() == md
    calls = _fake_sweeps(table, monkeypatch)
    table.main([*_TINY, "--seeds", "1", "--restart", "--out", str(b)])
    assert calls == ["class 3", "class 8", "random 10%"] and "Resumed" not in (
        b / "table.md").read_text()


def test_cells_an_older_version_stored_are_computed_again(tmp_path, monkeypatch):
    """A sweep started before 2026-12-06 09:00 stored ∇τ's class-removal τ as 0.0 (log K
    since) under a configuration equal to today's (the identity's version never moved): a
    resume mixed those cells into the table. A cell without today's revision is recomputed."""
    import json

    table = load_experiment("unlearning_table")
    _fake_sweeps(table, monkeypatch)
    table.main([*_TINY, "--out", str(tmp_path)])
    for f in (tmp_path / "cells").iterdir():        # as the older version wrote them
        cell = json.loads(f.read_text())
        cell["config"].pop("cell_revision", None)
        f.write_text(json.dumps(cell))
    calls = _fake_sweeps(table, monkeypatch)
    table.main([*_TINY, "--out", str(tmp_path)])
    assert calls == ["class 3", "class 8", "random 10%"]
    assert json.loads((tmp_path / "results.json").read_text())["reused"] == []


def test_a_second_table_run_on_one_out_is_refused(tmp_path, monkeypatch):
    # Two runs on one --out both wrote results.json, table.md and the plot: the files could
    # come from different runs. The second is refused while the first holds the lock.
    from hyperforget_jax.errors import RunDirError
    table = load_experiment("unlearning_table")
    calls = _fake_sweeps(table, monkeypatch)
    real, seen = table._setting, []

    def setting(*a):
        if not seen:
            with pytest.raises(RunDirError, match="is being written by process"):
                table.main([*_TINY, "--out", str(tmp_path)])
            seen.append(True)
        return real(*a)

    monkeypatch.setattr(table, "_setting", setting)
    table.main([*_TINY, "--out", str(tmp_path)])
    assert seen and len(calls) == 3


def test_a_changed_method_default_is_not_resumed_from_the_old_cells(tmp_path, monkeypatch):
    # The methods run with their configs' defaults, which no flag names: a rerun of the same
    # command after a default changed reused every stored setting, the old recipe's numbers
    # published as the new one's. The configs are part of the run's identity now.
    import functools

    from hyperforget_jax.errors import RunDirError
    from hyperforget_jax.unlearn import DEFAULT_CONFIGS, GradTauConfig
    table = load_experiment("unlearning_table")
    _fake_sweeps(table, monkeypatch)
    table.main([*_TINY, "--out", str(tmp_path)])
    monkeypatch.setitem(DEFAULT_CONFIGS, "finetune", functools.partial(GradTauConfig, lr=2e-3))
    calls = _fake_sweeps(table, monkeypatch)
    with pytest.raises(RunDirError, match="its method_configs.finetune.lr is 0.001"):
        table.main([*_TINY, "--out", str(tmp_path)])
    assert calls == []


def _fake_mia_cells(exp, monkeypatch, raise_at=None):
    """Replaces unlearn_mia_noise's (class, seed) cell by a cheap deterministic stand-in
    (float32, NaN and None values, as real ones); ``raise_at``: the call interrupted."""
    import numpy as np

    calls = []

    def cell(args, arch, c, seed):
        calls.append((c, seed))
        if len(calls) == raise_at:
            raise KeyboardInterrupt
        v = np.float32(c / 7 + seed / 3)
        return {"class": c, "seed": seed, **{m: {
            "mia_loss_lr_at_model_seed": v, "mia_loss_lr_mean": v + i,
            "mia_loss_lr_std": float("nan") if seed else None, "forget_loss": v * 10,
            "unseen_class_loss": np.float64(i)} for i, m in enumerate(("Retrain", "gradtau"))}}

    monkeypatch.setattr(exp, "cell", cell)
    return calls


def test_an_interrupted_mia_noise_run_resumes_to_the_uninterrupted_report(tmp_path,
                                                                          monkeypatch):
    # It started over when rerun, took no lock, and an interrupted rerun left the previous
    # run's table.md in --out. Each (class, seed) is now a cell, reused by the same command.
    import json

    from hyperforget_jax.errors import RunDirError
    exp = load_experiment("unlearn_mia_noise")
    argv = ["--classes", "1", "3", "--seeds", "2", "--attack-repeats", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_mia_cells(exp, monkeypatch)
    exp.main([*argv, "--out", str(a)])                       # uninterrupted
    exp.main([*argv, "--out", str(b)])                       # b: an earlier run's report
    calls = _fake_mia_cells(exp, monkeypatch, raise_at=3)
    with pytest.raises(KeyboardInterrupt):
        exp.main([*argv, "--restart", "--out", str(b)])
    assert sorted(p.name for p in b.iterdir()) == ["cells", "run.json"]   # no report yet
    assert len(list((b / "cells").iterdir())) == 2
    calls = _fake_mia_cells(exp, monkeypatch)
    exp.main([*argv, "--out", str(b)])                        # the same command resumes
    assert calls == [(3, 0), (3, 1)]
    md = [(d / "table.md").read_text().splitlines() for d in (a, b)]
    assert md[1][:-2] == md[0] and md[1][-1].startswith(
        "Resumed: class 1 seed 0, class 1 seed 1 reused")
    # The summary gives the spread over the model seeds, not the mean alone.
    assert "- class 1: ∇τ − Retrain = +1.000 ± 0.000 (mean ± std over 2 seeds of the 2-repeat " \
        "means)" in md[0]
    res = [json.loads((d / "results.json").read_text()) for d in (a, b)]
    assert res[1].pop("reused") == ["class 1 seed 0", "class 1 seed 1"]
    res[1]["args"]["out"] = res[0]["args"]["out"] = None
    assert res[0] == {**res[1], "reused": []}
    with pytest.raises(RunDirError, match="its attack_repeats is 2, this command's is 3"):
        exp.main([*argv[:-1], "3", "--out", str(b)])
    assert (b / "table.md").read_text().splitlines() == md[1]


def test_unlearn_speed_refuses_another_configuration_and_writes_at_its_end(tmp_path,
                                                                          monkeypatch):
    # A timing script: no cells (a rerun measures again), but the lock, the refusal of another
    # configuration, and no previous report left beside an interrupted run.
    from hyperforget_jax.errors import RunDirError
    exp = load_experiment("unlearn_speed")
    argv = ["--classes", "3", "--fractions", "--repeats", "1", "--out", str(tmp_path)]
    monkeypatch.setattr(exp, "measure", lambda args, out: report_of(args, out))

    def report_of(args, out):
        (out / "table.md").write_text(f"repeats {args.repeats}")
        return "done"

    exp.main(argv)
    with pytest.raises(RunDirError, match="its repeats is 1, this command's is 2"):
        exp.main([*argv[:-3], "2", *argv[-2:]])
    assert (tmp_path / "table.md").read_text() == "repeats 1"

    def interrupted(args, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(exp, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        exp.main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    monkeypatch.setattr(exp, "measure", lambda args, out: report_of(args, out))
    exp.main([*argv[:-3], "2", *argv[-2:], "--restart"])
    assert (tmp_path / "table.md").read_text() == "repeats 2"


@pytest.mark.parametrize("script, text, words", [
    ("unlearning_table", '{"settings": ', "is not readable JSON"),
    ("unlearning_table", '{"rows": []}', "no dataset, sizes"),
    ("hyperforget_eval", "\xff\xfe", "is not readable JSON"),
    ("hyperforget_eval", "[1, 2]", "not a results.json written by hyperforget_eval.py"),
    ("hyperforget_eval", '{"rows": {}, "bar": {}, "command": "", "originals": [], '
     '"prompt_alignment": [], "hypernet": {}, "ddim_steps": {}, "guidance": {}, '
     '"memorisation": {}, "timing": {}}', r"\(no best_of_8\)")])
def test_render_only_refuses_a_damaged_or_foreign_results_json(tmp_path, script, text, words):
    # A truncated results.json ended in a json.JSONDecodeError traceback (exit 1), another
    # script's in a KeyError from the renderer; neither was the one-line error of exit 2. The
    # last case: every field the renderer reads is checked (best_of_8 was not).
    from hyperforget_jax.errors import CheckpointError
    exp = load_experiment(script)
    (tmp_path / "results.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=words):
        exp.main(["--render-only", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("script", ["unlearning_table", "hyperforget_eval"])
def test_render_only_of_an_out_that_does_not_exist_writes_nothing(tmp_path, script):
    """--render-only created --out before it found no results.json there (an empty folder
    left behind), and told to "rerun its command to resume it" a run that never was (stop
    64)."""
    from hyperforget_jax.errors import ConfigError
    exp = load_experiment(script)
    with pytest.raises(ConfigError, match=r"does not exist: --render-only re-renders the "
                                          r"results.json of a finished run"):
        exp.main(["--render-only", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("script, flags", [
    ("unlearning_table", ["--dataset", "digits"]), ("unlearning_table", ["--seeds", "5"]),
    ("unlearning_table", ["--epochs", "2"]), ("hyperforget_eval", ["--samples", "5"]),
    ("hyperforget_eval", ["--num-steps", "10"])])
def test_render_only_refuses_the_settings_it_would_ignore(tmp_path, capsys, script, flags):
    # --render-only re-renders the stored run: `--dataset mnist5k --seeds 5` beside it
    # re-rendered a digits run of 2 seeds, exit 0, the flags ignored without a word.
    exp = load_experiment(script)
    with pytest.raises(SystemExit) as e:
        exp.main(["--render-only", "--out", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"{flags[0]} would be ignored: --render-only re-renders" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("script,entry", [
    ("unlearning_table", "parse_args"), ("privacy_gate", "parse_args"),
    ("unlearn_mia_noise", "parse_args"), ("unlearn_speed", "parse_args"),
    ("hyperforget_eval", "parse"), ("gan_unlearning", "main")])
def test_experiment_scripts_refuse_a_blank_out(script, entry, capsys):
    """``--out "$OUT"`` with OUT unset: "" was the current directory (the sweep's cells and
    report written there), or, for privacy_gate's default-None --out, silently the default."""
    with pytest.raises(SystemExit) as e:
        getattr(load_experiment(script), entry)(["--out", ""])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out: expected a path, got ''" in err and err.count("\n") == 1


def test_a_setting_whose_gap_leaves_a_metric_out_says_so():
    """A one-item setting's Avg. Gap (mia_loss_lr not applicable) is over FA, RA, TA, but the
    table said every gap was over FA, RA, TA, mia_loss_lr (stop 64)."""
    table = load_experiment("unlearning_table")
    row = {"forget_acc": 1.0, "retain_acc": 0.9, "test_acc": 0.9}
    one = {"evals": {"Retrain": [dict(row, mia_loss_lr=None)] * 2,
                     "gradtau": [dict(row, mia_loss_lr=None, avg_gap=1.0)] * 2}}
    assert table._gap_over(one) == "FA, RA, TA (mia_loss_lr not applicable)"
    full = {"evals": {"Retrain": [dict(row, mia_loss_lr=0.5)],
                      "gradtau": [dict(row, mia_loss_lr=0.6, avg_gap=2.5)]}}
    assert table._gap_over(full) is None


@pytest.mark.parametrize("script", ["unlearning_table", "privacy_gate"])
def test_zero_epochs_are_refused_before_writing(script, tmp_path, capsys):
    """--epochs 0 built a whole table (or gate) of untrained originals, where the CLI refuses
    it (refuse_zero_epochs; stop 64)."""
    exp = load_experiment(script)
    try:        # (privacy_gate's main prints its error and returns 2)
        rc = exp.main(["--epochs", "0", "--dataset", "digits", "--out", str(tmp_path / "out")])
        said = capsys.readouterr().err
    except ConfigError as e:
        rc, said = 2, str(e)
    assert rc == 2 and "--epochs 0 trains nothing" in said
    assert not (tmp_path / "out").exists()
