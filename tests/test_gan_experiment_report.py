"""experiments/gan_unlearning.py's report: the ``--class-lambda-u`` variants get their own
target rows beside the class recipe, item targets are left out when no item request ran, and a
bad λ_u list, request or recipe is refused before anything runs."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import load_experiment


def _run(request, method, seed, seconds=10.0, **ev):
    return {"seed": seed, "request": request, "method": method, "seconds": seconds + seed,
            "steps": 100, "eval": ev}


def _res():
    runs = []
    for seed in (0, 1):
        runs += [_run("class3", "original", seed, forgotten_share=0.10, classifier_fid=600.0),
                 _run("class3", "retrain", seed, forgotten_share=0.03, classifier_fid=500.0,
                      downstream_acc=0.92, downstream_acc_kept=0.93),
                 _run("class3", "unlearn_hard", seed, forgotten_share=0.012,
                      classifier_fid=510.0, downstream_acc=0.85, downstream_acc_kept=0.94),
                 _run("class3", "unlearn_hard_lu16", seed, seconds=1.6, forgotten_share=0.006,
                      classifier_fid=700.0, downstream_acc=0.84, downstream_acc_kept=0.925)]
    runs.append(_run("none", "original_train", 0))
    recipe = {"fake_label": "hard", "substitution": "latent", "lambda_s": 1.0}
    return {"config": {"epochs": 60}, "gan_config": {"arch": "dcgan", "lr": 1e-3},
            "class_cfg": recipe, "item_cfg": {**recipe, "fake_label": "heldout"},
            "class_lambda_u": [16.0], "judge": {"arch": "JudgeCNN", "test_accuracy": 0.985},
            "runs": runs}


def _marks(md):
    """{target text: ✓ / ✗ / –} from the targets table."""
    rows = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| ")]
    return {r[0].strip(): r[2].strip() for r in rows if len(r) == 3}


def test_lambda_u_variants_get_their_own_target_rows():
    gan = load_experiment("gan_unlearning")
    marks = _marks(gan.targets(_res(), [3]))
    assert marks["class 3: forgotten share ≤ 1%"] == "✗"                       # 1.2%
    assert marks["class 3: classifier-FID within 20% of Retrain's"] == "✓"     # 510 vs 500
    assert marks["class 3 (unlearn_hard_lu16): forgotten share ≤ 1%"] == "✓"   # 0.6%
    assert marks["class 3 (unlearn_hard_lu16): classifier-FID within 20% of Retrain's"] == "✗"
    assert marks["class 3 (unlearn_hard_lu16): downstream accuracy (kept classes) within 2 "
                 "points of Retrain's"] == "✓"
    assert not any(k.startswith("64 items") for k in marks)      # no item request in this run


def test_render_lists_each_variant_with_its_speed_up():
    gan = load_experiment("gan_unlearning")
    md = gan.render(_res(), [], [], [3])
    assert "| class3 | unlearn_hard_lu16 |" in md
    speed = [line for line in md.splitlines()
             if line.startswith("| class3 | unlearn_hard_lu16 | 10.5")]   # Retrain median 10.5 s
    assert len(speed) == 1 and "| 5.0× |" in speed[0]                     # vs 2.1 s


def test_a_seed_without_a_value_is_marked_not_dropped_from_the_mean():
    """A seed whose evaluation lacks a value (None in results.json, e.g. a NaN metric) was left
    out of the mean ± std without a word; it is marked as in unlearning_table's tables."""
    gan = load_experiment("gan_unlearning")
    res = _res()
    res["runs"][6]["eval"]["classifier_fid"] = None          # unlearn_hard, seed 1
    md = gan.render(res, [], [], [3])
    row = next(line for line in md.splitlines() if line.startswith("| class3 | unlearn_hard |"))
    assert "510.00 ± – [1 of 2 seeds]" in row and "1.20 ± 0.00" in row
    assert gan.ms([None, None]) == "–" and gan.ms([1.0, 3.0]) == "2.00 ± 1.41"


