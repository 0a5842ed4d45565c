"""The CLI end to end, in-process (``cli.main``) on the tiny sklearn digits set."""

import json
import os

import numpy as np
import pytest

from hyperforget_jax import cli

FAST = ["--dataset", "digits", "--arch", "gpt_mlp", "--epochs", "10", "--batch-size", "64", "--lr", "0.01",
        "--quiet"]


def run(argv, capsys):
    """Runs the CLI; argparse's SystemExit is folded into the return code."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert cli.main(["train", "--run-dir", str(root / "orig")] + FAST) == 0
    assert cli.main(["retrain", "--forget-class", "2", "--run-dir", str(root / "re")] + FAST) == 0
    return root


def test_train_retrain_evaluate_roundtrip(trained, capsys):
    res = json.loads((trained / "orig" / "results.json").read_text())
    assert res["eval"]["test"]["accuracy"] > 0.5
    assert res["meta"]["architecture"]["param_count"] == 64 * 10 + 10 + 110
    re = json.loads((trained / "re" / "results.json").read_text())
    assert re["eval"]["forget_acc"] == 0.0  # Retrain never saw class 2
    code, out, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--forget-class", "2",
                          "--retrain-dir", str(trained / "re"), "--dataset", "digits",
                          "--quiet"], capsys)
    assert code == 0, err
    ev = json.loads((trained / "orig" / "evaluate" / "class-2" / "evaluation.json").read_text())
    assert ev["eval"]["orig"]["forget_acc"] > 0.5 and ev["avg_gap"] > 10
    assert ev["run"] == ev["eval"]["orig"] and ev["retrain"] == ev["eval"]["retrain"]
    assert "retrain_recipe_differs" not in ev and "warning" not in err   # the same recipe
    assert (ev["dataset"], ev["split_seed"]) == ("digits", 0)       # not in run.json alone
    assert "mia_loss_lr" in out and "Avg. Gap" in out
    assert "Avg. Gap to Retrain (FA, RA, TA, mia_loss_lr; points)" in out   # names the metrics


def test_evaluate_names_the_gap_keys_when_an_attack_is_not_applicable(trained, capsys):
    # One forget sample: the loss/entropy attacks are None, so Avg. Gap averages FA, RA, TA only;
    # the report said "Avg. Gap to Retrain: X points" as if it were the four-metric gap.
    assert cli.main(["retrain", "--forget-indices", "5", "--run-dir", str(trained / "re1")]
                    + FAST) == 0
    code, out, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--forget-indices",
                          "5", "--retrain-dir", str(trained / "re1"), "--dataset", "digits",
                          "--out", str(trained / "ev1"), "--quiet"], capsys)
    assert code == 0, err
    ev = json.loads((trained / "ev1" / "evaluation.json").read_text())
    assert ev["avg_gap_keys"] == ["forget_acc", "retain_acc", "test_acc"]
    md = (trained / "ev1" / "evaluation.md").read_text()
    assert "Avg. Gap to Retrain (FA, RA, TA; points)" in md and "Not applicable: mia_loss_lr" in md


def test_evaluate_says_when_the_retrain_ran_another_recipe(trained, capsys):
    # A 2-epoch Retrain of a 10-epoch original was taken without a word, its gap reported as
    # the gap to Retrain. The run works (a user may mean it), and says so on stderr (one
    # line, with the Retrain that repeats the recipe), in evaluation.json and the report.
    short = [a if a != "10" else "2" for a in FAST]
    assert cli.main(["retrain", "--forget-class", "2", "--run-dir", str(trained / "re2")]
                    + short) == 0
    capsys.readouterr()
    code, _, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--forget-class", "2",
                        "--retrain-dir", str(trained / "re2"), "--dataset", "digits",
                        "--out", str(trained / "ev2"), "--quiet"], capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "epochs 2 (this run's recipe: 10)" in warning[0]
    assert "hyperforget retrain --dataset digits --arch gpt_mlp --epochs 10" in warning[0]
    ev = json.loads((trained / "ev2" / "evaluation.json").read_text())
    assert ev["retrain_recipe_differs"] == {"epochs": {"run": 10, "retrain": 2}}
    assert "recipe differs from this run's: epochs 2" in (trained / "ev2" /
                                                          "evaluation.md").read_text()
    # A refusal after the comparison (a bad --out) is one line on stderr: the warning came first.
    (trained / "a-file").write_text("")
    code, _, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--forget-class", "2",
                        "--retrain-dir", str(trained / "re2"), "--dataset", "digits",
                        "--out", str(trained / "a-file" / "ev"), "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err, err


def test_a_recipe_recorded_from_float32_is_the_same_recipe():
    # A run trained from Python with lr=np.float32(0.01) records 0.009999999776482582; a CLI
    # Retrain at --lr 0.01 records 0.01: evaluate warned of another recipe. Real differences
    # (one digit of the learning rate, another architecture) still count.
    from hyperforget_jax.commands.core import _recipe_difference

    run_recipe = {"arch": "mlp", "epochs": 10, "lr": float(np.float32(0.01)),
                  "weight_decay": float(np.float32(1e-4)), "seed": 0}
    retrain = {"identity": {"train_config": {"arch": "mlp", "epochs": 10.0, "lr": 0.01,
                                             "weight_decay": 1e-4, "seed": 3}}}
    assert _recipe_difference(run_recipe, retrain) == {}
    retrain["identity"]["train_config"].update(lr=0.011, arch="cnn")
    assert _recipe_difference(run_recipe, retrain) == {
        "arch": {"run": "mlp", "retrain": "cnn"},
        "lr": {"run": float(np.float32(0.01)), "retrain": 0.011}}


def test_a_retrain_dir_stopped_before_its_first_checkpoint_is_named_as_such(trained, capsys):
    # A `retrain` killed before its first save leaves an empty checkpoints/: evaluate said "no
    # checkpoint in .../checkpoints; train first, or pass ... --run-dir" for a --retrain-dir.
    (trained / "re-killed" / "checkpoints").mkdir(parents=True)
    code, _, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--forget-class", "2",
                        "--retrain-dir", str(trained / "re-killed"), "--dataset", "digits",
                        "--out", str(trained / "ev-killed"), "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"--retrain-dir {trained / 're-killed'} holds no saved model yet" in err
            and "`hyperforget retrain --run-dir" in err and "--forget-class 2" in err), err
    assert not (trained / "ev-killed").exists()


def test_reading_a_run_does_not_initialise_the_model(trained, capsys, monkeypatch):
    """`evaluate` (and every command that reads a run) restores into a template of shapes and
    dtypes: it used to initialise the model for real (compiling its init and the optimizer's
    zeros) only to overwrite the arrays, a third of `hyperforget evaluate`'s time."""
    import jax

    from hyperforget_jax.commands import common
    from hyperforget_jax.models import Architecture

    concrete, init = [], Architecture.init

    def spy(self, key):
        if not isinstance(key, jax.core.Tracer):
            concrete.append(self.name)
        return init(self, key)

    monkeypatch.setattr(Architecture, "init", spy)
    arch, params, _ = common.load_run(trained / "orig")
    arch.check_params(params)
    code, _, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--forget-class", "2",
                        "--dataset", "digits", "--out", str(trained / "ev-noinit"), "--quiet"],
                       capsys)
    assert code == 0, err
    assert concrete == []


