"""No silent wrong results, nothing destroyed (issue 16): resume checks, run-dir safety, the
lock, and the bad inputs a new user found, through the CLI (in-process, stderr checked at the
file descriptor) and the API.

Every refusal must exit 2 with exactly one line on stderr naming the problem and the fix, and
leave every directory exactly as it was (same files, same bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from hyperforget_jax import _sigint, cli, data, report, rundir
from hyperforget_jax.commands import common
from hyperforget_jax.errors import CheckpointError, RunDirError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["--dataset", "digits"]
BASE = [*DIGITS, "--arch", "gpt_mlp", "--batch-size", "64", "--lr", "0.01", "--quiet"]
TINY = [*BASE, "--epochs", "2"]


def _run(argv) -> int:
    try:
        return cli.main([str(a) for a in argv])
    except SystemExit as e:
        return int(e.code)


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` with a hash of its bytes (hidden files included)."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def refused(capfd, argv, *words, untouched=()):
    """Runs ``argv``; asserts exit 2, one stderr line holding ``words``, dirs untouched."""
    before = {p: snapshot(p) for p in untouched}
    capfd.readouterr()
    rc = _run(argv)
    err = capfd.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    for p in untouched:
        assert snapshot(p) == before[p], f"{p} was modified"
    return err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    assert _run(["train", "--run-dir", root / "orig", *TINY]) == 0
    assert _run(["retrain", "--run-dir", root / "re", "--forget-class", "3", *TINY]) == 0
    return root


# --------------------------------------------------------------------------- resume checks


@pytest.mark.parametrize("extra, field", [
    (["--seed", "1"], "train_config.seed is 0, this command's is 1"),
    (["--epochs", "1"], "train_config.epochs is 2, this command's is 1"),
    (["--lr", "0.05", "--epochs", "5"], "train_config.epochs"),
    (["--split-seed", "1"], "split_seed is 0, this command's is 1"),
    (["--forget-class", "3"], "request"),
])
def test_resume_refuses_another_recipe(runs, tmp_path, capfd, extra, field):
    copy = tmp_path / "copy"
    shutil.copytree(runs / "orig", copy)
    argv = ["train", "--run-dir", copy, *BASE,
            *(extra if "--epochs" in extra else ["--epochs", "2", *extra])]
    refused(capfd, argv, field, "--run-dir", "resume", untouched=[copy])


def test_retrain_into_an_original_is_refused(runs, tmp_path, capfd):
    copy = tmp_path / "copy"
    shutil.copytree(runs / "orig", copy)
    # Another command's run: neither "delete that directory" (a model the user still needs)
    # nor "rerun with its settings to resume" (this command cannot).
    err = refused(capfd, ["retrain", "--forget-class", "3", "--run-dir", copy, *TINY],
                  "holds an 'original' run, not a 'retrain' one; pass a new --run-dir to start "
                  "this run", untouched=[copy])
    assert "delete" not in err and "resume" not in err, err
    refused(capfd, ["gan", "train", "--run-dir", copy, *DIGITS, "--epochs", "1", "--quiet"],
            "holds an 'original' run, not a 'gan-original' one", untouched=[copy])


def test_same_recipe_resumes_and_legacy_runs_are_adopted(runs, tmp_path, capfd):
    copy = tmp_path / "copy"
    shutil.copytree(runs / "orig", copy)
    before = json.loads((copy / "results.json").read_text())["eval"]
    assert _run(["train", "--run-dir", copy, *TINY]) == 0
    assert json.loads((copy / "results.json").read_text())["eval"] == before
    # A run written before run.json existed: its checkpoint metadata is compared instead.
    (copy / "run.json").unlink()
    refused(capfd, ["train", "--run-dir", copy, *TINY, "--seed", "3"], "train_config.seed")
    assert _run(["train", "--run-dir", copy, *TINY]) == 0
    assert rundir.read_identity(copy)["role"] == "original"


def test_non_run_directory_is_refused(tmp_path, capfd):
    (tmp_path / "notes.txt").write_text("mine\n")
    refused(capfd, ["train", "--run-dir", tmp_path, *TINY], "not empty", "notes.txt",
            untouched=[tmp_path])


def test_a_gan_run_given_to_a_classifier_command_is_named(tmp_path, capfd):
    # Its checkpoint was refused as having "no hyperforget run metadata; was it written by
    # `hyperforget train`?" (it was: by `hyperforget gan train`).
    gan = tmp_path / "gan"
    (gan / "checkpoints").mkdir(parents=True)
    (gan / "run.json").write_text('{"identity": {"role": "gan-original"}}')
    refused(capfd, ["evaluate", "--run-dir", gan, "--forget-class", "3"],
            "holds a 'gan-original' run, not a classifier", "`hyperforget gan evaluate`",
            untouched=[gan])


def test_failed_command_leaves_nothing(tmp_path, capfd):
    out = tmp_path / "new"
    refused(capfd, ["train", "--run-dir", out, *TINY, "--lr", "0"], "learning rate")
    assert not out.exists()


# --------------------------------------------------------------------------- run-dir safety


def test_unlearn_never_writes_into_what_it_reads(runs, capfd):
    orig = runs / "orig"
    base = ["unlearn", "--method", "gradtau", "--run-dir", orig, "--forget-class", "3",
            *DIGITS, "--no-retrain", "--quiet"]
    refused(capfd, [*base, "--out", orig], "is the run this command reads from",
            untouched=[orig])
    refused(capfd, [*base, "--out", orig / "checkpoints" / "x"], "lies inside",
            untouched=[orig])
    refused(capfd, [*base, "--out", runs / "re"], "holds a 'retrain' run",
            untouched=[orig, runs / "re"])


def test_unlearn_refuses_a_start_model_that_is_not_the_original(runs, capfd):
    argv = ["unlearn", "--method", "gradtau", "--forget-class", "3", *DIGITS, "--no-retrain",
            "--quiet"]
    refused(capfd, [*argv, "--run-dir", runs / "re"], "holds a 'retrain' run, not an original",
            untouched=[runs / "re"])
    # Recipe flags that contradict the loaded original would be silently ignored: refused.
    refused(capfd, [*argv, "--run-dir", runs / "orig", "--epochs", "7"],
            "--epochs 7 differs from the recipe", untouched=[runs / "orig"])
    # Another split would make the forget set other samples than the model was trained on.
    refused(capfd, [*argv, "--run-dir", runs / "orig", "--split-seed", "4"],
            "--split-seed", untouched=[runs / "orig"])


def test_evaluate_refuses_other_runs_and_wrong_retrains(runs, capfd):
    orig, re_ = runs / "orig", runs / "re"
    ev = ["evaluate", "--forget-class", "3", *DIGITS]
    refused(capfd, [*ev, "--run-dir", orig, "--out", re_], "--out", "holds a 'retrain' run",
            untouched=[orig, re_])
    refused(capfd, [*ev, "--run-dir", orig, "--out", orig], "reads from", untouched=[orig])
    refused(capfd, [*ev, "--run-dir", re_, "--retrain-dir", orig], "not a Retrain",
            untouched=[orig, re_])
    refused(capfd, ["evaluate", "--forget-class", "4", *DIGITS, "--run-dir", orig,
                    "--retrain-dir", re_], "is a Retrain for class 3, not for class 4",
            untouched=[orig, re_])
    refused(capfd, [*ev, "--run-dir", orig, "--split-seed", "2"], "--split-seed",
            untouched=[orig])


def test_unlearn_method_retrain_is_a_retrain_dir(runs, tmp_path, capfd):
    """``unlearn --method retrain`` writes the Retrain of its request: ``evaluate`` takes it as
    --retrain-dir (the same gap as with `hyperforget retrain`'s run), for that request only."""
    orig, u = runs / "orig", tmp_path / "u"
    assert _run(["unlearn", "--method", "retrain", "--forget-class", "3", "--run-dir", orig,
                 "--out", u, "--no-retrain", *DIGITS, "--quiet"]) == 0
    gaps = []
    for re_ in (u, runs / "re"):
        capfd.readouterr()
        assert _run(["evaluate", "--run-dir", orig, "--retrain-dir", re_, "--forget-class", "3",
                     "--out", tmp_path / "ev", *DIGITS, "--json"]) == 0
        gaps.append(json.loads(capfd.readouterr().out)["avg_gap"])
    assert gaps[0] == pytest.approx(gaps[1], abs=1e-3)
    refused(capfd, ["evaluate", "--forget-class", "4", *DIGITS, "--run-dir", orig,
                    "--retrain-dir", u], "is a Retrain for class 3, not for class 4")


def test_evaluate_refuses_another_request_than_the_runs_own(runs, tmp_path, capfd):
    """A Retrain (or unlearned) run is evaluated on its own request: another one (here a
    class it did see) would report forget-set numbers of samples it never forgot."""
    re_ = runs / "re"
    refused(capfd, ["evaluate", "--forget-class", "4", *DIGITS, "--run-dir", re_, "--out",
                    tmp_path / "ev"], "is a 'retrain' run for the request", untouched=[re_])
    assert not (tmp_path / "ev").exists()
    assert _run(["evaluate", "--run-dir", re_, "--out", tmp_path / "ev", *DIGITS,
                 "--quiet"]) == 0


def test_own_request_check_reads_class_order_as_one_request():
    """`--forget-class 4 3` and `3 4` forget one set, as do `--forget-indices 3,5,7` and
    `7,5,3` (refused as another request before); a sampled network has its request too."""
    from hyperforget_jax import data
    from hyperforget_jax.commands.common import refuse_other_request
    from hyperforget_jax.commands.core import _check_own_request
    from hyperforget_jax.errors import ForgetRequestError

    R = data.ForgetRequest
    for role in ("retrain", "unlearned", "hyperforget-sample"):
        for own, same, other in (((3, 4), (4, 3), (3,)), ((3, 5, 7), (7, 5, 3), (3, 5, 8))):
            kind = "classes" if len(own) == 2 else "indices"
            meta = {"identity": {"role": role, "request": R(**{kind: own}).to_json()}}
            _check_own_request(meta, R(**{kind: same}), "R")
            refuse_other_request(meta["identity"]["request"], R(**{kind: same}), "R", "")
            with pytest.raises(ForgetRequestError, match=f"is an? '{role}' run"):
                _check_own_request(meta, R(**{kind: other}), "R")


def test_evaluate_rows_never_collide(runs, tmp_path, capfd):
    """``evaluate --run-dir X/retrain --retrain-dir R``: both rows, a non-zero gap."""
    named = tmp_path / "x" / "retrain"
    shutil.copytree(runs / "orig", named)
    capfd.readouterr()
    assert _run(["evaluate", "--run-dir", named, "--retrain-dir", runs / "re", "--forget-class",
                 "3", *DIGITS, "--json"]) == 0
    res = json.loads(capfd.readouterr().out)
    assert set(res["eval"]) == {"x/retrain", "retrain"}
    assert res["retrain"]["forget_acc"] == 0.0 < res["run"]["forget_acc"]
    assert res["avg_gap"] > 1


def test_default_outputs_of_two_requests_never_share_a_directory(runs, tmp_path, capfd):
    """A sweep over forget seeds (or index sets of one size) with the default --out: each
    cell's evaluation is kept (was: `<run>/evaluate/random-10` for every seed, and `evaluate`
    replaced the previous seed's results with its own)."""
    from hyperforget_jax.commands.core import slug
    from hyperforget_jax.data import ForgetRequest as R

    assert slug(R(classes=(3,))) == "class-3" and slug(R(fraction=0.1)) == "random-10"
    names = {slug(r) for r in (R(fraction=0.1), R(fraction=0.1, seed=1), R(indices=(1, 2)),
                               R(indices=(1, 3)))}
    assert len(names) == 4 and slug(R(indices=(2, 1))) == slug(R(indices=(1, 2)))
    orig = tmp_path / "orig"
    shutil.copytree(runs / "orig", orig)
    for seed in (0, 1):
        assert _run(["evaluate", "--run-dir", orig, "--forget-fraction", "0.1", "--forget-seed",
                     seed, *DIGITS, "--quiet"]) == 0
    got = {json.loads((d / "evaluation.json").read_text())["request"]["seed"]
           for d in (orig / "evaluate").iterdir()}
    assert got == {0, 1}


# --------------------------------------------------------------------------- lock


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "force_host_platform_device_count" not in f)
    return env


