"""experiments/privacy_gate.py as a release gate: one tiny real run (digits, gpt_mlp, 1 seed, 3
shadow pairs) that passes with loose tolerances, then the same numbers re-gated (``--recheck``)
with a zero tolerance must fail with exit 1 and name the method; bad settings exit 2. The
HyperForget rows are gated too (a zero-weight hypernetwork, so every step of that path runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_experiment, save_zero_hypernet, tiny_hyperspec

BASE = ["--dataset", "digits", "--arch", "gpt_mlp", "--epochs", "3", "--batch-size", "64",
        "--lr", "0.01", "--seeds", "1", "--shadows", "3", "--gradtau-epochs", "1", "--quiet"]


def test_gate_flags_come_from_the_configs():
    """--arch/--epochs/... build a TrainConfig, --gradtau-FIELD a GradTauConfig; --help shows
    each field's docstring text."""
    gate = load_experiment("privacy_gate")
    args = gate.parse_args([*BASE, "--weight-decay", "0.001", "--gradtau-alpha-scale", "1",
                            "--gradtau-max-epochs", "none"])
    tcfg, gcfg = gate.configs(args)
    assert (tcfg.arch, tcfg.epochs, tcfg.batch_size, tcfg.lr, tcfg.weight_decay) == (
        "gpt_mlp", 3, 64, 0.01, 0.001)
    assert (gcfg.epochs, gcfg.alpha_scale, gcfg.max_epochs, gcfg.lr) == (1, 1.0, None, 1e-3)
    help_text = " ".join(gate.build_parser().format_help().split())
    assert "passes over the training set" in help_text          # TrainConfig.epochs
    assert "--gradtau-tau-mode {auto,val,unseen_class,chance}" in help_text
TINY = [*BASE, "--forget-class", "3"]


def test_recheck_takes_a_path_that_starts_with_a_dash():
    """`--recheck=-g.json` (a relative path starting with '-') was refused as "expected one
    argument": the check for flags beside --recheck re-parsed it as two words (stop 63)."""
    gate = load_experiment("privacy_gate")
    args = gate.parse_args(["--recheck=-g.json", "--tol-mia", "0.1"])
    assert (str(args.recheck), args.tol_mia) == ("-g.json", 0.1)


def _zero_hypernet(path: Path) -> None:
    """A DiHyFo-2 hypernetwork for gpt_mlp on digits with zero weights: its samples are
    meaningless, but every step of the gate's HyperForget path runs (load, prompts, sampling
    for the target and each U-LiRA shadow)."""
    from hyperforget_jax import models

    save_zero_hypernet(path, tiny_hyperspec(models.make_architecture("gpt_mlp", (8, 8, 1))))


@pytest.fixture(scope="module")
def passed_run(tmp_path_factory):
    """The one real gate run of this file, HyperForget rows included: a run without
    ``--hypernet`` computes the same Retrain and ∇τ rows (the hypernetwork only adds its own),
    so one run serves the tests of both (it was two runs, ≈ 10 s each). Returns (the module,
    the out directory, the exit code, the key bits of every HyperForget sample in call order:
    the target's, then each shadow's)."""
    import jax
    import numpy as np
    from hyperforget_jax.hyperforget import dihyfo

    gate = load_experiment("privacy_gate")
    root = tmp_path_factory.mktemp("gate")
    _zero_hypernet(root / "hypernet")
    out = root / "pass"
    keys, real = [], dihyfo.sample

    def spy(key, *args, **kwargs):
        keys.append(tuple(np.asarray(jax.random.key_data(key)).ravel().tolist()))
        return real(key, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dihyfo, "sample", spy)
        rc = gate.main([*TINY, "--hypernet", str(root / "hypernet"), "--num-steps", "2",
                        "--out", str(out), "--tol-mia", "1", "--tol-ulira", "1"])
    return gate, out, rc, keys


def test_gate_hyperforget_path(passed_run, tmp_path, capfd):
    """The HyperForget rows: load, prompts, sampling for the target and every shadow."""
    gate, out, rc, _ = passed_run
    assert rc == 0
    res = json.loads((out / "gate.json").read_text())
    assert set(res["per_seed"]) == {"retrain", "gradtau", "hyperforget"}
    assert "| hyperforget |" in (out / "gate.md").read_text()
    capfd.readouterr()
    assert gate.main(["--recheck", str(out / "gate.json"), "--out",
                      str(tmp_path / "b"), "--tol-mia", "0", "--tol-ulira", "0", "--quiet"]) == 1
    assert "hyperforget FAILED" in capfd.readouterr().err


