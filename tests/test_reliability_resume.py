"""Kill and resume: SIGKILL a run at random points (during a step, during a checkpoint write,
while pruning an old step), resume it, and prove that no checkpoint was lost or corrupt and that
the final parameters equal an uninterrupted run's.

The victims are real subprocesses (``python -m hyperforget_jax.cli train`` and
``tests/reliability_worker.py``, which can also SIGKILL itself at an exact point inside Orbax).
The kill points are random: set ``RELIABILITY_SEED`` to replay a failure (the seed is in every
assertion message).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from hyperforget_jax import cli
from hyperforget_jax.checkpoint import Checkpointer
from hyperforget_jax.commands import common
from hyperforget_jax.errors import CheckpointError
from hyperforget_jax.train import TrainConfig, init_state, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "reliability_worker.py"
SEED = int(os.environ.get("RELIABILITY_SEED", random.SystemRandom().randrange(10**6)))
EPOCHS = 8
FAST = ["--dataset", "digits", "--arch", "gpt_mlp", "--epochs", str(EPOCHS), "--batch-size", "64",
        "--lr", "0.01", "--quiet"]


def _env(fresh: bool = False, devices_as_here: bool = False) -> dict:
    """The victims' environment; ``fresh``: without the test run's shared compilation cache
    (conftest.py), so the victim compiles every program itself, as a user's resumed run does.
    ``devices_as_here``: the test process's 4 fake CPU devices, for a victim whose result is
    compared with one computed here (XLA:CPU rounds differently with 1 and 4 fake
    devices: 1.4e-6 apart after 3 epochs of a small GAN with the normal prior, 0.03 with the
    mixture (benchmarks/xla_rounding.py), 1.5e-5 at the tests' optimisation
    level 0; with the same flags the two processes agree bit for bit;
    benchmarks/xla_rounding.py)."""
    env = dict(os.environ)
    if fresh:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["JAX_PLATFORMS"] = "cpu"
    if not devices_as_here:
        # One CPU device in the victims, as for a user (the test process fakes 4 for pmap tests).
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if "force_host_platform_device_count" not in f)
    return env


def _cli_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "hyperforget_jax.cli", "train", "--run-dir", str(run_dir), *FAST]


def _worker_cmd(*args: str) -> list[str]:
    return [sys.executable, str(WORKER), *args]


def _spawn(cmd: list[str], fresh: bool = False, devices_as_here: bool = False
           ) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=_env(fresh, devices_as_here), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _run_to_death(cmd: list[str], timeout: float = 240, fresh: bool = False,
                  devices_as_here: bool = False) -> None:
    """Runs a worker that SIGKILLs itself; asserts it really died that way."""
    p = subprocess.run(cmd, env=_env(fresh, devices_as_here), cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == -signal.SIGKILL, (p.returncode, p.stderr[-2000:])


def _names(directory: Path) -> list[str]:
    """The entries of ``directory`` ([] while it does not exist). ``os.listdir``: the kill
    loops poll every few milliseconds, beside the victim, on the same two cores."""
    try:
        return os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _debris(ckpt_dir: Path) -> list[str]:
    """Anything in a run's checkpoint directory that is not a committed step."""
    return sorted(n for n in os.listdir(ckpt_dir) if not n.isdigit())


def _steps_on_disk(ckpt_dir: Path) -> list[int]:
    return sorted(int(n) for n in _names(ckpt_dir) if n.isdigit())


def _wait_until(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """Polls until ``ready()`` holds; False if ``proc`` ended first."""
    t_end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < t_end, f"victim never reached the kill point (seed {SEED})"
        time.sleep(0.002)
    return True


def _kill_after(proc: subprocess.Popen, delay: float) -> bool:
    """SIGKILLs ``proc`` ``delay`` seconds from now; False if it ended before (nothing was
    killed, and no time is spent waiting for a process that is gone)."""
    t_kill = time.monotonic() + delay
    while (left := t_kill - time.monotonic()) > 0:
        if proc.poll() is not None:
            return False
        time.sleep(min(left, 0.002))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    return True


def _kill_when(proc: subprocess.Popen, ready, delay: float = 0.0, timeout: float = 240) -> bool:
    """SIGKILLs ``proc`` ``delay`` seconds after ``ready()`` first holds. Returns False if the
    process ended before that (nothing was killed)."""
    return _wait_until(proc, ready, timeout) and _kill_after(proc, delay)


def _template(run_dir: Path):
    with Checkpointer(run_dir / "checkpoints") as ckpt:
        meta = ckpt.restore_meta()
    arch = common.Architecture.from_json(meta["architecture"])
    cfg = TrainConfig(**meta["train_config"])
    return init_state(arch, make_optimizer(cfg), jax.random.key(0))


def assert_every_step_restores(ckpt_dir: Path, template, context: str) -> list[int]:
    """Every step the Checkpointer lists restores, finite; returns the steps."""
    with Checkpointer(ckpt_dir) as ckpt:
        steps = ckpt.all_steps()
        assert steps == _steps_on_disk(ckpt_dir), (steps, context)
        for s in steps:
            try:
                state, meta = ckpt.restore(template, step=s)
            except CheckpointError as e:
                pytest.fail(f"{context}: listed step {s} does not restore: {e}")
            assert meta["epoch"] == s and int(state.step) > 0, context
            assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(state)), context
    return steps