def test_train_resumes_from_checkpoint(trained, capsys):
    # The run already has 10 epochs; asking for 10 again does no work and gives the same result.
    before = json.loads((trained / "orig" / "results.json").read_text())["eval"]
    assert cli.main(["train", "--run-dir", str(trained / "orig")] + FAST) == 0
    after = json.loads((trained / "orig" / "results.json").read_text())
    assert after["eval"] == before
    # Its time is the reload's, and the record and report say so (not "training time").
    assert after["resumed_from_epoch"] == 10
    assert "resumed at epoch 10 of 10 (already trained" in (trained / "orig" / "report.md"
                                                            ).read_text()


def test_progress_bars_only_on_a_terminal(trained, capsys, monkeypatch):
    """A batch job's stderr is a file: there tqdm's carriage-return frames (about ten a second
    of `hypertrain`) would pile up in the log, so without ``--quiet`` the bars are still off;
    on a terminal they show."""
    import sys

    argv = ["train", "--run-dir", str(trained / "orig"), *(a for a in FAST if a != "--quiet")]
    code, out, err = run(argv, capsys)                  # capsys's stderr is not a terminal
    assert code == 0 and err == "" and "# Train" in out, err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, out, err = run(argv, capsys)
    assert code == 0 and "\r" in err and "train gpt_mlp" in err, err