def test_gate_hyperforget_shadows_do_not_sample_with_the_targets_key(passed_run):
    """The target's HyperForget sample and each shadow's draw from keys of their own. The
    shadows sampled with their index as seed: shadow 0 with model seed 0's key, i.e. the target's
    DDIM noise (η = 0: a twin of the target among the attack's "unlearned" shadows)."""
    *_, keys = passed_run
    assert len(keys) == 4, keys                   # 1 model seed: the target and 3 shadows
    assert len(set(keys)) == len(keys), keys


def test_gate_passes_with_loose_tolerance_and_reports_beside_retrain(passed_run):
    gate, out, rc, _ = passed_run
    assert rc == 0
    res = json.loads((out / "gate.json").read_text())
    assert res["passed"] and set(res["per_seed"]) == {"retrain", "gradtau", "hyperforget"}
    for row in res["per_seed"].values():
        assert 0.0 <= row[0]["mia_loss_lr"] <= 1.0 and 0.0 <= row[0]["ulira_acc"] <= 1.0
    assert res["per_seed"]["retrain"][0]["forget_acc"] == 0.0  # class 3 never seen
    v = res["verdicts"]["gradtau"]
    want = abs(res["per_seed"]["gradtau"][0]["mia_loss_lr"]
               - res["per_seed"]["retrain"][0]["mia_loss_lr"])
    assert v["gap_mia_loss_lr"] == pytest.approx(want)
    md = (out / "gate.md").read_text()
    assert "| retrain |" in md and "| gradtau |" in md and "PASSED" in md


def test_gate_fails_with_zero_tolerance(passed_run, tmp_path, capfd, monkeypatch):
    gate, out, *_ = passed_run
    res = json.loads((out / "gate.json").read_text())
    for v in res["verdicts"].values():
        assert v["gap_mia_loss_lr"] > 0 or v["gap_ulira_acc"] > 0  # something to fail on
    capfd.readouterr()
    # Without --out, a recheck writes to its own default, not over the gate run it reads
    # (that directory holds the run: refused since the gate resumes, which broke `--recheck
    # runs/privacy_gate/gate.json` with both modes' old default).
    monkeypatch.chdir(tmp_path)
    rc = gate.main(["--recheck", str(out / "gate.json"), "--tol-mia", "0", "--tol-ulira", "0",
                    "--quiet"])
    err = capfd.readouterr().err
    assert rc == 1
    assert "gradtau FAILED" in err
    fail = tmp_path / "runs" / "privacy_gate_recheck"
    again = json.loads((fail / "gate.json").read_text())
    assert not again["passed"] and again["per_seed"] == res["per_seed"]
    # The recheck says it is one, and what the run it re-gates concluded at its tolerances.
    assert again["recheck_of"] == {"path": str(out / "gate.json"), "passed": True,
                                   "tolerance": {"mia_loss_lr": 1.0, "ulira_acc": 1.0}}
    md = (fail / "gate.md").read_text()
    assert "FAIL" in md and (f"Rechecked (`--recheck`, no training): the numbers of "
                             f"`{out / 'gate.json'}`, gated there at tolerances mia_loss_lr "
                             "1.0, U-LiRA 1.0: PASSED; the time below is that run's.") in md
    assert "recheck_of" not in res and "Rechecked" not in (out / "gate.md").read_text()


def test_gate_fails_a_ulira_accuracy_far_below_the_floor(passed_run, tmp_path, capfd):
    # An attack that is reliably wrong (accuracy 0.05) tells the models apart as well as one
    # that is reliably right: the one-sided gap let it pass.
    gate, out, *_ = passed_run
    res = json.loads((out / "gate.json").read_text())
    del res["per_seed"]["hyperforget"]          # only the rows this case is about
    for row in res["per_seed"]["gradtau"]:
        row["ulira_acc"] = 0.05
    res["per_seed"]["gradtau"][0]["mia_loss_lr"] = res["per_seed"]["retrain"][0]["mia_loss_lr"]
    (tmp_path / "inverted.json").write_text(json.dumps(res))
    capfd.readouterr()
    rc = gate.main(["--recheck", str(tmp_path / "inverted.json"), "--out", str(tmp_path / "g"),
                    "--tol-mia", "1", "--tol-ulira", "0.1", "--quiet"])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("privacy_gate: gradtau FAILED: U-LiRA gap "), err


