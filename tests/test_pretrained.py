"""The pretrained DiHyFo-2 shipped with the package: hash-checked loading, a freshly trained
original (never in any corpus) sampled for a single- and a two-class request within the bar of
Retrain, and the CLI's ``--hypernet pretrained`` with its refusals (exit 2, one line)."""

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CompileCounter, load_experiment
from hyperforget_jax import cli, data, pretrained, train
from hyperforget_jax import params as P_
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError
from hyperforget_jax.hyperforget import dihyfo as H

PKG = Path(pretrained.__file__).parent


def test_shipped_files_match_their_recorded_hashes():
    assert pretrained.DEFAULT in pretrained.PRETRAINED
    total = 0
    for name, entry in pretrained.PRETRAINED.items():
        raw = (PKG / entry["file"]).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == entry["sha256"], name
        total += len(raw)
    assert total <= 25 * 2 ** 20
    net, meta = H.load_hypernet("pretrained")
    assert net.spec.variant == "dihyfo2" and net.spec.arch.name == "gpt_mlp"
    assert meta["corpus_config"]["first_seed"] >= 100_000


def test_corrupted_or_replaced_file_is_refused(tmp_path, monkeypatch):
    entry = pretrained.PRETRAINED[pretrained.DEFAULT]
    raw = bytearray((PKG / entry["file"]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(raw))
    monkeypatch.setitem(pretrained.PRETRAINED, pretrained.DEFAULT,
                        {"file": str(bad), "sha256": entry["sha256"]})
    with pytest.raises(CheckpointError, match="corrupt or was replaced"):
        H.load_hypernet("pretrained")
    # The same bytes as a user file: unreadable or damaged, never a silent load.
    with pytest.raises(CheckpointError):
        H.load_hypernet(bad)


def test_pretrained_is_refused_while_it_also_names_a_local_hypernetwork(tmp_path, monkeypatch):
    """``hypertrain --out pretrained`` then ``sample --hypernet pretrained`` sampled the shipped
    network instead of the one in ./pretrained, without a word. A ./pretrained that holds no
    hypernetwork (a user's own folder of models) leaves the name alone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").mkdir()
    assert H.load_hypernet("pretrained")[0].spec.variant == "dihyfo2"
    (tmp_path / "pretrained" / "hypernet.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=r"names both .*pass \./pretrained for the latter"):
        H.load_hypernet("pretrained")
    with pytest.raises(CheckpointError):          # ./pretrained: the local one, read as such
        H.load_hypernet("./pretrained")
    assert H.load_hypernet(f"pretrained:{pretrained.DEFAULT}")[0].spec.variant == "dihyfo2"


def test_a_local_file_named_pretrained_that_is_no_archive_leaves_the_name_alone(
        tmp_path, monkeypatch):
    """Any file named ``pretrained`` in the working directory (a script, a note) refused the
    shipped network as "names both ... and ./pretrained", though ./pretrained could never load
    as one; an .npz archive of that name is still refused as ambiguous."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").write_text("#!/bin/sh\nhyperforget sample --hypernet pretrained\n")
    assert H.load_hypernet("pretrained")[0].spec.variant == "dihyfo2"
    (tmp_path / "pretrained").write_bytes((PKG / "dihyfo2_gpt_mlp_mnist5k.npz").read_bytes())
    with pytest.raises(ConfigError, match="names both"):
        H.load_hypernet("pretrained")


def test_fresh_original_meets_the_bar(mnist_splits):
    net, _ = H.load_hypernet("pretrained")
    arch = net.spec.arch
    x, y = jnp.asarray(mnist_splits.train.x), jnp.asarray(mnist_splits.train.y)
    requests = [(3,), (2, 7)]
    # `hyperforget train --arch gpt_mlp --seed 11` and its two Retrain runs (the training
    # program is the one `hyperforget train` and the README example compile for MNIST-5k).
    cfg = train.TrainConfig(arch="gpt_mlp", seed=11)
    nets = [P_.flatten(train.fit(arch, ds, cfg)[0].params) for ds in [mnist_splits.train] + [
        data.resolve_forget(mnist_splits.train, data.ForgetRequest(classes=r)).retain
        for r in requests]]
    p0 = P_.unflatten(nets[0], arch.param_shapes())
    prompts = H.stack_prompts([H.make_prompt(net, p0, mnist_splits.train, r)
                               for r in requests])
    many = H.sample_many(jax.random.split(jax.random.key(0), 2), net, p0, prompts)
    for i, r in enumerate(requests):
        f = np.isin(mnist_splits.train.y, r)
        acc = lambda flat: np.asarray(jnp.argmax(arch.apply(
            P_.unflatten(jnp.asarray(flat), arch.param_shapes()), x), -1) == y)
        s = acc(P_.flatten(jax.tree.map(lambda a: a[i], many)))
        rt = acc(nets[1 + i])
        assert s[f].mean() <= 0.03, (r, s[f].mean())
        assert abs(s[~f].mean() - rt[~f].mean()) <= 0.015, (r, s[~f].mean(), rt[~f].mean())