def assert_json_close(a, b, rel: float = 1e-5, where: str = "") -> None:
    """Two JSON trees equal in structure, strings and ints, floats to ``rel``: the
    histories of a resumed and an uninterrupted run round alike on most CPUs, but not on
    every one (an AVX2-only VM, 2026-12-04)."""
    assert type(a) is type(b), f"{where}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_json_close(a[k], b[k], rel, f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{where}: {len(a)} vs {len(b)} entries"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_json_close(x, y, rel, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-7), f"{where}: {a} vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_params_equal(a, b, atol: float = 1e-6) -> float:
    worst = 0.0
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):
        d = float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        assert d <= atol, f"{jax.tree_util.keystr(path)} differs by {d} (seed {SEED})"
        worst = max(worst, d)
    return worst


def _strip_timing(results: dict) -> dict:
    """The results without how the run went: its time and the epoch a rerun resumed at."""
    return {k: v for k, v in results.items()
            if not k.endswith("seconds") and k != "resumed_from_epoch"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in-process, same config and seeds)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(["train", "--run-dir", str(run_dir), *FAST]) == 0
    _, params, _ = common.load_run(run_dir)
    return params, json.loads((run_dir / "results.json").read_text()), run_dir


def test_train_killed_during_writes_and_steps_resumes_exactly(reference, tmp_path):
    """``hyperforget train`` SIGKILLed (1) while Orbax writes a checkpoint (its tmp directory
    exists), (2) at a random time during an epoch, (3) just before a write commits; every step
    left on disk restores after each kill, and the resumed run ends bit-for-bit (≤ 1e-6) where
    the uninterrupted one does."""
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    template = None

    # (1) during a checkpoint write: kill as soon as an Orbax tmp directory appears, at a
    # random write among the first few.
    target = rng.randint(1, 3)
    has_tmp = lambda: any(".orbax-checkpoint-tmp" in n and n.split(".")[0] == str(target)
                          for n in _names(ckpt_dir))
    # Fresh victims (no shared compilation cache): every resume compiles its own programs.
    assert _kill_when(_spawn(_cli_cmd(run_dir), fresh=True), has_tmp), \
        f"run ended first (seed {SEED})"
    steps = _steps_on_disk(ckpt_dir)
    assert steps == list(range(1, target))[-2:], (steps, target, SEED)
    if steps:
        template = _template(run_dir)
        assert_every_step_restores(ckpt_dir, template, f"after kill in write {target}")

    # (2) at a random point of a later epoch (mid-step or mid-write, whichever it hits).
    before = max(steps, default=0)
    later = lambda: max(_steps_on_disk(ckpt_dir), default=0) > before
    killed = _kill_when(_spawn(_cli_cmd(run_dir), fresh=True), later,
                        delay=rng.uniform(0.05, 0.5))
    template = template or _template(run_dir)
    steps = assert_every_step_restores(ckpt_dir, template, f"after random kill (seed {SEED})")
    assert steps and max(steps) > before

    # (3) exactly between "fully written" and "committed" (injected inside Orbax).
    if killed and max(steps) < EPOCHS:
        commit = max(steps) + 1
        _run_to_death(_worker_cmd("--kill-before-commit", str(commit), "cli", "--",
                                  *_cli_cmd(run_dir)[3:]), fresh=True)
        assert max(_steps_on_disk(ckpt_dir)) == commit - 1  # the uncommitted step is not listed
        assert_every_step_restores(ckpt_dir, template, f"after kill before commit {commit}")

    # Resume to the end, in-process.
    assert cli.main(["train", "--run-dir", str(run_dir), *FAST]) == 0
    # A kill after the last commit but before its prune may leave one extra (valid) step.
    steps = assert_every_step_restores(ckpt_dir, template, "after resume")
    assert steps[-2:] == [EPOCHS - 1, EPOCHS] and len(steps) <= 3, (steps, SEED)
    assert _debris(ckpt_dir) == [], SEED  # no tmp / half-deleted leftovers
    _, params, meta = common.load_run(run_dir)
    ref_params, ref_results, _ = reference
    assert_params_equal(params, ref_params, atol=1e-6)
    results = json.loads((run_dir / "results.json").read_text())
    assert _strip_timing(results) == _strip_timing(ref_results)