def test_two_writers_one_is_refused_and_stale_locks_are_taken_over(tmp_path, capfd):
    """Two real processes train into one run dir: the second is refused (exit 2, one line
    naming the owner) while the first lives; the first finishes normally. A lock left by a
    dead process is taken over. Readers are refused while the writer runs."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "hyperforget_jax.cli", "train", "--run-dir", str(run),
            *BASE, "--epochs", "400"]
    first = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        t_end = time.monotonic() + 120
        while not (run / rundir.LOCK_NAME).exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < t_end
            time.sleep(0.01)
        second = subprocess.run(argv, cwd=ROOT, env=_env(), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"process {first.pid}" in lines[0], second.stderr
        assert "is being written by" in lines[0] and first.poll() is None
        # A reader (evaluate) is refused too: the model is unfinished.
        refused(capfd, ["evaluate", "--run-dir", run, "--forget-class", "1", *DIGITS],
                "is being written by process")
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 130 and len(err.strip().splitlines()) == 1, err
    assert not (run / rundir.LOCK_NAME).exists()
    # A stale lock (its owner died without releasing it): taken over.
    (run / rundir.LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "elsewhere"}))
    with rundir.open_run(run, rundir.read_identity(run)) as r:
        assert json.loads((run / rundir.LOCK_NAME).read_text())["pid"] == os.getpid()
        assert r.resumed
    assert not (run / rundir.LOCK_NAME).exists()


def test_lock_refuses_a_second_writer_in_process(tmp_path):
    ident = {"role": "x"}
    with rundir.open_run(tmp_path / "r", ident, command="first"):
        (tmp_path / "r" / "payload").write_text("1")
        with pytest.raises(RunDirError, match=r"is being written by process \d+ .*`first`"):
            with rundir.open_run(tmp_path / "r", ident):
                pass
        with pytest.raises(RunDirError, match="wait until it finishes"):
            rundir.check_readable(tmp_path / "r")


def test_a_lock_says_its_start_time_s_zone(tmp_path, monkeypatch):
    # "started 2026-12-06 13:40:00" was local time with no zone: read on another host of a
    # shared file system (another TZ), it was hours off.
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        with rundir.open_run(tmp_path / "r", {"role": "x"}, command="first"):
            started = json.loads((tmp_path / "r" / rundir.LOCK_NAME).read_text())["started"]
    finally:
        monkeypatch.undo()
        time.tzset()
    assert started.endswith(" -0500"), started


def test_a_planted_lock_link_is_refused_and_its_target_kept(tmp_path):
    """A ``.hyperforget.lock`` symbolic link in a run directory from elsewhere: taking the lock
    truncated and overwrote the file it pointed to (outside the run). Refused, target intact."""
    victim = tmp_path / "thesis.txt"
    victim.write_text("precious")
    run = tmp_path / "shared_run"
    with rundir.open_run(run, {"role": "x"}):
        pass
    (run / rundir.LOCK_NAME).symlink_to(victim)
    with pytest.raises(RunDirError, match="symbolic link or a special file"):
        with rundir.open_run(run, {"role": "x"}):
            pass
    assert victim.read_text() == "precious"
    assert (run / rundir.LOCK_NAME).is_symlink()


# --------------------------------------------------------------------------- identity API


def test_first_difference_names_the_path():
    a = {"role": "original", "train_config": {"lr": 0.1, "seed": 0}, "request": None}
    assert rundir.first_difference(a, a) is None
    b = {**a, "train_config": {"lr": 0.1, "seed": 1}}
    assert rundir.first_difference(a, b) == ("train_config.seed", 0, 1)
    assert rundir.first_difference({**a, "request": {"classes": [3]}}, a)[0] == "request"
    assert rundir.first_difference({"x": [1, 2]}, {"x": [1, 3]}) == ("x[1]", 2, 3)
    # A field only the stored run has (an optional one: gan unlearn's "judge", sample's
    # "best_of") is a difference too, not a match: the run is another one.
    assert rundir.first_difference({**a, "judge": {"epochs": 6}}, a) == ("judge", {"epochs": 6},
                                                                          None)


def test_open_run_identity_and_cleanup(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyError):
        with rundir.open_run(out, {"role": "a", "k": 1}):
            raise KeyError("boom")  # failed before writing anything: nothing left
    assert not out.exists()
    with rundir.open_run(out, {"role": "a", "k": 1}) as r:
        (r.path / "f").write_text("x")
        assert not r.resumed
    with rundir.open_run(out, {"role": "a", "k": 1}) as r:
        assert r.resumed
    with pytest.raises(RunDirError, match="its k is 1, this command's is 2"):
        with rundir.open_run(out, {"role": "a", "k": 2}):
            pass
    (out / "report.json").write_text("{}")      # the k = 1 report's result
    with rundir.open_run(out, {"role": "a", "k": 2}, replace_role=True,
                         outputs=("report.json",)) as r:
        assert not r.resumed  # one-shot reports of the same role are replaced, not resumed
        assert not (out / "report.json").exists()   # never left beside the new identity
    assert rundir.read_identity(out) == {"role": "a", "k": 2}
    with pytest.raises(RunDirError, match="reads from"):
        with rundir.open_run(out, {"role": "a", "k": 2}, reads=[out]):
            pass


def test_a_refused_adoption_of_an_older_run_leaves_it_as_it_was(tmp_path):
    """A directory of an older version's run (its files, no run.json) adopted by a command
    that then fails: the run.json written for it stayed, so a refused `corpus --unlearn-lr
    0.05` left 0.05 recorded over a corpus built with 0.01, and the right flags were then
    refused. Its own files stay; the caches it held before stay too."""
    old = tmp_path / "old"
    (old / "shard_00000").mkdir(parents=True)
    (old / "shard_00000" / "rows.npy").write_text("x")
    (old / "index.json").write_text('{"config": {"unlearn_lr": 0.01}}')
    adopt = lambda path: {"role": "corpus"}          # noqa: E731
    with pytest.raises(RunDirError, match="built with another config"):
        with rundir.open_run(old, {"role": "corpus", "unlearn_lr": 0.05}, legacy=adopt,
                             caches=("index.json",)):
            raise RunDirError("holds a corpus built with another config")
    assert sorted(p.name for p in old.iterdir()) == ["index.json", "shard_00000"]
    assert rundir.read_identity(old) is None
    with rundir.open_run(old, {"role": "corpus", "unlearn_lr": 0.01}, legacy=adopt,
                         caches=("index.json",)):
        pass
    assert rundir.read_identity(old) == {"role": "corpus", "unlearn_lr": 0.01}


def test_unfinished_run_is_not_loaded_as_a_model(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs / "orig", copy)
    shutil.rmtree(copy / "checkpoints" / "2")  # as if killed after epoch 1
    with pytest.raises(CheckpointError, match=r"unfinished original run \(epoch 1 of 2\)"
                       r".*`hyperforget train --run-dir"):
        common.load_run(copy)
    # An unfinished Retrain is finished by `retrain`: `train` on it refuses the role.
    shutil.copytree(runs / "re", tmp_path / "re")
    shutil.rmtree(tmp_path / "re" / "checkpoints" / "2")
    with pytest.raises(CheckpointError, match=r"unfinished retrain run \(epoch 1 of 2\)"
                       r".*`hyperforget retrain --run-dir"):
        common.load_run(tmp_path / "re")


# --------------------------------------------------------------------------- messages, --json


@pytest.mark.parametrize("argv, words", [
    (["train", "--seed", "-1"], "a seed must be an integer in [0, 2**32), got -1"),
    (["train", "--split-seed", "-1"], "--split-seed: a seed must be"),
    (["retrain", "--forget-fraction", "0.1", "--forget-seed", "-1"], "--forget-seed"),
    # It was dropped without a word for any request other than a fraction.
    (["retrain", "--forget-class", "3", "--forget-seed", "2"],
     "--forget-seed 2 would be ignored: it draws the random subset of --forget-fraction"),
    (["unlearn", "--method", "gradtau", "--forget-indices", "1,2", "--forget-seed", "0"],
     "--forget-seed 0 would be ignored"),
    (["evaluate", "--seed", "-1", "--run-dir", "x", "--forget-class", "1"], "--seed"),
    (["unlearn", "--method", "gradtau", "--seed", "-2", "--forget-class", "1"], "got -2"),
    (["retrain", "--forget-class", "3,3"], "space-separated, got '3,3': write "
                                           "--forget-class 3 3"),
    (["train", "--weight-decay", "nan"], "--weight-decay: expected a finite number, got 'nan'"),
    (["train", "--epochs", "2.5"], "--epochs: expected an integer, got '2.5'"),
    (["unlearn", "--method", "salun", "--forget-class", "1", "--config.lrr=0.1"],
     "--config.lrr is not a config field"),
])
def test_argument_errors_point_the_right_way(tmp_path, capfd, argv, words):
    out = tmp_path / "out"
    argv = [*argv, *DIGITS] + ([] if argv[0] == "evaluate" else ["--run-dir", out])
    refused(capfd, argv, words)
    assert not out.exists()


def test_negative_indices_reach_the_range_check(tmp_path, capfd):
    refused(capfd, ["retrain", "--forget-indices", "-1,5", "--run-dir", tmp_path / "o", *TINY],
            "forget index out of range", "got -1..5")


def test_a_report_write_on_a_full_disk_is_one_named_error(tmp_path, monkeypatch):
    """ENOSPC / EROFS writing results.json or report.md ended a command with a traceback (exit
    1) instead of one line naming the file (exit 2); no temporary file is left."""
    import errno

    def full(*a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(report.os, "replace", full)
    with pytest.raises(CheckpointError, match=r"could not write .*results\.json \(No space"):
        report.write_json(tmp_path / "results.json", {"x": 1})
    assert list(tmp_path.iterdir()) == []


def test_reports_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        report.write_json(tmp_path / "a.json", {"x": float("nan"), "y": np.float32(2)})
        os.umask(0o027)
        report.atomic_write(tmp_path / "b.md", "hi")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.md").stat().st_mode & 0o777 == 0o640
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 2.0}  # strict JSON


def test_text_the_library_reads_back_is_read_as_utf8():
    # atomic_write stores UTF-8; a bare read_text() / open() decodes with the locale's encoding:
    # unlearning_table.py and privacy_gate.py printed table.md / gate.md (± and ∇τ) through
    # it, so under LC_ALL=C PYTHONUTF8=0 a finished sweep ended in UnicodeDecodeError (and
    # under a Latin-1 locale printed mojibake). Every text read names its encoding.
    import ast

    root = Path(__file__).resolve().parents[1]
    bare = []
    for f in sorted([*(root / "hyperforget_jax").rglob("*.py"),
                     *(root / "experiments").glob("*.py")]):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
                continue
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), "r")
            if name in ("read_text", "write_text") or (
                    name == "open" and isinstance(fn, ast.Name) and "b" not in str(mode)):
                bare.append(f"{f.relative_to(root)}:{node.lineno}")
    assert not bare, bare


def test_json_stdout_is_the_results(runs, tmp_path, capfd):
    out = tmp_path / "ev"
    capfd.readouterr()
    assert _run(["evaluate", "--run-dir", runs / "orig", "--forget-class", "3", *DIGITS,
                 "--out", out, "--json"]) == 0
    stdout = capfd.readouterr().out
    assert json.loads(stdout) == json.loads((out / "evaluation.json").read_text())
    assert (out / "evaluation.json").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# --------------------------------------------------------------------------- one-sample forget


def test_forgetting_one_sample_saves_the_model_and_marks_attacks(runs, tmp_path, capfd):
    out = tmp_path / "one"
    capfd.readouterr()
    assert _run(["unlearn", "--method", "finetune", "--run-dir", runs / "orig",
                 "--forget-indices", "5", *DIGITS, "--out", out, "--json",
                 "--config.epochs=1"]) == 0
    cap = capfd.readouterr()
    res = json.loads(cap.out)
    row = res["eval"]["finetune"]
    assert row["mia_loss_lr"] is None and "at least 2" in row["not_applicable"]["mia_loss_lr"]
    assert 0 <= row["mia_efficacy_svc"] <= 1 and np.isfinite(res["avg_gap"]["finetune"])
    # the keys the gap averaged, recorded under evaluate's name (the attack is left out)
    assert res["avg_gap_keys"] == ["forget_acc", "retain_acc", "test_acc"]
    assert res["info"]["config"]["epochs"] == 1  # --config.epochs reached the method
    # warm and cold timings reported separately
    assert set(res["speedup_vs_retrain"]) == {"cold", "warm"}
    assert res["timing"]["cold_seconds"] >= res["timing"]["warm_seconds"] * 0.5
    arch, params, meta = common.load_run(out)
    assert meta["identity"]["role"] == "unlearned" and arch.name == "gpt_mlp"


def test_batch_larger_than_the_set_is_capped_with_a_warning(digits_splits):
    from hyperforget_jax import models, train

    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    small = digits_splits.train.subset(np.arange(100))
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=2, batch_size=100_000)
    with pytest.warns(UserWarning, match="larger than the training set .100 samples.; using "
                                         "batches of 100"):
        big, _ = train.fit(arch, small, cfg)
    same, _ = train.fit(arch, small, train.TrainConfig(arch="gpt_mlp", epochs=2,
                                                       batch_size=100))
    for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(same.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sample_never_overwrites_a_run_and_its_output_evaluates(runs, tmp_path, capfd):
    """``sample --out`` over a trained run (or the run it reads) is refused before sampling;
    ``evaluate`` reads a ``sample`` output (it used to say "run `hyperforget train` first")."""
    from conftest import save_zero_hypernet, tiny_hyperspec

    from hyperforget_jax import models

    hyper = tmp_path / "hyper"
    save_zero_hypernet(hyper, tiny_hyperspec(models.make_architecture("gpt_mlp", (8, 8, 1)),
                                             "dihyfo1", 3))
    argv = ["sample", "--hypernet", hyper, "--run-dir", runs / "orig", *DIGITS,
            "--forget-class", "3", "--num-steps", "2", "--out"]
    refused(capfd, [*argv, runs / "re"], "--out", "holds a 'retrain' run",
            untouched=[runs / "re", runs / "orig", hyper])
    refused(capfd, [*argv, runs / "orig"], "reads from", untouched=[runs / "orig"])
    assert _run([*argv, tmp_path / "s"]) == 0
    capfd.readouterr()
    assert _run(["evaluate", "--run-dir", tmp_path / "s", *DIGITS, "--json"]) == 0
    res = json.loads(capfd.readouterr().out)
    sampled = json.loads((tmp_path / "s" / "results.json").read_text())["sample"]
    assert res["request"] == {"classes": [3], "seed": 0}
    assert res["run"]["forget_acc"] == pytest.approx(sampled["forget_acc"])


def test_nan_in_the_test_set_names_the_set(digits_splits):
    from hyperforget_jax import models
    from hyperforget_jax.errors import DataError
    from hyperforget_jax.evaluation import evaluate_unlearning

    arch = models.make_architecture("gpt_mlp", (8, 8, 1))
    x = digits_splits.test.x.copy()
    x[0, 0, 0, 0] = np.nan
    splits = digits_splits._replace(test=digits_splits.test.replace(x=x))
    request = data.ForgetRequest(classes=(3,))
    fsplit = data.resolve_forget(splits.train, request)
    with pytest.raises(DataError, match="the test set .* has NaN or inf images"):
        evaluate_unlearning(arch, arch.init(jax.random.key(0)), splits, fsplit, request)


def test_user_model_by_import_path_through_train_unlearn_evaluate(tmp_path, capfd):
    """A user's Flax module by import path goes through train, unlearn and evaluate, and its
    run dir records (and resumes) it like a registered architecture."""
    argv = [*DIGITS, "--arch", "user_model:TinyNet", "--batch-size", "64", "--lr", "0.01",
            "--epochs", "2", "--quiet"]
    assert _run(["train", "--run-dir", tmp_path / "orig", *argv]) == 0
    assert "TinyNet" in json.dumps(rundir.read_identity(tmp_path / "orig")["architecture"])
    assert _run(["train", "--run-dir", tmp_path / "orig", *argv]) == 0  # resumes: same run
    refused(capfd, ["train", "--run-dir", tmp_path / "orig", *argv[:-3], "--epochs", "3",
                    "--quiet"], "train_config.epochs")
    capfd.readouterr()
    # 8 forget-epochs: one compiled run (the default 15 runs as 8 + 4 + 2 + 1, four programs
    # for this model alone, and the same code path).
    assert _run(["unlearn", "--method", "gradtau", "--run-dir", tmp_path / "orig",
                 "--forget-class", "3", *DIGITS, "--no-retrain", "--quiet", "--json",
                 "--config.epochs=8", "--out", tmp_path / "gt"]) == 0
    res = json.loads(capfd.readouterr().out)
    assert res["eval"]["gradtau"]["forget_acc"] <= res["eval"]["original"]["forget_acc"]
    assert _run(["evaluate", "--run-dir", tmp_path / "gt", *DIGITS, "--json"]) == 0


def test_unwritable_out_names_the_out_flag(runs, tmp_path, capfd):
    """prepare_dir names the flag that chose the directory: an --out that cannot be created
    was reported as "choose another --run-dir" by every command writing to --out."""
    (tmp_path / "file").write_text("")
    err = refused(capfd, ["evaluate", "--run-dir", runs / "orig", "--forget-class", "3",
                          *DIGITS, "--out", tmp_path / "file" / "ev"], "not writable")
    assert err.endswith("choose another --out"), err


def test_without_flock_a_lock_of_another_host_is_honoured(tmp_path, monkeypatch):
    """On a shared file system without flock (ENOLCK), a lock written by a process on another
    node cannot be checked for liveness: it was taken over, so two nodes of a sweep wrote one
    run directory at once. A dead process's lock on this host is still taken over."""
    import errno
    import fcntl
    import socket

    def no_flock(*a):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    run = tmp_path / "r"
    run.mkdir()
    lock = run / rundir.LOCK_NAME
    lock.write_text(json.dumps({"pid": 4242, "host": "node-17", "command": "hyperforget train"}))
    with pytest.raises(RunDirError, match="node-17.*cannot be checked from this host"):
        with rundir.open_run(run, {"role": "x"}):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    lock.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname()}))
    with rundir.open_run(run, {"role": "x"}):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_sweep_cells_reuse_only_what_they_return(tmp_path):
    # A stored None is "not computed" for compute(), which ran fn() again, yet get() had
    # listed the cell as reused: the report said "reused" of a cell this run computed.
    cells = rundir.Cells(tmp_path)
    cells.put("a", {"k": 1}, None)
    assert cells.compute("a", {"k": 1}, lambda: 2) == 2 and cells.reused == []
    assert cells.compute("a", {"k": 1}, lambda: 3) == 2 and cells.reused == ["a"]
    cells.file("a").write_text("{damaged")                    # computed again, not an error
    assert cells.compute("a", {"k": np.int64(1)}, lambda: 4) == 4 and cells.reused == ["a"]