def test_cli_sample_pretrained_and_refusals(tmp_path, capsys, monkeypatch):
    run = tmp_path / "g"
    assert cli.main(["train", "--arch", "gpt_mlp", "--epochs", "2", "--seed", "5", "--run-dir",
                     str(run), "--quiet"]) == 0
    out = tmp_path / "s"
    assert cli.main(["sample", "--hypernet", "pretrained", "--run-dir", str(run),
                     "--forget-class", "2", "6", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sample"]["forget_acc"] <= 0.05 and res["start"]["forget_acc"] > 0.5
    capsys.readouterr()

    def fails(argv, message):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err

    mlp = tmp_path / "m"      # another architecture (on digits: a fraction of the work)
    assert cli.main(["train", "--run-dir", str(mlp), "--dataset", "digits", "--arch", "mlp",
                     "--epochs", "1", "--quiet"]) == 0
    capsys.readouterr()
    fails(["sample", "--hypernet", "pretrained", "--run-dir", str(mlp), "--forget-class", "3",
           "--out", str(tmp_path / "x1")], "samples gpt_mlp networks")
    fails(["sample", "--hypernet", "pretrained", "--run-dir", str(run), "--forget-class",
           "1", "2", "3", "--out", str(tmp_path / "x2")], "trained on requests of [1, 2]")
    entry = pretrained.PRETRAINED[pretrained.DEFAULT]
    monkeypatch.setitem(pretrained.PRETRAINED, pretrained.DEFAULT,
                        {**entry, "sha256": "0" * 64})
    fails(["sample", "--hypernet", "pretrained", "--run-dir", str(run), "--forget-class", "3",
           "--out", str(tmp_path / "x3")], "corrupt or was replaced")
    for d in ("x1", "x2", "x3"):
        assert not (tmp_path / d).exists()


def test_readme_example_runs_as_written():
    """The README's HyperForget Python block, executed: its sample forgets classes 2 and 6."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## HyperForget (DiHyFo-1 and DiHyFo-2)\n", 1)[1].split("\n## ", 1)[0]
    ns = {}
    exec(compile(re.findall(r"```python\n(.*?)```", section, re.S)[0], "README:hf", "exec"), ns)
    split, arch = ns["splits"].train, ns["net"].spec.arch
    pred = np.asarray(jnp.argmax(arch.apply(ns["unlearned"], jnp.asarray(split.x)), -1))
    forget = np.isin(split.y, (2, 6))
    assert (pred[forget] == split.y[forget]).mean() <= 0.03
    assert (pred[~forget] == split.y[~forget]).mean() >= 0.85


def test_shipped_corpus_recipe_and_eval_originals_flag(capsys):
    """The shipped DiHyFo-2 was trained on a corpus whose forgotten readout shrinks to 0, and
    hyperforget_eval's --originals parses SEED:LR:EPOCHS (or names the bad item)."""
    import argparse
    import importlib.util

    _, meta = H.load_hypernet("pretrained")
    assert meta["corpus_config"]["forget_readout"] == "zero"
    path = Path(__file__).resolve().parents[1] / "experiments" / "hyperforget_eval.py"
    spec = importlib.util.spec_from_file_location("hyperforget_eval_for_test", path)
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    assert ev.parse_originals("40:1e-3:20,41:2.5e-3:15") == [("default", 40, 1e-3, 20),
                                                            ("other", 41, 2.5e-3, 15)]
    for bad in ("40:1e-3", "x:1e-3:20", "100000:1e-3:20", "4:0:20"):
        with pytest.raises(argparse.ArgumentTypeError, match="SEED:LR:EPOCHS|seed"):
            ev.parse_originals(bad)
    # Given twice, argparse kept the second list alone; the joined form suggested parses.
    with pytest.raises(SystemExit) as e:
        ev.parse(["--originals", "40:1e-3:20", "--originals", "41:2.5e-3:15"])
    assert e.value.code == 2
    joined = capsys.readouterr().err.split("every item: --originals ")[1].split()[0]
    assert ev.parse_originals(joined) == ev.parse_originals("40:1e-3:20,41:2.5e-3:15")
    # --memo-seeds 1 passed the flags and failed after ~7 minutes (a corpus needs 2 seeds).
    with pytest.raises(SystemExit) as e:
        ev.parse(["--memo-seeds", "1"])
    assert e.value.code == 2 and "--memo-seeds must be >= 2" in capsys.readouterr().err


def _eval_script():
    """experiments/hyperforget_eval.py as a module, the gpt_mlp template and a zero start."""
    from hyperforget_jax.models import make_architecture

    tmpl = make_architecture("gpt_mlp", (28, 28, 1), 10).param_shapes()
    return (load_experiment("hyperforget_eval"), tmpl,
            np.zeros(P_.param_count(tmpl), np.float32))


def test_eval_best_of_and_memorisation_use_the_main_sampler(monkeypatch, digits_splits):
    """hyperforget_eval's best-of-k row and memorisation samples take the main tables' sampler
    (--num-steps/--method/--guidance): best-of-k silently ran DDIM under --method ddpm, and
    the memorisation samples ignored all three flags."""
    from hyperforget_jax.hyperforget.sampling import SampleConfig

    ev_mod, tmpl, start = _eval_script()
    seen = []
    monkeypatch.setattr(ev_mod.H, "make_prompt", lambda *a, **k: "prompt")

    def fake_best_of(key, net, p0, pr, tr, k, num_steps=20, guidance=0.0, method="ddim"):
        seen.append(("best_of", num_steps, method, guidance))
        return p0, {}

    def fake_sample(key, net, p0, pr, num_steps=20, method="ddim", guidance=0.0):
        seen.append(("sample", num_steps, method, guidance))
        return p0

    monkeypatch.setattr(ev_mod.H, "sample_best_of", fake_best_of)
    monkeypatch.setattr(ev_mod.H, "sample", fake_sample)
    sampler = SampleConfig(num_steps=7, method="ddpm", guidance=0.5)
    fake_ev = lambda flats, reqs, seed=0, mia=True: ([{"retain_acc": 1.0}] * len(reqs), None)
    origs = [("default", 0, 1e-3, 20)]
    ev_mod.best_of_rows(None, digits_splits, fake_ev, {0: start}, origs, [(3,)], sampler, tmpl)
    ev_mod.memo_samples(None, digits_splits, {0: start}, origs, [(3,)], sampler, tmpl)
    assert seen == [("best_of", 7, "ddpm", 0.5), ("sample", 7, "ddpm", 0.5)]


def test_eval_sampling_rows_vary_one_knob_of_the_main_sampler(monkeypatch, digits_splits):
    """hyperforget_eval's sampling-settings rows change one thing of the main tables' sampler
    each: the DDIM-steps rows keep --guidance, the guidance rows keep --method and
    --num-steps (under --method ddpm --guidance 0.5 the DDIM-steps rows ran unguided and the
    guidance rows DDIM, so "guidance 0.0" was another sampler than the tables above it); the
    defaults run as before."""
    from hyperforget_jax.hyperforget.sampling import SampleConfig

    ev_mod, tmpl, start = _eval_script()
    seen = []
    monkeypatch.setattr(ev_mod.H, "make_prompt", lambda *a, **k: "prompt")
    monkeypatch.setattr(ev_mod.H, "stack_prompts", lambda ps: ps)

    def fake_many(keys, net, p0, prompts, num_steps=20, method="ddim", guidance=0.0):
        seen.append((num_steps, method, guidance))
        return jax.tree.map(lambda a: a[None], p0)

    monkeypatch.setattr(ev_mod.H, "sample_many", fake_many)
    fake_ev = lambda flats, reqs, seed=0, mia=True: ([{"retain_acc": 1.0}] * len(reqs), None)
    run = lambda sampler: ev_mod.sampler_sweeps(None, digits_splits, fake_ev, {0: start},
                                                [("default", 0, 1e-3, 20)], [(3,)], sampler,
                                                tmpl)
    out = run(SampleConfig(num_steps=7, method="ddpm", guidance=0.5))
    steps = [(n, "ddim", 0.5) for n in ev_mod.DDIM_STEPS]
    assert seen == steps + [(7, "ddpm", w) for w in (0.0, 0.5, 1.0, 2.0)]
    assert list(out) == ["ddim_steps", "guidance"] and list(out["guidance"]) == [0.0, 0.5, 1.0,
                                                                                  2.0]
    seen.clear()
    run(SampleConfig())
    assert seen == [(n, "ddim", 0.0) for n in ev_mod.DDIM_STEPS] + [
        (20, "ddim", w) for w in (0.0, 0.5, 1.0, 2.0)]


def test_eval_refuses_another_configuration_and_writes_at_its_end(tmp_path, monkeypatch,
                                                                  digits_splits):
    """experiments/hyperforget_eval.py (short: no cells) takes the lock, refuses another
    configuration in its --out, and removes an earlier run's report at its start: an
    interrupted rerun left the previous run's report.md as if it were this one's."""
    from conftest import load_experiment

    from hyperforget_jax.errors import RunDirError

    from types import SimpleNamespace

    ev = load_experiment("hyperforget_eval")
    monkeypatch.setattr(ev.data, "load_mnist5k", lambda: digits_splits)     # stand-ins
    monkeypatch.setattr(ev.H, "load_hypernet", lambda path: (
        SimpleNamespace(params={"w": np.zeros(3, np.float32)}), {}))

    def evaluate(a, argv, out, *rest):
        (out / "report.md").write_text(f"samples {a.samples}")

    monkeypatch.setattr(ev, "evaluate", evaluate)
    argv = ["--samples", "2", "--out", str(tmp_path)]
    ev.main(argv)
    with pytest.raises(RunDirError, match="its args.samples is 2, this command's is 3"):
        ev.main(["--samples", "3", *argv[2:]])
    assert (tmp_path / "report.md").read_text() == "samples 2"

    def interrupted(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(ev, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ev.main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    monkeypatch.setattr(ev, "evaluate", evaluate)
    ev.main(["--samples", "3", "--restart", *argv[2:]])
    assert (tmp_path / "report.md").read_text() == "samples 3"


def test_build_pretrained_install_leaves_the_package_whole_when_interrupted(tmp_path,
                                                                          monkeypatch):
    """install() wrote each hypernet.npz in place, then the table of hashes: interrupted in
    between (or while writing), a new file sat beside the old table (refused on load). Now
    every byte is built first and each file replaced atomically, the table last."""
    from conftest import load_experiment

    from hyperforget_jax.hyperforget import store

    build = load_experiment("build_pretrained")
    pkg = tmp_path / "hyperforget_jax" / "pretrained"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text((PKG / "__init__.py").read_text())
    for _, fname in build.NAMES.values():
        (pkg / fname).write_bytes(b"old " + fname.encode())
    before = {p.name: p.read_bytes() for p in pkg.iterdir()}
    monkeypatch.setattr(build, "ROOT", tmp_path)
    monkeypatch.setattr(build.store, "load_hypernet", lambda path: (Path(path).parent.name, {}))
    made = []

    def to_bytes(net, extra, fail=True):
        made.append(net)
        if fail and len(made) == 2:
            raise KeyboardInterrupt                 # while building the second file
        return f"new {net}".encode()

    monkeypatch.setattr(build.store, "to_bytes", to_bytes)
    with pytest.raises(KeyboardInterrupt):
        build.install(tmp_path / "work")
    assert {p.name: p.read_bytes() for p in pkg.iterdir()} == before
    monkeypatch.setattr(build.store, "to_bytes", lambda net, extra: to_bytes(net, extra, False))
    table = build.install(tmp_path / "work")
    init = (pkg / "__init__.py").read_text()
    for entry in table.values():
        raw = (pkg / entry["file"]).read_bytes()
        assert raw.startswith(b"new ") and store.sha256(raw) in init
    assert sorted(p.name for p in pkg.iterdir()) == sorted(before)       # no temporary left


def test_build_pretrained_expands_a_tilde_in_work(tmp_path, monkeypatch):
    """--work=~/pre (no shell expansion after '=') built into ./~/pre."""
    from conftest import load_experiment

    build = load_experiment("build_pretrained")
    calls = []
    monkeypatch.setattr(build, "run", lambda argv: calls.append(argv) or 0.0)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    build.main(["--work=~/pre", "--no-install"])
    assert calls[0][:3] == ["corpus", "--out", str(tmp_path / "pre" / "corpus")]
    assert not (tmp_path / "~").exists()


def test_start_and_sample_are_checked_for_nan_on_the_host():
    """The NaN/inf checks of the start network and of a sample run on the host: op by op on
    the device they compiled two programs per leaf shape (≈ 0.5 s of a first ``sample``)."""
    from hyperforget_jax.hyperforget import sampling

    net, _ = H.load_hypernet("pretrained")
    start = jax.tree.map(np.array, net.spec.arch.init(jax.random.key(0)))
    odd = {"w": jnp.ones((3, 7, 11)), "b": np.ones(13, np.float32)}   # shapes no test uses
    with CompileCounter() as c:
        sampling.check_start(net.spec, start)
        assert sampling._finite_or_traced(odd)
    assert c.n == 0
    start["Dense_0"]["bias"][1] = np.nan
    with pytest.raises(NonFiniteError, match="start network"):
        sampling.check_start(net.spec, start)
    odd["b"][2] = np.inf
    assert not sampling._finite_or_traced(odd)
    assert jax.jit(sampling._finite_or_traced)(odd)          # traced: the caller's check