def test_recheck_refuses_damaged_numbers_and_flags_it_would_ignore(passed_run, tmp_path,
                                                                   capfd):
    """A gate.json with a NaN (stored as null) or without a key was a traceback, exit 1 (read
    by CI as "gate failed"), after an empty --out was made; a NaN gap passed the gate. The
    run's settings beside --recheck were ignored without a word."""
    gate, out, *_ = passed_run
    res = json.loads((out / "gate.json").read_text())

    def damaged(edit):
        d = json.loads(json.dumps(res))
        edit(d)
        return d

    for name, d, words in (
            ("null", damaged(lambda d: d["per_seed"]["gradtau"][0].update(mia_loss_lr=None)),
             "per_seed.gradtau: mia_loss_lr is None, not a finite number"),
            ("no-seeds", damaged(lambda d: d.pop("seeds")), "('seeds')"),
            ("short", damaged(lambda d: d["per_seed"]["gradtau"].pop()),
             "per_seed.gradtau must be a list of"),
            ("only-retrain", damaged(lambda d: [d["per_seed"].pop(k) for k in list(
                d["per_seed"]) if k != "retrain"]), "at least one method's")):
        (tmp_path / f"{name}.json").write_text(json.dumps(d))
        capfd.readouterr()
        rc = gate.main(["--recheck", str(tmp_path / f"{name}.json"), "--out",
                        str(tmp_path / name), "--quiet"])
        err = capfd.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and words in err[0], (name, err)
        assert not (tmp_path / name).exists()
    # A NaN gap fails (`nan > tol` is False: it passed).
    args = gate.parse_args(["--tol-mia", "1", "--tol-ulira", "1"])
    rows = {"retrain": res["per_seed"]["retrain"],
            "gradtau": [dict(r, mia_loss_lr=float("nan")) for r in res["per_seed"]["gradtau"]]}
    (tmp_path / "nan").mkdir()
    verdict = gate.gate(rows, args, gate._check(args), type("A", (), {"name": "mlp"}), 0.0,
                        tmp_path / "nan")["verdicts"]["gradtau"]
    assert not verdict["passed"] and "mia_loss_lr gap nan" in verdict["failures"][0]
    with pytest.raises(SystemExit) as e:
        gate.main(["--recheck", str(out / "gate.json"), "--seeds", "7"])
    assert e.value.code == 2
    assert "--seeds would be ignored: --recheck re-gates" in capfd.readouterr().err
    # An unset variable for --recheck started the whole gate run (the review).
    with pytest.raises(SystemExit) as e:
        gate.main(["--recheck", ""])
    assert e.value.code == 2 and "expected a path, got ''" in capfd.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--tol-mia", "-1"], "--tol-mia must be"),
    (["--shadows", "2"], "num_shadows must be >= 3"),
    (["--seeds", "0"], "--seeds must be"),
    (["--hypernet", "x", "--forget-fraction", "0.1"], "class requests only"),
    (["--forget-class", "12"], "class 12 does not exist"),
    (["--arch", "vit"], "unknown architecture 'vit'"),                  # TrainConfig's check
    (["--gradtau-final-lr-fraction", "2"], "final_lr_fraction must be"),  # GradTauConfig's
    # Refused after the first seed's trainings (0), or silently unused (no --hypernet).
    (["--hypernet", "pretrained", "--num-steps", "0"], "DDIM needs 1 <= num_steps"),
    (["--num-steps", "5"], "--num-steps is HyperForget's DDIM steps; pass --hypernet"),
    # 2 forget samples pass the size check; U-LiRA refused them after the first seed's
    # trainings, leaving an empty --out.
    (["--forget-fraction", "0.0016", "--shadows", "3"], "targeted by one shadow only"),
])
def test_gate_bad_settings_exit_2_and_write_nothing(tmp_path, capfd, argv, words):
    gate = load_experiment("privacy_gate")
    if "--forget-class" not in argv and "--forget-fraction" not in argv:
        argv = [*argv, "--forget-class", "3"]
    capfd.readouterr()
    rc = gate.main([*BASE, *argv, "--out", str(tmp_path / "out")])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out").exists()      # not even an empty directory