def test_demo_progress_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """``demo`` decides its bars as every command does: it showed them whenever ``--quiet``
    was not given, so a batch job's log filled with its trainings' tqdm frames. Its first
    training is stopped (KeyboardInterrupt) once its ``progress`` is seen."""
    import sys

    from hyperforget_jax import demo

    seen = []

    def fit(*args, progress, **kw):
        seen.append(progress)
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "fit", fit)
    argv = ["demo", "--run-dir", str(tmp_path / "d"), "--seeds", "1", "--sections", "none"]
    run(argv, capsys)                                   # capsys's stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    run([*argv[:2], str(tmp_path / "e"), *argv[3:]], capsys)
    assert seen == [False, True]



@pytest.mark.parametrize("sections, words", [
    ("gradtau,gradtau", "demo section 'gradtau' is given twice in --sections; list each once"),
    ("gradtau,nope", "unknown demo section 'nope'")])
def test_demo_refuses_a_section_named_twice_or_unknown(tmp_path, capsys, sections, words):
    # A section named twice ran twice: two of its report sections, results.json the second.
    out = tmp_path / "d"
    assert cli.main(["demo", "--run-dir", str(out), "--sections", sections, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


def test_demo_retrains_on_the_retain_set_and_evaluates_each_seed_with_its_own(tmp_path, capsys,
                                                                             monkeypatch):
    """The demo's Retrain row is models trained on D_r (the train set without the forgotten
    class), one per seed, and every model is evaluated with its seed (``DemoContext``: index i
    ↔ seeds[i]). Nothing checked it: a Retrain on the whole train set (the Original again) or
    every evaluation at seed 0 passed the suite. Training and evaluation are stubbed: the
    fourth evaluation stops the demo. Before the first timed Retrain, one untimed epoch on
    D_r compiles its program (the first Retrain was timed cold against warm ∇τ runs)."""
    from types import SimpleNamespace

    from hyperforget_jax import data, demo

    fits, evals = [], []

    def fit(arch, ds, cfg, progress):
        fits.append((len(ds), cfg.seed, cfg.epochs))
        return SimpleNamespace(params=len(fits)), []

    def evaluate(arch, params, splits, fsplit, request, seed):
        evals.append((params, seed))
        if len(evals) == 4:
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(demo, "fit", fit)
    monkeypatch.setattr(demo, "jax_block", lambda tree: tree)
    monkeypatch.setattr(demo, "evaluate_unlearning", evaluate)
    run(["demo", "--run-dir", str(tmp_path / "d"), "--seeds", "2", "--sections", "none",
         "--forget-class", "3"], capsys)
    train = data.make_splits(data.load_mnist5k()).train
    n_retain = len(data.resolve_forget(train, data.ForgetRequest(classes=(3,))).retain)
    assert n_retain < len(train)
    E = demo.TrainConfig().epochs
    assert fits == [(len(train), 0, E), (n_retain, 0, 1), (n_retain, 0, E), (len(train), 1, E),
                    (n_retain, 1, E)]
    # originals (fits 1 and 4) then retrains (3 and 5), each with its seed
    assert evals == [(1, 0), (4, 1), (3, 0), (5, 1)]

def test_train_seconds_cover_the_whole_run_over_resumes(tmp_path):
    """``train_seconds`` is the whole run's training time (as ``gan train``'s): a reload of a
    finished run kept only the reload's fraction of a second, a resumed run only its last
    part."""
    import shutil

    from hyperforget_jax.checkpoint import Checkpointer

    run = tmp_path / "orig"
    argv = ["train", "--dataset", "digits", "--epochs", "2", "--quiet", "--run-dir", str(run)]
    assert cli.main(argv) == 0
    with Checkpointer(run / "checkpoints") as ckpt:
        stored, epoch1 = ckpt.restore_meta()["train_seconds"], ckpt.restore_meta(1)
    first = json.loads((run / "results.json").read_text())
    assert 0 < stored == first["train_seconds"] <= first["this_call_seconds"]
    # The report's "training time" is that same figure (it printed this call's, 3.4 s for
    # 1.7 s of training, and the reload then said 1.7 s).
    assert (f"training time {first['train_seconds']:.1f} s ({first['this_call_seconds']:.1f} s "
            "for this call") in (run / "report.md").read_text()
    assert cli.main(argv) == 0                                  # finished: reloaded
    again = json.loads((run / "results.json").read_text())
    assert again["train_seconds"] == stored and again["resumed_from_epoch"] == 2
    shutil.rmtree(run / "checkpoints" / "2")                    # killed after epoch 1 of 2
    assert cli.main(argv) == 0
    resumed = json.loads((run / "results.json").read_text())
    assert resumed["train_seconds"] > epoch1["train_seconds"] > 0
    # the resumed part, added to epoch 1's time, was measured within this call
    assert 0 < resumed["train_seconds"] - epoch1["train_seconds"] <= resumed["this_call_seconds"]


def test_every_results_file_records_versions_and_devices(trained):
    """README: the CLI's results record what ran (devices); ``train`` recorded no device, no
    library or JAX version."""
    import jax

    import hyperforget_jax

    for path in (trained / "orig" / "results.json", trained / "re" / "results.json"):
        env = json.loads(path.read_text())["environment"]
        assert env["jax"] == jax.__version__ and env["devices"] == 1
        assert env["hyperforget_jax"] == hyperforget_jax.__version__
        assert env["device_kind"] == jax.devices()[0].device_kind


def test_evaluate_defaults_to_the_seed_the_run_was_evaluated_with(trained, tmp_path, capsys):
    """``evaluate`` of an ``unlearn --seed 1`` output gives the numbers ``unlearn`` reported
    (its attacks' CV splits were seeded 1; a default of 0 gave other MIA numbers)."""
    out = tmp_path / "ng"
    assert cli.main(["unlearn", "--method", "neggrad", "--forget-class", "2", "--dataset",
                     "digits", "--run-dir", str(trained / "orig"), "--out", str(out),
                     "--seed", "1", "--no-retrain", "--config.epochs=1", "--quiet"]) == 0
    own = json.loads((out / "results.json").read_text())["eval"]["neggrad"]
    code, _, err = run(["evaluate", "--run-dir", str(out), "--dataset", "digits",
                        "--out", str(tmp_path / "ev"), "--quiet"], capsys)
    assert code == 0, err
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["run"] == own and ev["seed"] == 1 and ev["environment"]["devices"] == 1


def test_evaluate_of_another_seed_keeps_its_own_default_directory(trained, capsys):
    """An array job over ``evaluate --seed`` on one run: each evaluation replaced the last one
    in ``<run-dir>/evaluate/<request>`` (every job exiting 0), so one seed's file was left.
    A seed other than the run's own is part of the default name, as ``unlearn``'s is."""
    code, _, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--dataset", "digits",
                        "--forget-class", "2", "--seed", "1", "--quiet"], capsys)
    assert code == 0, err
    ev = trained / "orig" / "evaluate" / "class-2-seed-1" / "evaluation.json"
    assert json.loads(ev.read_text())["seed"] == 1