def test_ctrl_c_during_checkpoint_writes_is_one_line_and_resumes_exactly(reference, tmp_path):
    """Ctrl-C (SIGINT) to ``hyperforget train`` while Orbax writes a checkpoint, twice (the
    second in a run resumed from what the first left): each ends with exit 130 and exactly one
    stderr line, leaves only restorable steps and no debris (the write is held until
    committed), and the resumed run equals the uninterrupted one. (A third interrupt, as
    before, took a process start more and met no other code path.)"""
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    interrupts = 0
    for _ in range(2):
        before = set(_names(ckpt_dir))
        proc = _spawn(_cli_cmd(run_dir))
        writing = lambda: any(".orbax-checkpoint-tmp" in n and n not in before
                              for n in _names(ckpt_dir))
        t_end = time.monotonic() + 240
        while not writing() and proc.poll() is None:
            assert time.monotonic() < t_end, f"no checkpoint write seen (seed {SEED})"
            time.sleep(0.001)
        if proc.poll() is not None:
            proc.communicate()
            break  # the run finished first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert proc.returncode == 130 and len(lines) == 1, (proc.returncode, err[-3000:])
        assert "interrupted" in lines[0]
        assert _debris(ckpt_dir) == [], _debris(ckpt_dir)
        interrupts += 1
    assert interrupts == 2
    template = _template(run_dir)
    assert_every_step_restores(ckpt_dir, template, "after Ctrl-C")
    assert cli.main(["train", "--run-dir", str(run_dir), *FAST]) == 0
    _, params, _ = common.load_run(run_dir)
    assert_params_equal(params, reference[0], atol=1e-6)
    assert (_strip_timing(json.loads((run_dir / "results.json").read_text()))
            == _strip_timing(reference[1]))


def test_kill_while_pruning_leaves_no_listed_corrupt_step(tmp_path):
    """Retention renames a dropped step out of the listing (into ``.trash/``) before deleting
    it, so dying half-way through the delete leaves only restorable steps; the next open
    removes the debris."""
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    # max_to_keep=2: saving step 3 drops step 1; die half-way through deleting it.
    _run_to_death(_worker_cmd("--kill-mid-prune", "1", "cli", "--", *_cli_cmd(run_dir)[3:]))
    assert (ckpt_dir / ".trash" / "1").is_dir()  # died mid-delete
    template = _template(run_dir)
    assert assert_every_step_restores(ckpt_dir, template, "after kill mid-prune") == [2, 3]
    assert _debris(ckpt_dir) == []  # opening the directory cleaned up


def test_kill_while_overwriting_a_step_keeps_the_old_copy(tmp_path):
    """Re-saving a step moves the old copy aside first; dying before the new copy commits
    must not lose the step: the next open puts the old copy back."""
    _run_to_death(_worker_cmd("overwrite", str(tmp_path / "ow")))
    assert not (tmp_path / "ow" / "1").exists()  # the kill hit the window
    with Checkpointer(tmp_path / "ow") as ckpt:
        assert ckpt.all_steps() == [1]
        state, meta = ckpt.restore({"w": np.zeros(3, np.float32)})
    assert meta["v"] == "old" and np.array_equal(state["w"], np.ones(3, np.float32))
    assert _debris(tmp_path / "ow") == []