@pytest.mark.parametrize("bad", ["0", "4,-1", "four", "nan"])
def test_bad_lambda_u_refused_before_anything_runs(bad, tmp_path, capsys):
    gan = load_experiment("gan_unlearning")
    with pytest.raises(SystemExit) as exc:
        gan.main(["--class-lambda-u", bad, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "--class-lambda-u" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,words", [
    (["--classes", "12"], "class 12 does not exist"),
    (["--classes", "3,3"], "--classes lists a value twice"),
    (["--sizes", "0"], "item counts must lie in 1..3499"),
    (["--retrain-sizes", "99999"], "item counts must lie in 1..3499"),
    (["--sizes", "6x"], "--sizes takes comma-separated integers"),
    (["--fake-labels", "hard,soft"], "--fake-labels takes hard, generated, heldout"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--samples", "1"], "at least 2 generated samples"),
    (["--epochs", "-1"], "epochs must be >= 0"),
    # A sweep of untrained GANs, and a 1.8-minute run to an empty report (stop 64).
    (["--epochs", "0"], "--epochs 0 trains nothing"),
    (["--classes", "", "--sizes", ""], "--classes and --sizes are both empty"),
    (["--classes", "٣"], "--classes takes comma-separated integers")])
def test_bad_requests_and_recipes_refused_before_anything_runs(argv, words, tmp_path, capsys):
    # They used to train the judge and the GANs first (minutes), or crash with a traceback.
    gan = load_experiment("gan_unlearning")
    with pytest.raises(SystemExit) as exc:
        gan.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_retrain_sizes_must_be_run_item_sets():
    # `--sizes 32` (the default --retrain-sizes 64) ran the 32 items without any Retrain and
    # recorded retrain_sizes [64]; a class-only run (--sizes "") stays accepted.
    import argparse

    from hyperforget_jax import data
    from hyperforget_jax.errors import ConfigError
    gan = load_experiment("gan_unlearning")
    splits = data.make_splits(data.load_mnist5k())
    ns = lambda sizes, retrain: argparse.Namespace(seeds=1, sizes=sizes, retrain_sizes=retrain,
                                                   fake_labels="hard", classes="3")
    assert gan._request_lists(ns("", "64"), splits)[:2] == ([], [64])
    assert gan._request_lists(ns("32,64", "64"), splits)[:2] == ([32, 64], [64])
    assert gan._request_lists(ns("32", ""), splits)[:2] == ([32], [])
    with pytest.raises(ConfigError, match="--retrain-sizes 64 names item counts --sizes 32 "):
        gan._request_lists(ns("32", "64"), splits)


@pytest.mark.parametrize("flag, first, second, joined", [
    ("--classes", "3", "8", "--classes 3,8"),
    ("--sizes", "16", "64", "--sizes 16,64"),
    ("--class-lambda-u", "4,16", "32", "--class-lambda-u 4.0,16.0,32.0")])
def test_a_comma_list_flag_given_twice_is_refused(flag, first, second, joined, tmp_path,
                                                  capsys, monkeypatch):
    # As the CLI's --forget-indices (cli.ListInOne): `--classes 3 --classes 8` ran class 8
    # alone, for the minutes the sweep takes, where its reader expected both.
    gan = load_experiment("gan_unlearning")

    def ran(*a, **k):
        raise AssertionError("the run started")

    monkeypatch.setattr(gan.data, "make_splits", ran)
    with pytest.raises(SystemExit) as exc:
        gan.main([flag, first, flag, second, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "given twice" in err and f"give it once with every item: {joined} " in err
    assert not (tmp_path / "out").exists()


def test_lambda_u_list_parses():
    gan = load_experiment("gan_unlearning")
    assert gan._weights("4,16") == [4.0, 16.0] and gan._weights("") == []
    assert gan.class_variant(4.0) == "unlearn_hard_lu4"


def test_guard_summary_counts_the_checks_the_kept_class_mix_guard_refused():
    gan = load_experiment("gan_unlearning")
    from hyperforget_jax.gan.unlearn import CLASS_RECIPE
    cfg = dataclasses.replace(CLASS_RECIPE, max_share=0.005, max_kept_drift=0.25)
    history = [{"share": 0.09, "kept_drift": 0.0}, {"share": 0.004, "kept_drift": 0.35},
               {"share": 0.02, "kept_drift": 0.26}, {"share": 0.004, "kept_drift": 0.25},
               {"share": 0.003, "kept_drift": 0.1}]
    assert gan.guard_summary(history, cfg) == {
        "checks": 5, "max_drift": 0.35, "refused": 2, "refused_at_share_bound": 1}
    # Item runs have no kept-class mix.
    assert gan.guard_summary([{"share": None, "kept_drift": None}], cfg) is None


def test_confirm_summary_counts_the_pools_the_confirmation_refuted():
    gan = load_experiment("gan_unlearning")
    from hyperforget_jax.gan.unlearn import CLASS_RECIPE
    history = [{"share": 0.09}, {"share": 0.004, "confirm_share": 0.008},
               {"share": 0.02}, {"share": 0.005, "confirm_share": 0.005}]
    assert gan.confirm_summary(history, CLASS_RECIPE) == {"confirmed": 2, "refuted": 1}
    assert gan.confirm_summary(history, dataclasses.replace(CLASS_RECIPE,
                                                            confirm_size=0)) is None
    assert "confirmed on 8,192 more codes" in gan._confirm(CLASS_RECIPE.to_json())
    assert gan._confirm({"confirm_size": 0}) == ""


def test_render_states_the_escalation_and_the_weight_kept_per_seed():
    gan = load_experiment("gan_unlearning")
    res = _res()
    res["class_cfg"] = {**res["class_cfg"], "lambda_u": 1.0, "lambda_u_attempts": 3,
                        "lambda_u_growth": 4.0, "max_rounds": 1200}
    for r in res["runs"]:
        if r["method"] == "unlearn_hard":
            escalated = r["seed"] == 1
            r["attempts"] = ([{"lambda_u": 1.0, "rounds": 1200, "stopped": "max_rounds"}]
                             if escalated else []) + [
                {"lambda_u": 4.0 if escalated else 1.0, "rounds": 640, "stopped": "criteria"}]
            r["lambda_u"] = r["attempts"][-1]["lambda_u"]
            r["guard"] = ({"checks": 93, "max_drift": 0.31, "refused": 2,
                           "refused_at_share_bound": 1} if escalated else
                          {"checks": 33, "max_drift": 0.124, "refused": 0,
                           "refused_at_share_bound": 0})
    md = gan.render(res, [], [], [3])
    assert "λ_u 1, 4, 16 (the next weight, from the Original, when an attempt reaches 1,200" in md
    assert ("- class3: seed 0 (λ_u 1: 640 rounds, kept λ_u 1; kept-class drift ≤ 0.12, no "
            "check refused); seed 1 (λ_u 1: 1200 → λ_u 4: 640 rounds, kept λ_u 4; kept-class "
            "drift ≤ 0.31, 2 of 93 checks refused by the guard (1 at or under the share "
            "bound))") in md
    # The fixed-weight variants run without the escalation.
    assert gan.fixed_lambda_u(16.0).lambda_u_attempts == 1


@pytest.mark.parametrize("argv,words", [
    (["--fake-labels", "hard,heldout,hard"], "--fake-labels lists a value twice"),
    (["--class-lambda-u", "4,16,4.0"], "λ_u lists a value twice")])
def test_a_value_listed_twice_is_refused(argv, words, tmp_path, capsys, monkeypatch):
    # Both runs of a seed were recorded under one method name: the table's mean ± std pooled
    # 2 runs per seed (identical seeds, so a std too small) and the λ_u targets came twice.
    gan = load_experiment("gan_unlearning")
    monkeypatch.setattr(gan, "judge_from_recipe", lambda *a, **k: pytest.fail("it trained"))
    with pytest.raises(SystemExit) as exc:
        gan.main([*argv, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_header_states_the_number_of_generated_samples():
    # The header said "an MLP trained on 10k generated samples" whatever --samples was.
    gan = load_experiment("gan_unlearning")
    res = _res()
    assert "trained on 10,000 generated samples" in gan.render(res, [], [], [3])  # old results
    res["config"]["samples"] = 500
    md = gan.render(res, [], [], [3])
    assert "trained on 500 generated samples" in md and "10,000" not in md


def test_unwritable_grids_dir_refused_before_anything_runs(tmp_path, monkeypatch):
    # --grids-dir was created only after the whole run (~30 min): an unwritable one failed
    # at the very end.
    from hyperforget_jax.errors import ConfigError
    gan = load_experiment("gan_unlearning")
    monkeypatch.setattr(gan, "judge_from_recipe", lambda *a, **k: pytest.fail("it trained"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="choose another --grids-dir"):
        gan.main(["--out", str(tmp_path / "out"), "--grids-dir", str(tmp_path / "file" / "g")])


def test_a_rerun_into_the_same_out_drops_the_previous_runs_report_and_grids(tmp_path,
                                                                           monkeypatch):
    # A rerun with other settings (--classes 8 after --classes 3) copied the first run's
    # grid_class3_*.png to --grids-dir beside its own, and an interrupted rerun left the old
    # report.md beside the new (partial) results.json.
    gan = load_experiment("gan_unlearning")

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(gan, "judge_from_recipe", stop)
    out, grids = tmp_path / "out", tmp_path / "grids"
    out.mkdir()
    for name in ("report.md", "grid_class3_unlearn.png", "grid_original.png"):
        (out / name).write_text("previous run")
    with pytest.raises(Stop):
        gan.main(["--out", str(out), "--grids-dir", str(grids), "--classes", "8"])
    assert sorted(p.name for p in out.iterdir()) == []


_SPLITS: list = []
_TINY = ["--seeds", "2", "--classes", "3", "--sizes", "64", "--retrain-sizes", "64",
         "--fake-labels", "heldout", "--samples", "100"]


def _fake_gan(gan, monkeypatch, raise_at=None, during=None):
    """Replaces the judge, the GAN trainings, the cascade and the evaluations by cheap
    deterministic stand-ins (what is tested is the resume machinery around them); the
    ``raise_at``-th evaluation is interrupted (KeyboardInterrupt, as Ctrl-C), ``during()``
    runs at the first. Returns the evaluations' (request size, method seed) calls."""
    from types import SimpleNamespace

    import numpy as np

    if not _SPLITS:
        _SPLITS.append(gan.data.load_mnist5k())
    monkeypatch.setattr(gan.data, "load_mnist5k", lambda: _SPLITS[0])
    arch = SimpleNamespace(to_json=lambda: {})       # no gan_arch in the report
    calls = []
    monkeypatch.setattr(gan, "judge_from_recipe", lambda train, rec: SimpleNamespace(
        params={"w": np.ones(3, np.float32)}))
    monkeypatch.setattr(gan, "judge_outputs", lambda judge, x: (
        np.eye(10)[np.arange(len(x)) % 10], np.zeros((len(x), 2))))
    trains = []

    def timed_train_gan(train, cfg):
        trains.append((len(train), cfg.epochs, cfg.seed))
        return (SimpleNamespace(g_params={"g": np.float32([cfg.seed, len(train)])},
                                d_params={"d": np.zeros(1)}, step=7), 1.5, arch)

    monkeypatch.setattr(gan, "timed_train_gan", timed_train_gan)
    monkeypatch.setattr(gan, "unlearn_gan", lambda arch, g, d, cfg, **k: SimpleNamespace(
        g_params={"g": g["g"] + cfg.lambda_u}, d_params=d, seconds=0.25, rounds=10,
        stopped="criteria", y_f=None, lambda_u=cfg.lambda_u, attempts=[], kept=None,
        history=[]))
    monkeypatch.setattr(gan, "sample", lambda arch, g, n, seed: g["g"])
    monkeypatch.setattr(gan, "save_grid", lambda x, path, title: path.write_text(f"{x}"))

    def evaluate(arch, g, d, judge, splits, fx, rx, fcls, ev, ref, forget_y=None):
        # The items' labels, for D's class-matched attack.
        assert forget_y is not None and len(forget_y) == len(fx)
        calls.append((len(fx), float(g["g"][0])))
        if len(calls) == 1 and during:
            during()
        if len(calls) == raise_at:
            raise KeyboardInterrupt
        v = np.float32(g["g"].sum() / 7 + len(fx))
        return {"classifier_fid": v, "classifier_is": v / 3, "forgotten_share": v / 1e4,
                "d_mia_auc": float("nan"), "downstream_acc": 0.9, "downstream_acc_kept": 0.91}

    monkeypatch.setattr(gan, "evaluate_gan", evaluate)
    _TRAINS[:] = [trains]       # the GAN trainings' (set size, epochs, seed)
    return calls


_TRAINS: list = []


def test_an_interrupted_gan_sweep_resumes_to_the_uninterrupted_report(tmp_path, monkeypatch):
    # An interrupted run (~30 min) kept a partial results.json and the grids drawn so far, and
    # the rerun started over. Each (seed, request, method) is now a cell of <out>/cells, reused
    # by the same command only; results, report and grids are written at the end only.
    import json

    from hyperforget_jax.errors import RunDirError
    gan = load_experiment("gan_unlearning")
    a, b = tmp_path / "a", tmp_path / "b"
    full = _fake_gan(gan, monkeypatch)
    gan.main([*_TINY, "--out", str(a)])                       # uninterrupted: 16 runs
    # One untimed epoch on the training set warms the originals' timed runs (seed 0's time
    # included the compilation before stop 63), as one on each D_r size warms Retrain's.
    n = _TRAINS[0][1][0]                                       # the training set's size
    assert _TRAINS[0][:3] == [(n, 1, 0), (n, 60, 0), (n, 60, 1)], _TRAINS[0][:3]
    _fake_gan(gan, monkeypatch, raise_at=11)
    with pytest.raises(KeyboardInterrupt):
        gan.main([*_TINY, "--out", str(b)])
    assert sorted(p.name for p in b.iterdir()) == ["cells", "run.json"]   # no report, no grid
    calls = _fake_gan(gan, monkeypatch)
    gan.main([*_TINY, "--out", str(b)])                       # the same command resumes
    assert calls == full[10:]
    md = [(d / "report.md").read_text().splitlines() for d in (a, b)]
    assert md[0][:-1] == md[1][:-1] and "Resumed: 10 runs reused" in md[1][-1]
    res = [json.loads((d / "results.json").read_text()) for d in (a, b)]
    for r in res:
        del r["total_seconds"], r["reused"], r["config"]["out"]
    assert res[0] == res[1]
    grids = [{p.name: p.read_text() for p in d.glob("grid_*.png")} for d in (a, b)]
    assert grids[0] == grids[1] and len(grids[0]) == 5
    # Another configuration is refused; a second writer too.
    with pytest.raises(RunDirError, match="its samples is 100, this command's is 200"):
        gan.main([*_TINY, "--samples", "200", "--out", str(b)])

    def second_writer():
        with pytest.raises(RunDirError, match="is being written by process"):
            gan.main([*_TINY, "--out", str(b)])

    _fake_gan(gan, monkeypatch, during=second_writer)
    gan.main([*_TINY, "--restart", "--out", str(b)])
    assert "Resumed" not in (b / "report.md").read_text()


def test_a_changed_evaluation_default_is_not_resumed_from_the_old_cells(tmp_path, monkeypatch):
    # The evaluation's recipe beyond --samples (the downstream classifier's epochs, the
    # sampling seed) is EvalConfig's defaults, which no flag names: a rerun after one changed
    # reused every stored cell. The whole EvalConfig is part of the run's identity now.
    import functools

    from hyperforget_jax.errors import RunDirError
    gan = load_experiment("gan_unlearning")
    _fake_gan(gan, monkeypatch)
    gan.main([*_TINY, "--out", str(tmp_path)])
    monkeypatch.setattr(gan, "EvalConfig", functools.partial(gan.EvalConfig, downstream_epochs=3))
    calls = _fake_gan(gan, monkeypatch)
    with pytest.raises(RunDirError, match="its eval_cfg.downstream_epochs is 10"):
        gan.main([*_TINY, "--out", str(tmp_path)])
    assert calls == []