def test_orbax_tracebacks_of_a_failed_write_stay_off_stderr():
    """A full disk: besides its one line, `train` printed the tracebacks Orbax's threads log
    for the failed background write (≈ 300 lines); that line names the same error."""
    import logging
    import sys

    try:
        raise ValueError("OUT_OF_RANGE: Failed to write: File too large")
    except ValueError:
        exc = sys.exc_info()
    orbax = os.path.join(os.sep, "venv", "orbax", "checkpoint", "future.py")
    traceback = logging.LogRecord("absl", logging.ERROR, orbax, 1, "run() raised", None, exc)
    plain = logging.LogRecord("absl", logging.ERROR, orbax, 1, "an error", None, None)
    absl = logging.getLogger("absl")
    with cli._cli_output("train", program=False):
        assert not absl.filter(traceback) and absl.filter(plain)
        with cli._cli_output("evaluate", program=False):     # a main() inside another
            pass
        assert not absl.filter(traceback)           # the outer one's filter stays
    assert absl.filter(traceback)                   # restored: the Python API's callers see it


def test_a_read_only_run_is_evaluated_into_another_out(trained, tmp_path, capsys, monkeypatch):
    """An archived run (read-only mount, ``chmod -w``, another user's) was refused by every
    reader, even with ``--out`` elsewhere: "checkpoint directory ... is not writable"."""
    import hyperforget_jax.checkpoint as ck

    run_dir, access = trained / "orig", os.access
    monkeypatch.setattr(ck.os, "access", lambda p, mode, **k: (   # root ignores chmod
        not (mode & os.W_OK and str(p).startswith(str(run_dir))) and access(p, mode, **k)))
    code, _, err = run(["evaluate", "--run-dir", str(run_dir), "--dataset", "digits",
                        "--forget-class", "2", "--out", str(tmp_path / "ev"), "--quiet"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["seed"] == 0


@pytest.mark.parametrize("argv, needle", [
    (["retrain", "--forget-class", "12"], "class 12 does not exist"),
    (["retrain", "--forget-fraction", "1.5"], "between 0 and 1"),
    (["retrain", "--forget-indices", "1,1"], "duplicated"),
    (["retrain", "--forget-indices", "a,b"], "comma-separated integers"),
    (["retrain", "--forget-indices", "0,99999"], "out of range"),
    (["train", "--epochs", "-2"], "epochs must be >= 0"),
    (["train", "--lr", "0"], "learning rate"),
    (["train", "--arch", "vgg"], "unknown architecture"),
    (["train", "--dataset", "cifar10", "--data-dir", "/nonexistent/tfds"], "/nonexistent/tfds"),
    (["retrain"], "one of the arguments"),
    (["train", "--epochs", "x"], "expected an integer"),
    # argparse kept the last list alone: class 4 was forgotten, class 3 kept, exit code 0
    (["retrain", "--forget-class", "3", "--forget-class", "4"], "every item: --forget-class 3 4"),
    (["retrain", "--forget-indices", "1,2", "--forget-indices", "5"],
     "given twice (1,2, then 5)"),
    (["retrain", "--forget-class", "-1", "3"], "forget class -1 does not exist"),  # not "… 3"
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, needle):
    run_dir = tmp_path / "out"
    argv = argv + ["--run-dir", str(run_dir)]
    if "--dataset" not in argv:
        argv += ["--dataset", "digits"]
    code, _, err = run(argv + ["--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not run_dir.exists()  # nothing half-written


def test_a_retrain_of_another_request_is_named_so_the_difference_shows():
    """Two random subsets of one size both read "random 10%", so the refusal said "a Retrain
    for random 10%, not for random 10%"; and "a 'original' run"."""
    from hyperforget_jax.commands.core import _check_retrain
    from hyperforget_jax.data import ForgetRequest
    from hyperforget_jax.errors import ForgetRequestError, RunDirError

    meta = {"identity": {"role": "retrain",
                         "request": ForgetRequest(fraction=0.1, seed=0).to_json()}}
    with pytest.raises(ForgetRequestError, match=r'Retrain for \{"fraction": 0.1, "seed": 0\}, '
                                                 r'not for \{"fraction": 0.1, "seed": 1\}'):
        _check_retrain(meta, ForgetRequest(fraction=0.1, seed=1), "R")
    with pytest.raises(RunDirError, match="holds an 'original' run, not a Retrain"):
        _check_retrain({"identity": {"role": "original"}}, ForgetRequest(classes=(3,)), "R")


def test_a_retrain_of_the_same_classes_in_another_order_is_accepted():
    """Classes 5 3 and 3 5 are one forget set: --run-dir's own request (_check_own_request)
    and `gan evaluate --compare` took them as one, --retrain-dir refused "a Retrain for
    classes 5, 3, not for classes 3, 5"."""
    from hyperforget_jax.commands.core import _check_retrain
    from hyperforget_jax.data import ForgetRequest
    from hyperforget_jax.errors import ForgetRequestError

    meta = {"identity": {"role": "retrain", "request": ForgetRequest(classes=(5, 3)).to_json()}}
    _check_retrain(meta, ForgetRequest(classes=(3, 5)), "R")
    with pytest.raises(ForgetRequestError, match="not for"):
        _check_retrain(meta, ForgetRequest(classes=(3, 4)), "R")


def test_a_list_flag_given_twice_empty_first_suggests_a_form_that_parses(capsys):
    """``--compare --compare c``: the refusal says the first list had no items and suggests
    ``--compare c``, not ``--compare  c`` after an empty "given twice (, then c)"."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["gan", "evaluate", "--run-dir", "r", "--compare",
                                       "--compare", "c"])
    err = capsys.readouterr().err
    assert "given twice (no items, then c)" in err and err.endswith("item: --compare c "
                                                                     "(see --help)\n")


def test_unwritable_run_dir(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
        ro_target = "/proc/hyperforget-run"
    else:
        ro_target = str(ro / "run")
    code, _, err = run(["train", "--run-dir", ro_target] + FAST, capsys)
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


def test_evaluate_missing_run_is_clear(tmp_path, capsys):
    code, _, err = run(["evaluate", "--run-dir", str(tmp_path / "nope"), "--forget-class", "1",
                        "--dataset", "digits"], capsys)
    assert code == 2 and "no trained model" in err
    # the command it suggests pastes back into a shell as the same directory, on the same data
    code, _, err = run(["evaluate", "--run-dir", str(tmp_path / "my runs" / "a"),
                        "--forget-class", "1", "--dataset", "digits"], capsys)
    assert code == 2 and f"--run-dir '{tmp_path / 'my runs' / 'a'}' --dataset digits`" in err


def test_evaluate_with_params_of_another_architecture(trained, tmp_path, capsys):
    other = tmp_path / "mlp"
    assert cli.main(["train", "--run-dir", str(other), "--dataset", "digits", "--arch", "mlp",
                     "--epochs", "1", "--quiet"]) == 0
    code, _, err = run(["evaluate", "--run-dir", str(trained / "orig"), "--retrain-dir",
                        str(other), "--forget-class", "2", "--dataset", "digits"], capsys)
    assert code == 2 and "do not fit gpt_mlp" in err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("train", "retrain", "evaluate", "demo"):
        assert name in out


def test_help_and_reports_print_under_an_ascii_locale(monkeypatch):
    # Under LC_ALL=C with PYTHONUTF8=0 (or PYTHONIOENCODING=ascii / latin-1) stdout is strict
    # ASCII: `train --help` (≈) and the report a finished `unlearn` prints (×, ∇τ) raised
    # UnicodeEncodeError, exit code 1 with a traceback after the run's files were written.
    import io
    import sys

    from hyperforget_jax.commands import common
    from hyperforget_jax.report import encodable_output

    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    with encodable_output():                  # what main() wraps a command's run in
        common.emit(object(), {}, "speed-up 2.0× for ∇τ, wrote /r\udcfc")  # argv's byte 0xfc
    assert out.errors == "strict"             # restored: a caller's stream is its own
    out.flush()
    text = out.buffer.getvalue()
    assert b"20 reaches \\u2248100%" in text
    assert b"2.0\\xd7 for \\u2207\\u03c4, wrote /r\xfc" in text


def test_every_command_takes_quiet_and_json():
    """A script can pass ``--quiet`` and ``--json`` to any command, with or without progress
    output."""
    import argparse

    def leaves(p, path=()):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, p
        for a in subs:
            for name, sp in a.choices.items():
                yield from leaves(sp, path + (name,))

    commands = dict(leaves(cli.build_parser()))
    assert {("evaluate",), ("sample",), ("gan", "evaluate"), ("unlearn",)} <= set(commands)
    for path, p in commands.items():
        flags = {o for a in p._actions for o in a.option_strings}
        assert {"--quiet", "--json"} <= flags, path
    # ... and every flag of every command says in --help what it does.
    bare = [(path, a.option_strings[0]) for path, p in commands.items() for a in p._actions
            if a.option_strings and not a.help]
    assert not bare, bare


def test_load_model_names_the_flag_that_takes_an_import_path():
    """``load_model``'s docstring named "the CLI's ``--model``", a flag no command has (the
    import path goes to ``--arch``): each flag it names is one of ``hyperforget train``'s."""
    import argparse
    import re

    from hyperforget_jax.models import load_model

    sub = next(a for a in cli.build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    train_flags = {o for a in sub.choices["train"]._actions for o in a.option_strings}
    named = re.findall(r"``(--[a-z-]+)", load_model.__doc__)
    assert named and set(named) <= train_flags, named


def test_demo_plot_leaves_the_matplotlib_backend_alone(tmp_path):
    """The demo's per-class plot called matplotlib.use("Agg"): ``cli.main(["demo"])`` in a
    notebook turned every later inline plot off (as save_grid did, stop 45)."""
    import types

    import matplotlib

    from hyperforget_jax import demo
    from hyperforget_jax.data import ForgetRequest

    evals = [{"per_class_test_acc": np.linspace(0.5, 1.0, 4)}] * 2
    ctx = types.SimpleNamespace(evals_original=evals, evals_retrain=evals, seeds=[0, 1],
                                splits=types.SimpleNamespace(test=types.SimpleNamespace(
                                    num_classes=4)), request=ForgetRequest(classes=(3,)))
    before = matplotlib.get_backend()
    matplotlib.use("svg")            # stands for a user's backend (inline, Qt, ...)
    try:
        demo._plot(ctx, tmp_path / "p.png", {"∇τ": evals})
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_damaged_step_metadata_file_is_one_warning_line(trained, tmp_path):
    """A truncated checkpoints/<step>/_CHECKPOINT_METADATA (Orbax's step record; the parameters
    load without it) printed "ERROR:absl:Failed to json parse Metadata file" at each of Orbax's
    reads: 7 lines on a `train` rerun, exit 0."""
    import shutil

    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # Truncated (JSON that does not parse), or bytes that are not UTF-8 (Orbax's "Failed to
    # read Metadata file", a second message).
    for name, damage in (("cut", lambda b: b[:3]), ("bytes", lambda b: b"\xff\xfe" + b)):
        run = tmp_path / name
        shutil.copytree(trained / "orig", run)
        meta = next(run.glob("checkpoints/*/_CHECKPOINT_METADATA"))
        meta.write_bytes(damage(meta.read_bytes()))
        p = subprocess.run([sys.executable, "-m", "hyperforget_jax.cli", "train", "--run-dir",
                            str(run), *FAST], cwd=root, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
        err = p.stderr.strip().splitlines()
        assert p.returncode == 0 and len(err) == 1 and err[0].startswith(
            "hyperforget train: warning: a checkpoint's step metadata does not parse"), err
    # An empty step directory: Orbax's "Metadata file does not exist" came 4-5 times before
    # the command's one error line.
    run = tmp_path / "empty-step"
    shutil.copytree(trained / "orig", run)
    (run / "checkpoints" / "99").mkdir()
    p = subprocess.run([sys.executable, "-m", "hyperforget_jax.cli", "train", "--run-dir",
                        str(run), *FAST], cwd=root, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(root)})
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "checkpoints/99 is corrupt" in err[0], err


def test_a_table_cell_holding_a_pipe_keeps_its_columns():
    """A run directory named ``orig|lr=0.01`` as an `evaluate` / `gan evaluate` row label gave
    its row 8 cells under a 7-cell header: every value read one column to the right."""
    import re

    from hyperforget_jax import report

    table = report.markdown_table(["model", "RA %", "FA %"],
                                  [["orig|lr=0.01", "77.88", "89.06"], ["two\nlines", 1, 2]])
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in table.splitlines()]
    assert len(set(cells)) == 1, table
    assert "| orig\\|lr=0.01 | 77.88 | 89.06 |" in table and "| two lines | 1 | 2 |" in table