def test_gan_training_killed_before_commit_resumes_exactly(digits_splits, tmp_path):
    """``gan.train.train_gan`` with a Checkpointer: killed just before step 2 commits, resumed,
    equals the uninterrupted run."""
    from hyperforget_jax.gan.train import GANState, gan_arch_of, init_gan_state, train_gan
    from hyperforget_jax.gan.train import make_optimizer as gan_opt
    from reliability_worker import gan_config, save_splits

    epochs = 3
    directory = tmp_path / "gan"
    save_splits(digits_splits, tmp_path / "digits.npz")  # the victim's data, without sklearn
    _run_to_death(_worker_cmd("--kill-before-commit", "2", "--data", str(tmp_path / "digits.npz"),
                              "gan", str(directory), str(epochs)), devices_as_here=True)
    assert _steps_on_disk(directory) == [1]
    cfg = gan_config(epochs)
    train = digits_splits.train
    arch = gan_arch_of(cfg, train.x.shape[1:])
    template = init_gan_state(arch, gan_opt(cfg.lr, cfg.beta1), jax.random.key(0))
    with Checkpointer(directory, max_to_keep=2) as ckpt:
        ckpt.restore(template, step=1)  # the committed step is intact
        resumed, _, _ = train_gan(train, cfg, checkpointer=ckpt, save_every=1)
        assert ckpt.all_steps() == [epochs - 1, epochs]
    fresh, _, _ = train_gan(train, cfg)
    assert isinstance(resumed, GANState)
    assert_params_equal((resumed.g_params, resumed.d_params), (fresh.g_params, fresh.d_params))
    assert _debris(directory) == []


def _strip_times(obj):
    """``obj`` without how the run went: times, speed-ups and where a rerun resumed."""
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items()
                if not any(t in k for t in ("seconds", "time", "speedup", "resumed_from"))}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def test_unlearn_killed_then_rerun_matches_uninterrupted(reference, tmp_path):
    """``hyperforget unlearn --method gradtau`` (seconds long, so it restarts rather than
    resumes) SIGKILLed just before its checkpoint commits, then at a random point of its
    writes; the rerun replaces whatever was left and ends exactly where an uninterrupted run
    does, and no half-written file is ever visible."""
    _, _, original = reference
    # 8 forget-epochs: one compiled run of 8 (the paper's budget here, 15, runs as 8+4+2+1,
    # four programs to compile in each process).
    argv = lambda out: ["unlearn", "--method", "gradtau", "--forget-class", "3", "--run-dir",
                        str(original), "--out", str(out), "--no-retrain", "--quiet",
                        "--dataset", "digits", "--config.epochs=8"]
    ref_out, out = tmp_path / "ref", tmp_path / "victim"
    assert cli.main(argv(ref_out)) == 0
    ref_arch, ref_params, _ = common.load_run(ref_out)
    before = _debris(original / "checkpoints"), _steps_on_disk(original / "checkpoints")

    # (1) exactly between "written" and "committed": nothing listed, no results.
    _run_to_death(_worker_cmd("--kill-before-commit", "any", "cli", "--", *argv(out)))
    assert _steps_on_disk(out / "checkpoints") == [] and not (out / "results.json").exists()
    # (2) at a random point once the output directory appears (save / report writing).
    rng = random.Random(SEED)
    ready = lambda: _steps_on_disk(out / "checkpoints")
    _kill_when(_spawn([sys.executable, "-m", "hyperforget_jax.cli", *argv(out)]), ready,
               delay=rng.uniform(0.0, 0.05))
    for f in out.rglob("*.json"):
        json.loads(f.read_text())  # any visible JSON is complete
    # Rerun to completion in-process.
    assert cli.main(argv(out)) == 0
    arch, params, _ = common.load_run(out)
    assert arch == ref_arch
    assert_params_equal(params, ref_params, atol=1e-6)
    got = json.loads((out / "results.json").read_text())
    want = json.loads((ref_out / "results.json").read_text())
    assert_json_close(_strip_times(got), _strip_times(want))
    assert _debris(out / "checkpoints") == [] and len(_steps_on_disk(out / "checkpoints")) == 1
    assert (_debris(original / "checkpoints"), _steps_on_disk(original / "checkpoints")) == before


