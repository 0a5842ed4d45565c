"""``hyperforget unlearn`` end to end on sklearn digits, and its one-line errors."""

import json

import pytest

from hyperforget_jax import cli


def test_unlearn_trains_then_loads_and_writes_results(tmp_path, capsys, monkeypatch):
    run = tmp_path / "orig"
    base = ["unlearn", "--dataset", "digits", "--run-dir", str(run), "--epochs", "3",
            "--quiet"]
    assert cli.main(base + ["--method", "gradtau", "--forget-class", "3"]) == 0
    out = run / "unlearn" / "gradtau-class-3"
    res = json.loads((out / "results.json").read_text())
    assert res["original"] == "trained" and res["info"]["tau_mode"] == "chance"
    assert (res["dataset"], res["split_seed"]) == ("digits", 0)     # not in run.json alone
    assert set(res["eval"]) == {"original", "gradtau", "retrain"}
    assert res["eval"]["gradtau"]["forget_acc"] < res["eval"]["original"]["forget_acc"]
    for k in ("mia_loss_lr", "mia_entropy_lr", "mia_efficacy_svc"):
        assert 0 <= res["eval"]["gradtau"][k] <= 1
    assert "Avg. Gap" in (out / "report.md").read_text()
    sp, ret, t = res["speedup_vs_retrain"], res["retrain_seconds"], res["timing"]   # > 1: faster
    assert sp == {"cold": pytest.approx(ret["cold"] / t["cold_seconds"]),
                  "warm": pytest.approx(ret["warm"] / t["warm_seconds"])}
    assert (out / "checkpoints").is_dir()
    # second call: the original is loaded, not retrained; the method's --seed is not the
    # original's training seed (docs/unlearning.md's `--seed 1 --run-dir runs/original`)
    from hyperforget_jax.commands import unlearn as cmd
    seeds, real_eval = [], cmd.evaluate_unlearning     # every row with the command's seed
    with monkeypatch.context() as m:
        m.setattr(cmd, "evaluate_unlearning", lambda *a, **k: seeds.append(
            a[5] if len(a) > 5 else k.get("seed", 0)) or real_eval(*a, **k))
        assert cli.main(base + ["--method", "neggrad", "--forget-fraction", "0.1",
                                "--no-retrain", "--seed", "1"]) == 0
    assert seeds == [1, 1]
    res = json.loads((run / "unlearn" / "neggrad-random-10-method-seed-1" / "results.json")
                     .read_text())
    assert res["original"] == "loaded" and "retrain" not in res["eval"]
    assert res["info"]["seed"] == 1 and res["train_config"]["seed"] == 0
    # Retrain as the method is its own comparison (same recipe and seed): trained twice (the
    # two timings), not four times, and its speed-up over itself is 1 (was 0.004x cold).
    calls = []
    spy = lambda method, *a, **k: calls.append(method) or real(method, *a, **k)
    real = cmd.U.unlearn
    monkeypatch.setattr(cmd.U, "unlearn", spy)
    assert cli.main(base + ["--method", "retrain", "--forget-class", "3"]) == 0
    res = json.loads((run / "unlearn" / "retrain-class-3" / "results.json").read_text())
    assert calls == ["retrain", "retrain"]
    assert res["speedup_vs_retrain"] == {"cold": 1.0, "warm": 1.0}
    assert res["avg_gap"]["retrain"] == 0.0
    # Retrain of another seed than the original's beside the baseline Retrain: two rows (the
    # baseline's replaced the method's under one name: its own model never reported, gap 0).
    assert cli.main(base + ["--method", "retrain", "--forget-class", "3", "--seed", "1"]) == 0
    res = json.loads((run / "unlearn" / "retrain-class-3-method-seed-1" / "results.json")
                     .read_text())
    assert set(res["eval"]) == {"original", "retrain", "retrain_baseline"}
    assert res["eval"]["retrain"] != res["eval"]["retrain_baseline"]
    assert res["avg_gap"]["retrain"] > 0 and res["info"]["seed"] == 1