def test_the_program_s_ctrl_c_is_not_dropped_inside_a_gc_callback(monkeypatch):
    """SIGINT landing inside JAX's garbage-collection callback became "Exception ignored in
    _xla_gc_callback ... KeyboardInterrupt" and the run went on to exit 0: the program's
    handler delivers it again outside the callback, and raises anywhere else."""
    import gc
    import types

    def callback(phase, info):
        pass

    later = []
    monkeypatch.setattr(_sigint.threading, "Timer", lambda t, f, args: types.SimpleNamespace(
        start=lambda: later.append((t, f, args))))
    monkeypatch.setattr(gc, "callbacks", [*gc.callbacks, callback])
    assert _sigint.interrupt(signal.SIGINT,
                             types.SimpleNamespace(f_code=callback.__code__)) is None
    assert later == [(0.02, os.kill, (os.getpid(), signal.SIGINT))]
    with pytest.raises(KeyboardInterrupt):
        _sigint.interrupt(signal.SIGINT, sys._getframe())


_PIP_STUB = ("import re\nimport sys\nfrom hyperforget_jax.cli import main\n"
             "if __name__ == '__main__':\n"
             "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
             "    sys.exit(main())\n")


@pytest.mark.parametrize("script, installed", [
    ("hyperforget", True), ("script.py", False), ("hyperforget.py", False),
    ("own/hyperforget", False), ("dir/hyperforget", False), ("wrap/hyperforget", False)])