def test_noise_floor_shadows_are_not_the_retrained_shadows(tmp_path, monkeypatch):
    """The floor's "unlearned" shadows are retrainings with *other* seeds than the retrained
    shadows. Its seeds used to be ``seed + 1000 + s``, which for model seed 1 are U-LiRA's own
    shadow seeds (``1000·seed + 1 + s``): the two fleets were the same models, and that seed's
    floor compared a model with itself."""
    import jax
    import numpy as np
    from hyperforget_jax import ulira

    gate = load_experiment("privacy_gate")
    calls = []
    real = ulira.ulira

    def spy(arch, shadows, unlearned, *rest):
        calls.append(max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                         zip(jax.tree.leaves(unlearned), jax.tree.leaves(shadows.retrain_params))))
        return real(arch, shadows, unlearned, *rest)

    monkeypatch.setattr(ulira, "ulira", spy)
    argv = [*BASE[:BASE.index("--epochs") + 1], "1", *BASE[BASE.index("--epochs") + 2:]]
    argv[argv.index("--seeds") + 1] = "2"                    # model seeds 0 and 1
    assert gate.main([*argv, "--forget-class", "3", "--out", str(tmp_path / "g"),
                      "--tol-mia", "1", "--tol-ulira", "1"]) == 0
    floors = calls[0::2]                                     # per seed: floor, then gradtau
    assert len(floors) == 2 and min(floors) > 1e-3, floors


def test_recheck_and_out_with_a_tilde(passed_run, tmp_path, monkeypatch, capfd):
    # `--out=~/gate` (a tilde the shell leaves alone) wrote into ~/gate, then read gate.md from
    # ./~/gate: a traceback and exit 1, which a CI job reads as a failed gate; `--recheck
    # ~/gate.json` was "not a gate.json".
    gate, out, *_ = passed_run
    (tmp_path / "old.json").write_text((out / "gate.json").read_text())
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "cwd")
    capfd.readouterr()
    assert gate.main(["--recheck", "~/old.json", "--out", "~/g", "--tol-mia", "1",
                      "--tol-ulira", "1"]) == 0
    assert "| model |" in capfd.readouterr().out
    assert (tmp_path / "g" / "gate.md").is_file() and not (tmp_path / "cwd" / "~").exists()