@pytest.mark.parametrize("argv, method_seed, train_seed", [
    ([], 0, None), (["--seed", "1"], 1, None), (["--train-seed", "5"], 0, 5),
    (["--train-seed", "5", "--seed", "1"], 1, 5), (["--seed", "1", "--train-seed", "5"], 1, 5),
])
def test_seed_and_train_seed_are_two_flags(argv, method_seed, train_seed):
    # They shared one argparse dest: the last one given set both (the other silently dropped).
    args = cli.build_parser().parse_args(["unlearn", "--method", "neggrad", "--forget-class",
                                          "3", *argv])
    assert args.method_seed == method_seed
    assert args._train_flags.given(args).get("seed") == train_seed


@pytest.mark.parametrize("argv, match", [
    (["--method", "gradtau", "--forget-class", "12"], "does not exist"),
    (["--method", "gradtau"], "forget request"),
    (["--method", "gradtau", "--forget-fraction", "1.5"], "between 0 and 1"),
])
def test_errors_exit_2_with_one_line(tmp_path, capsys, argv, match):
    rc = cli.main(["unlearn", "--dataset", "digits", "--run-dir", str(tmp_path), "--quiet",
                   "--epochs", "1"] + argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and match in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, match", [
    (["--method", "finetune", "--config.tau_mode=val"], "which has no tau_mode"),
    (["--method", "finetune", "--config.alpha_scale=0.5"], "which has no alpha_scale"),
    (["--method", "scrub", "--config.msteps=4"], "--config.msteps: ScrubConfig.msteps must be <="),
    (["--method", "gradtau", "--config.tau_mode=chance", "--config.tau_refresh_epochs=2"],
     "tau_refresh_epochs=2 refreshes τ, but tau_mode='chance' is log K, a constant"),
    (["--method", "gradtau", "--config.epochs=3", "--config.max_epochs=1"],
     "max_epochs=1 would be ignored"),
    # Refused only after the original was trained into the empty --run-dir (exit code 2).
    (["--method", "retrain", "--config.lr=0.1"], "drop the --config.* flags"),
])
def test_config_flags_a_method_would_ignore_are_refused(tmp_path, capsys, argv, match):
    # They were accepted, recorded in results.json's info.config, and had no effect.
    run = tmp_path / "run"
    rc = cli.main(["unlearn", "--dataset", "digits", "--run-dir", str(run), "--quiet",
                   "--forget-class", "3"] + argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and match in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_help_lists_no_default_for_the_fields_finetune_refuses():
    # Its help listed "default by method: gradtau 0.95, finetune 0.95" for every α / τ field,
    # each of which `--method finetune` refuses.
    from hyperforget_jax.unlearn.gradtau_run import ASCENT_FIELDS

    sub = next(a for a in cli.build_parser()._actions if a.choices and "unlearn" in a.choices)
    helps = {a.option_strings[0]: a.help for a in sub.choices["unlearn"]._actions
             if a.option_strings}
    for f in ASCENT_FIELDS:
        text = " ".join(helps[f"--config.{f}"].split())
        assert "gradtau" in text and "refused by finetune" in text
        assert "finetune " not in text.split("default by method:")[1]
    assert "finetune 0.1" in helps["--config.final_lr_fraction"]


def test_unknown_method_is_rejected(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["unlearn", "--method", "magic", "--forget-class", "3"])
    assert e.value.code == 2 and "gradtau" in capsys.readouterr().err


def test_unlearn_resumes_an_original_it_was_killed_training(tmp_path):
    """``unlearn`` trains the original when --run-dir holds none; killed during that training,
    the same command rerun resumes it (as ``train`` does) instead of refusing the unfinished
    run. The state a kill leaves: the last checkpoint is an earlier epoch."""
    import shutil

    from hyperforget_jax.commands import common

    run, ref = tmp_path / "orig", tmp_path / "ref"
    base = ["--dataset", "digits", "--epochs", "2", "--quiet"]
    assert cli.main(["train", *base, "--run-dir", str(ref)]) == 0
    assert cli.main(["train", *base, "--run-dir", str(run)]) == 0
    shutil.rmtree(run / "checkpoints" / "2")            # killed after epoch 1 of 2
    (run / "results.json").unlink()
    (run / "report.md").unlink()
    assert cli.main(["unlearn", *base, "--run-dir", str(run), "--method", "neggrad",
                     "--forget-class", "3", "--no-retrain", "--config.epochs=1"]) == 0
    res = json.loads((run / "unlearn" / "neggrad-class-3" / "results.json").read_text())
    assert res["original"] == "trained" and not common.unfinished_training(run)
    (_, params, _), (_, want, _) = common.load_run(run), common.load_run(ref)
    import jax
    import numpy as np
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_forget_indices_are_checked_on_the_run_s_own_dataset(tmp_path, capsys):
    """A run trained on digits, unlearned without --dataset: the refusal names the dataset
    mismatch, not an index "out of range" of the default MNIST-5k's 3,500 samples (the
    request was resolved on the default dataset before the run's data was compared)."""
    run = tmp_path / "orig"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(
        {"identity": {"role": "original", "dataset": "digits", "split_seed": 0}}))
    rc = cli.main(["unlearn", "--method", "neggrad", "--run-dir", str(run), "--quiet",
                   "--forget-indices", "5000"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "trained with --dataset digits, this command uses mnist5k" in err
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


def test_the_data_s_fingerprint_decides_over_the_name_it_was_recorded_under(digits_splits):
    """A hypernetwork of a corpus built before 2026-12-06 from digits splits passed without a
    name records dataset "mnist5k" and the digits fingerprint: `sample --dataset digits` was
    refused by the name, `--dataset mnist5k` by the fingerprint (no way to use it)."""
    import argparse

    from hyperforget_jax import rundir
    from hyperforget_jax.commands import common
    from hyperforget_jax.errors import DataError

    fp = rundir.data_fingerprint(digits_splits)
    meta = {"dataset": "mnist5k", "split_seed": 0, "identity": {"data": fp}}
    args = argparse.Namespace(dataset="digits", split_seed=0)
    common.check_same_data(meta, args, digits_splits, "h")     # the same arrays: accepted
    other = {**meta, "identity": {"data": "0" * 24}}
    with pytest.raises(DataError, match="trained with --dataset mnist5k, this command uses"):
        common.check_same_data(other, args, digits_splits, "h")
    with pytest.raises(DataError, match="differs from what the model"):
        common.check_same_data({**other, "dataset": "digits"}, args, digits_splits, "h")


def test_an_out_holding_another_run_is_refused_before_the_original_is_trained(tmp_path, capsys):
    # The --out check knew no identity: the original was trained into the empty --run-dir,
    # then the command exited 2 on the --out of `train`, leaving that run behind.
    from hyperforget_jax import rundir
    other = tmp_path / "other"
    with rundir.open_run(other, {"role": "original"}) as made:
        (made.path / "results.json").write_text("{}")
    run = tmp_path / "run"
    rc = cli.main(["unlearn", "--dataset", "digits", "--run-dir", str(run), "--quiet",
                   "--method", "neggrad", "--forget-class", "3", "--out", str(other)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "holds an 'original' run, not an 'unlearned' one" in err
    assert not run.exists()


def test_a_retrain_of_another_seed_beside_retrain_has_no_cold_comparison(tmp_path):
    # The Retrain beside a `--method retrain --seed 1` run reuses the programs that run
    # compiled: its "cold" 0.10 s against the run's 6.54 s read "0.0× cold".
    run = tmp_path / "orig"
    assert cli.main(["train", "--dataset", "digits", "--epochs", "2", "--run-dir", str(run)]) == 0
    assert cli.main(["unlearn", "--dataset", "digits", "--run-dir", str(run), "--method",
                     "retrain", "--seed", "1", "--forget-class", "3"]) == 0
    res = json.loads((run / "unlearn" / "retrain-class-3-method-seed-1" / "results.json").read_text())
    assert res["speedup_vs_retrain"]["cold"] is None and res["retrain_seconds"]["cold"] is None
    assert res["speedup_vs_retrain"]["warm"] > 0
    md = (run / "unlearn" / "retrain-class-3-method-seed-1" / "report.md").read_text()
    assert "no cold comparison (Retrain beside a retrain run shares its compiled" in md