def test_the_program_s_ctrl_c_while_it_imports_jax_ends_it_with_one_line(script, installed,
                                                                      tmp_path):
    """The handler above came into place only once a command ran, after seconds of imports:
    a Ctrl-C landing in JAX's gc callback then was dropped (the run trained to the end, exit
    0), elsewhere it was a traceback of the import machinery. The package puts its startup
    handler in place before it imports JAX, for the program only: pip's console script (which
    imports hyperforget_jax.cli). A user's script named hyperforget.py or hyperforget, or a
    project directory hyperforget/, keeps its own Ctrl-C (it was ended with os._exit)."""
    path = tmp_path / script
    path.parent.mkdir(parents=True, exist_ok=True)
    if script == "dir/hyperforget":
        path.mkdir()
    else:
        # wrap/: a user's wrapper named hyperforget that calls main([...]) itself (stop 63:
        # it kept the startup handler, and a Ctrl-C mid-run ended it with os._exit).
        path.write_text(_PIP_STUB if installed else
                        "from hyperforget_jax.cli import main\nmain(['--help'])\n"
                        if script.startswith("wrap/") else "import hyperforget_jax\n")
    argv0 = str(path)
    code = ("import os, signal, sys, time\n"
            f"sys.argv = [{argv0!r}]\n"
            "import hyperforget_jax\n"
            "print(signal.getsignal(signal.SIGINT).__name__, flush=True)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(30)\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=120)
    if installed:
        assert out.stdout.split() == ["_at_startup"] and out.returncode == 130, out
        assert out.stderr.strip() == "hyperforget: interrupted while starting; nothing was run"
    else:
        assert out.stdout.split() == ["default_int_handler"] and out.returncode != 130, out
        assert "KeyboardInterrupt" in out.stderr


def test_the_interrupted_program_ends_at_once_with_130(monkeypatch, capsys):
    """Interpreter shutdown with native threads mid-work segfaulted after the "interrupted"
    line (exit 139): the program ends with os._exit(130) once the line is out. main() called
    from Python returns 130 as before."""
    import argparse

    def interrupted(args):
        raise KeyboardInterrupt

    parser = argparse.ArgumentParser()
    parser.set_defaults(command="train", func=interrupted)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(cli._sigint, "install", lambda: None)    # the test's own handler stays
    exits = []

    def exit_(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", exit_)
    monkeypatch.setattr(sys, "argv", ["hyperforget"])
    with pytest.raises(SystemExit):
        cli.main()
    assert exits == [130]
    assert capsys.readouterr().err.strip() == ("hyperforget train: interrupted; rerun the same "
                                               "command to resume")
    assert cli.main([]) == 130 and exits == [130]


def test_an_interrupted_command_that_does_not_resume_says_it_starts_over(monkeypatch, capsys):
    """The demo and the evaluations keep no checkpoints, but an interrupt told their user to
    "rerun the same command to resume" (stop 63). Commands that resume keep that line."""
    import types

    parser = cli.build_parser()
    for argv, resumes in ((["demo"], False), (["evaluate", "--run-dir", "r"], False),
                          (["gan", "evaluate", "--run-dir", "r"], False),
                          (["sample", "--hypernet", "h", "--out", "r", "--forget-class",
                            "3"], False),
                          (["train", "--run-dir", "r"], True),
                          (["gan", "train", "--run-dir", "r"], True)):
        args = parser.parse_args(argv)
        assert getattr(args, "_resumes", True) is resumes, argv

        def interrupted(args):
            raise KeyboardInterrupt

        monkeypatch.setattr(args, "func", interrupted)
        monkeypatch.setattr(cli, "build_parser", lambda: types.SimpleNamespace(
            parse_args=lambda argv, a=args: a))
        assert cli.main(argv) == 130
        then = ("rerun the same command to resume" if resumes else "rerun the command to run "
                "it again (it starts over: this command does not resume)")
        assert capsys.readouterr().err.strip() == (
            f"hyperforget {' '.join(argv[:2] if argv[0] == 'gan' else argv[:1])}: "
            f"interrupted; {then}")


def test_main_called_from_python_takes_back_the_startup_handler(monkeypatch):
    """main([...]) called from Python in a process that put the startup handler in place (a
    user's wrapper taken for the program) kept it: a Ctrl-C mid-run ended the process with
    os._exit, its `finally` skipped and its checkpoint half-written. The call puts Python's
    own Ctrl-C back; the program's main() keeps installing its own."""
    import argparse

    seen = []
    parser = argparse.ArgumentParser()
    parser.set_defaults(command="train", func=lambda args: seen.append(
        signal.getsignal(signal.SIGINT)) or 0)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, cli._sigint._at_startup)
        assert cli.main([]) == 0
        assert seen == [signal.default_int_handler]
        signal.signal(signal.SIGINT, cli._sigint._at_startup)
        monkeypatch.setattr(sys, "argv", ["hyperforget"])
        assert cli.main() == 0
        assert seen[-1] is cli._sigint.interrupt
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("text", ['[1]', '{"identity": [1]}', '{"identity": "x"}'])
def test_a_run_json_whose_identity_is_not_an_object_is_one_line(tmp_path, capfd, text):
    """``{"identity": [1]}`` passed the check (the outer object is a dict): train ended in a
    TypeError traceback in the identity comparison, evaluate in an AttributeError."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(text)
    with pytest.raises(RunDirError, match="run.json does not hold a run identity; restore it"):
        rundir.read_identity(tmp_path / "r")
    capfd.readouterr()
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), *TINY]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not hold a run identity" in err[0], err
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["run.json"]


def test_ctrl_c_in_a_script_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C in an experiment or benchmark script printed a 76-line traceback, and the
    interpreter's shutdown with XLA's threads mid-work could segfault (exit 139), where the
    README promises exit code 130 and one line, as the CLI gives (stop 64)."""
    out = tmp_path / "out"
    argv = [sys.executable, str(ROOT / "experiments/unlearning_table.py"), "--out", str(out),
            "--dataset", "digits", "--seeds", "1", "--epochs", "400", "--classes", "3",
            "--fractions"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        t_end = time.monotonic() + 120
        while not (out / rundir.LOCK_NAME).exists():       # the run has started
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < t_end
            time.sleep(0.05)
        time.sleep(1)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "unlearning_table: interrupted; rerun the same command to resume"], err
    # A script that does not resume (the benchmarks, unlearn_speed, hyperforget_eval) says so.
    code = ("from hyperforget_jax import report\n"
            "def main():\n    raise KeyboardInterrupt\n"
            "report.exit_on_error('bench_x', main, resumes=False)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [
        "bench_x: interrupted; rerun the command to run it again (it starts over: this "
        "script does not resume)"], done.stderr


def test_a_lock_file_the_disk_cannot_hold_is_refused_and_removed(tmp_path, monkeypatch):
    """A full disk while the lock's record was written: an OSError traceback, and the empty
    lock file left in the new directory, which was then not removed either (stop 64)."""
    import errno

    def full(self, fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir._Lock, "_write_info", full)
    with pytest.raises(RunDirError, match=r"cannot write the lock file .*\(No space left on "
                                          r"device\); check the disk space"):
        with rundir.open_run(tmp_path / "r", {"role": "x"}):
            pass
    assert not (tmp_path / "r").exists()


def test_a_path_component_past_255_bytes_is_refused(tmp_path):
    """Path.exists re-raised ENAMETOOLONG: a traceback where a refusal belongs (stop 64)."""
    with pytest.raises(RunDirError, match="File name too long; pass a shorter path"):
        with rundir.open_run(tmp_path / ("a" * 300), {"role": "x"}):
            pass