def test_gan_unlearn_killed_then_rerun_matches_uninterrupted(tmp_path):
    """``hyperforget gan unlearn`` SIGKILLed just before its
    checkpoint commits and at a random point after, then rerun: equals the uninterrupted run."""
    gan_run = tmp_path / "gan"
    # Latent 16: the GAN of the training test above (reliability_worker.gan_config), so its
    # programs are compiled once for both tests.
    assert cli.main(["gan", "train", "--dataset", "digits", "--gan-arch", "mlp", "--latent-dim",
                     "16", "--epochs", "1", "--run-dir", str(gan_run), "--quiet"]) == 0
    argv = lambda out: ["gan", "unlearn", "--run-dir", str(gan_run), "--out", str(out),
                        "--dataset", "digits", "--forget-indices",
                        ",".join(str(i) for i in range(16)), "--max-rounds", "3", "--quiet"]
    from hyperforget_jax.commands.gan import load_gan_run

    ref_out, out = tmp_path / "ref", tmp_path / "victim"
    assert cli.main(argv(ref_out)) == 0
    _, ref_state, _ = load_gan_run(ref_out)
    # The victims keep this process's fake devices: the rerun here resumes from what they
    # committed, and the mixture prior's codes (μ + σ·ε, fused) round differently with 1 and 4
    # devices (4e-6 after 3 rounds).
    _run_to_death(_worker_cmd("--kill-before-commit", "any", "cli", "--", *argv(out)),
                  devices_as_here=True)
    assert _steps_on_disk(out / "checkpoints") == [] and not (out / "results.json").exists()
    rng = random.Random(SEED)
    ready = lambda: _steps_on_disk(out / "checkpoints")
    _kill_when(_spawn([sys.executable, "-m", "hyperforget_jax.cli", *argv(out)],
                      devices_as_here=True), ready, delay=rng.uniform(0.0, 0.2))
    for f in out.rglob("*.json"):
        json.loads(f.read_text())
    assert cli.main(argv(out)) == 0
    _, state, _ = load_gan_run(out)
    assert_params_equal((state.g_params, state.d_params),
                        (ref_state.g_params, ref_state.d_params), atol=1e-6)
    got = json.loads((out / "results.json").read_text())
    want = json.loads((ref_out / "results.json").read_text())
    assert_json_close(_strip_times(got), _strip_times(want))
    assert _debris(out / "checkpoints") == []


@pytest.mark.parametrize("setting, value", [("jax_default_prng_impl", "rbg"),
                                            ("jax_enable_x64", True)])
def test_a_run_resumed_under_other_jax_settings_is_refused(tmp_path, digits_splits, setting,
                                                           value):
    """A checkpointed run resumed under another jax_default_prng_impl or jax_enable_x64 went
    on without a word, a mix of two random streams or precisions (`train` under x64: weights
    4.6e-4 from the uninterrupted run; a GAN 3.9e-5; stop 64). fit, the ∇τ runner and GAN
    training refuse it while work is left; a finished run reads as before."""
    import shutil
    import warnings

    from hyperforget_jax import data, models, train
    from hyperforget_jax.gan import GANConfig, train_gan
    from hyperforget_jax.unlearn import GradTauConfig, unlearn

    arch = models.as_model(models.make_architecture("gpt_mlp", (8, 8, 1)))
    tr = digits_splits.train
    fs = data.resolve_forget(tr, data.ForgetRequest(classes=(3,)))
    start = arch.init(jax.random.key(0))
    # (what, run(checkpointer, epochs), epochs of the first run, of the resumed one): ∇τ's
    # forget-epochs are part of its run, so its run of 3 is cut back to its first epoch.
    runs = [
        ("a model's training", lambda ck, e: train.fit(
            arch, tr, TrainConfig(arch="gpt_mlp", epochs=e, batch_size=64), checkpointer=ck),
         1, 2),
        ("a ∇τ run", lambda ck, e: unlearn("gradtau", arch, start, fs, digits_splits.val,
                                           GradTauConfig(epochs=e), checkpointer=ck), 3, 3),
        ("a GAN's training", lambda ck, e: train_gan(
            tr.subset(np.arange(64)), GANConfig(epochs=e, latent_prior="normal"),
            checkpointer=ck), 1, 2),
    ]
    before = getattr(jax.config, setting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for what, run, first, then in runs:
            d = tmp_path / what.replace(" ", "_")
            with Checkpointer(d, max_to_keep=None) as ck:
                run(ck, first)
            jax.config.update(setting, value)
            try:
                with Checkpointer(d, max_to_keep=None) as ck:
                    run(ck, first)                      # finished: nothing left to run
            finally:
                jax.config.update(setting, before)
            if first == then:                           # a run killed after its first epoch
                with Checkpointer(d) as ck:
                    steps = ck.all_steps()
                for s in steps[1:]:
                    shutil.rmtree(d / str(s))
            jax.config.update(setting, value)
            try:
                with pytest.raises(CheckpointError, match=f"holds {what} written under "
                                                          f"{setting}=.*this process runs under "
                                                          f"{value!r}"):
                    with Checkpointer(d, max_to_keep=None) as ck:
                        run(ck, then)
            finally:
                jax.config.update(setting, before)
            with Checkpointer(d, max_to_keep=None) as ck:   # under the run's own: resumes
                run(ck, then)