def test_an_interrupted_gate_resumes_to_the_same_verdict_and_exit(tmp_path, monkeypatch,
                                                                 capfd, digits_splits):
    # The gate started over when rerun (every seed's original, Retrain, floor and shadows),
    # took no lock, and an interrupted rerun left the previous gate.json in --out. Each model
    # seed is now a cell; the resumed run reports and exits as the uninterrupted one.
    import numpy as np

    gate = load_experiment("privacy_gate")
    # The data, loaded once (a Splits passes make_splits as it is).
    monkeypatch.setattr(gate.data, "load_dataset", lambda name, data_dir: digits_splits)
    calls = []

    def seed_rows(args, splits, fsplit, request, base, arch, methods, seed, raise_at=None):
        calls.append(seed)
        if len(calls) == raise_at:
            raise KeyboardInterrupt
        v = np.float32(0.5 + seed / 7)                        # float32, as real metrics give
        return {"retrain": {"mia_loss_lr": v, "ulira_acc": 0.5, "ulira_auc": 0.5,
                            "forget_acc": 0.0},
                "gradtau": {"mia_loss_lr": v + 0.1, "ulira_acc": 0.55, "ulira_auc": 0.6,
                            "forget_acc": np.float64(0.01)}}

    def fake(raise_at=None):
        calls.clear()
        monkeypatch.setattr(gate, "_seed", lambda *a: seed_rows(*a, raise_at=raise_at))

    argv = [*TINY, "--seeds", "3"]          # the later --seeds wins; the gate fails (gap 0.1)
    a, b = tmp_path / "a", tmp_path / "b"
    fake()
    assert gate.main([*argv, "--out", str(a)]) == 1
    fake(raise_at=3)
    with pytest.raises(KeyboardInterrupt):
        gate.main([*argv, "--out", str(b)])
    assert sorted(p.name for p in b.iterdir()) == ["cells", "run.json"]   # no verdict yet
    fake()
    assert gate.main([*argv, "--out", str(b)]) == 1                      # resumed: same exit
    assert calls == [2]
    md = [(d / "gate.md").read_text().splitlines() for d in (a, b)]
    assert md[0][:-1] == md[1][:-1] and "resumed: seed 0, seed 1 reused" in md[1][-1]
    res = [json.loads((d / "gate.json").read_text()) for d in (a, b)]
    assert res[1].pop("reused") == ["seed 0", "seed 1"] and res[0].pop("reused") == []
    for r in res:
        del r["seconds"]
    assert res[0] == res[1] and not res[1]["passed"]
    capfd.readouterr()                      # another configuration: exit 2, one line
    assert gate.main([*argv, "--tol-mia", "1", "--out", str(b)]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its tol_mia is 0.05, this command's is 1.0" in err[0], err
    assert (b / "gate.md").read_text().splitlines() == md[1]
    fake()
    assert gate.main([*argv, "--tol-mia", "1", "--restart", "--out", str(b)]) == 0
    assert calls == [0, 1, 2]


def test_a_model_that_unlearned_nothing_fails_the_gate_on_a_random_request(tmp_path,
                                                                           monkeypatch):
    # The target pair was the real request's models, trained on all of D_r, twice the shadows'
    # data: on a random 30 % request nearly every example read "unlearned", and the Original
    # itself passed (U-LiRA 0.562 against a floor of 0.539). Each shadow pair is now the target
    # in turn, drawn as the Gaussians' shadows are.
    gate = load_experiment("privacy_gate")
    real = gate._methods
    monkeypatch.setattr(gate, "_methods", lambda args, arch, val: (
        {**real(args, arch, val)[0], "identity": lambda p, sp, s: p}, None))
    argv = ["--dataset", "digits", "--arch", "gpt_mlp", "--epochs", "15", "--batch-size", "64",
            "--lr", "0.01", "--seeds", "1", "--shadows", "8", "--gradtau-epochs", "1",
            "--forget-fraction", "0.3", "--quiet", "--out", str(tmp_path / "g")]
    assert gate.main(argv) == 1
    res = json.loads((tmp_path / "g" / "gate.json").read_text())
    assert res["verdicts"]["identity"]["passed"] is False
    assert res["verdicts"]["identity"]["gap_ulira_acc"] > 0.1
    assert abs(res["per_seed"]["retrain"][0]["ulira_acc"] - 0.5) < 0.05     # the floor


def test_a_hypernetwork_of_another_dataset_is_refused(digits_splits, monkeypatch, tmp_path):
    """The shipped network (gpt_mlp on MNIST-5k, split seed 0) given to a gate on another 28×28
    dataset: only the architecture was compared, and the gate ran to a verdict on data the
    network never saw. hyperforget_eval's --hypernet / --dihyfo1 the same."""
    from hyperforget_jax import models
    from hyperforget_jax.errors import DataError

    gate = load_experiment("privacy_gate")
    args = gate.parse_args(["--dataset", "mnist", "--arch", "gpt_mlp", "--hypernet",
                            "pretrained", "--forget-class", "3", "--quiet"])
    arch = models.make_architecture("gpt_mlp", (28, 28, 1))
    with pytest.raises(DataError, match="trained with --dataset mnist5k, this command uses "
                                        "mnist"):
        gate._methods(args, arch, digits_splits)
    args.dataset = "mnist5k"                       # its own data: accepted
    assert gate._methods(args, arch, digits_splits)[1] is not None

    ev = load_experiment("hyperforget_eval")
    from hyperforget_jax.hyperforget import dihyfo as H
    real = H.load_hypernet
    monkeypatch.setattr(H, "load_hypernet",
                        lambda p: (lambda n, m: (n, {**m, "dataset": "fashion_mnist"}))(*real(p)))
    with pytest.raises(DataError, match="--dataset fashion_mnist, this command uses mnist5k"):
        ev.main(["--out", str(tmp_path / "hf_eval"), "--quick"])
