"""The benchmark scripts measure what they say (benchmarks/README.md). Nothing here is timed:
these check what a figure counts and records, and the scripts' command lines."""

import importlib
import sys
from pathlib import Path

import jax
import pytest

# The scripts are not part of the installed package: importable from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCRIPTS = ("bench_conv_layers", "bench_efficiency", "bench_end_to_end", "bench_fleet",
           "bench_gradtau_vs_torch", "bench_hyperforget_sampling", "bench_scale", "bench_sweep",
           "conv_gradient_forms")


def _script(name, monkeypatch):
    # Two scripts set OMP_WAIT_POLICY for PyTorch on import: not for the rest of the session.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    return importlib.import_module(f"benchmarks.{name}")


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bad_flag_is_one_line_and_exit_2(name, monkeypatch, capsys):
    """As the CLI and the experiment scripts: argparse's usage block was 3-4 lines."""
    with pytest.raises(SystemExit) as e:
        _script(name, monkeypatch).main(["--no-such-flag"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and "--no-such-flag" in err, err


@pytest.mark.parametrize("name, argv, words", [
    ("bench_hyperforget_sampling", ["--sizes", "abc"], "--sizes 'abc': pass comma-separated"),
    ("bench_hyperforget_sampling", ["--sizes", "0"], "every value must be >= 1"),
    ("bench_fleet", ["--sizes", "1,x"], "--sizes '1,x'"),
    ("bench_efficiency", ["--configs", "8by64"], "pass comma-separated NxBATCH"),
    ("bench_gradtau_vs_torch", ["--models", "foo"], "'foo' is not one of mlp, cnn"),
    # Counts of 0 ended in a ZeroDivisionError or StatisticsError after minutes of work; the
    # cnn in the fleet benchmark in PyTorch's conv2d error after 90 s of compiling.
    ("bench_conv_layers", ["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    ("bench_fleet", ["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    ("bench_gradtau_vs_torch", ["--unlearn-epochs", "0"], "must be >= 1, got 0"),
    ("bench_fleet", ["--models", "cnn"], "dense twins only (gpt_mlp, mlp); pass --no-torch"),
    ("bench_fleet", ["--models", "foo", "--no-torch"], "'foo' is not one of gpt_mlp"),
    *((n, ["--out", "DIR"], "must name the JSON file") for n in SCRIPTS),
    ("bench_sweep", ["--out", ""], "must name the JSON file")])
def test_a_bad_value_is_one_line_and_exit_2_before_the_run(name, argv, words, monkeypatch,
                                                           capsys, tmp_path):
    """Bad list values ended in a traceback (bare int()), an unknown model in a library
    traceback, and an --out directory lost the whole run at its end."""
    argv = [str(tmp_path) if a == "DIR" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        _script(name, monkeypatch).main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and words in err, err


def test_quick_leaves_the_flags_given_alone():
    """--quick replaced flags given with it: `--quick --sizes 1,2 --repeats 5` timed N = 1, 4
    at 3 repeats without a word."""
    from benchmarks import common
    from hyperforget_jax.cli import ArgumentParser

    def parser():
        ap = ArgumentParser()
        ap.add_argument("--sizes", default="1,10,32")
        ap.add_argument("--repeats", type=int, default=7)
        ap.add_argument("--quick", action="store_true")
        ap.add_argument("--out", default=None)
        return ap

    quick = {"sizes": "1,4", "repeats": 3}
    args = common.parse_args(parser(), ["--quick", "--sizes", "1,2"], quick)
    assert (args.sizes, args.repeats) == ("1,2", 3)
    args = common.parse_args(parser(), [], quick)
    assert (args.sizes, args.repeats) == ("1,10,32", 7)
    with pytest.raises(SystemExit):     # the scripts' parser takes no abbreviation (--qui)
        common.parse_args(parser(), ["--qui"], quick)


def test_out_under_the_home_of_no_user_is_a_usage_error(capsys):
    """`--out ~nosuchuser/x.json` ended in pathlib's RuntimeError traceback (exit 1)."""
    from benchmarks import common
    from hyperforget_jax.cli import ArgumentParser

    ap = ArgumentParser(prog="bench")
    ap.add_argument("--out", default=None)
    with pytest.raises(SystemExit) as info:
        common.parse_args(ap, ["--out", "~nosuchuser-hf/x.json"])
    assert info.value.code == 2
    assert "--out '~nosuchuser-hf/x.json': cannot expand '~nosuchuser-hf'" in \
        capsys.readouterr().err


def test_end_to_end_quick_yields_to_the_flags_given_beside_it(monkeypatch):
    """`--quick --epochs 3` trained the original for 1 epoch while its JSON recorded 3, and
    `--quick --gan` dropped the GAN rows."""
    bench = _script("bench_end_to_end", monkeypatch)
    args, cfg = bench.settings(["--quick", "--epochs", "3", "--gan"])
    assert cfg.epochs == 3 and args.gan is True
    args, cfg = bench.settings(["--quick"])
    assert cfg.epochs == 1 and args.gan is False and args.methods == "retrain,gradtau"
    args, cfg = bench.settings([])
    assert cfg.epochs == bench.train.TrainConfig().epochs and args.gan is True


def test_json_records_the_library_xla_options(monkeypatch):
    """The cnn figures depend on them (hyperforget_jax/xla.py); HYPERFORGET_XLA_OPTIONS=0 turns
    them off without a trace in XLA_FLAGS, so the record must say which ran."""
    from benchmarks import common
    from hyperforget_jax import xla

    monkeypatch.setitem(sys.modules, "torch", None)   # its version is not what is tested here
    assert common.machine_info()["xla_options"] == xla.compiler_options() is not None
    monkeypatch.setenv("HYPERFORGET_XLA_OPTIONS", "0")
    assert common.machine_info()["xla_options"] is None


def test_sampling_flops_count_the_shared_start_network_once(monkeypatch):
    """``sample_many`` shares θ₀ between the requests (vmap ``in_axes`` None): its encoding
    runs once per denoiser call, so N requests are less than N times one request's FLOPs (the
    count was exactly N times: GFLOP/s and % of peak ≈ 9 % high at N = 10 and 32 with the
    shipped DiHyFo-2). A stand-in denoiser whose work is the encoding of θ₀ (the real one
    takes seconds to compile)."""
    from types import SimpleNamespace as NS

    import jax.numpy as jnp

    bench = _script("bench_hyperforget_sampling", monkeypatch)
    encoder = NS(apply=lambda v, x, z, t, s, c: x * jnp.sum(z @ v["params"]["w"]))
    spec = NS(model=lambda: encoder, arch=NS(param_count=256, num_classes=10),
              weights=NS(change_size=8))
    w = {"w": jnp.ones((256, 64))}
    one, four = (bench.denoiser_flops(spec, w, n) for n in (1, 4))
    assert one < four < 2 * one, (one, four)


def test_hyperforget_row_times_the_request_prompt_included(monkeypatch):
    """The row's speed-up over Retrain: per request a user computes the prompt (the start
    network's losses over the training set) and samples, as the ``unlearn`` rows include their
    per-request work; the prompt was made once, outside the timed calls, and for class 3
    whatever ``--forget-class`` said."""
    from benchmarks import common
    from hyperforget_jax.hyperforget import dihyfo

    bench = _script("bench_end_to_end", monkeypatch)
    calls = []
    monkeypatch.setattr(common, "pretrained_dihyfo2", lambda splits, seed=0: ("net", "params"))
    monkeypatch.setattr(dihyfo, "make_prompt",
                        lambda net, params, train, classes: calls.append(classes) or "prompt")
    monkeypatch.setattr(dihyfo, "sample", lambda key, net, params, prompt: jax.numpy.zeros(2))
    run = bench.hyperforget_sampler(type("Splits", (), {"train": None}), (5,))
    run()
    run()
    assert calls == [(5,), (5,)]
    assert run.sample_s >= 0.0


@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 0), (0, 0)), ((2, 0), (0, 1))])
def test_conv_gradient_forms_compute_the_library_gradients(pads, monkeypatch):
    """Each form the script times in place of the library's gradients gives the same output and
    gradients as lax's convolution (odd sizes and uneven pads included: the tiles overhang),
    only while it is selected: the library's rules are back afterwards, even after an error."""
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from hyperforget_jax import layers

    bench = _script("conv_gradient_forms", monkeypatch)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 9, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 6, 5)) / 9, jnp.float32)
    conv = lambda f: lambda x, w: f(x, w, (1, 1), pads, dimension_numbers=bench.NHWC)
    want_y = conv(lax.conv_general_dilated)(x, w)
    assert bench.winograd_conv(x, w, pads).shape == want_y.shape
    np.testing.assert_allclose(bench.winograd_conv(x, w, pads), want_y, rtol=0, atol=2e-6)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(conv(f)(x, w)))
    want = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    rules = (layers._dx_tangent_cpu, layers._dw_tangent_cpu)
    for form in bench.FORMS:
        with bench.gradient_form(form):
            grads = jax.jit(jax.grad(loss(layers.conv_general_dilated), (0, 1)))
            got = grads(x, w)
            if jax.default_backend() == "cpu":   # the form is the one compiled: its convolutions
                n_conv = grads.lower(x, w).as_text().count("stablehlo.convolution")
                assert n_conv == {"library": 3, "winograd": 1}.get(form, 2), (form, n_conv)
        for g, r in zip(got, want):
            np.testing.assert_allclose(g, r, rtol=0, atol=5e-6 * float(jnp.abs(r).max()))
    assert (layers._dx_tangent_cpu, layers._dw_tangent_cpu) == rules
    with pytest.raises(RuntimeError), bench.gradient_form("winograd"):
        raise RuntimeError
    assert (layers._dx_tangent_cpu, layers._dw_tangent_cpu) == rules


def test_a_row_above_the_matmul_peak_is_flagged():
    # Under load the one long matmul call lost more than the short steps timed beside it, and
    # rows read 118-172 % "of peak" with no word.
    common = importlib.import_module("benchmarks.common")

    said = common.peak_understated([{"% of peak": 61.0}, {"% of peak": 149.0}], "% of peak")
    assert said.startswith("WARNING: 1 row(s) above 100 % of the matmul peak (up to 149 %)")
    assert common.peak_understated([{"% of peak": 99.0}], "% of peak") is None


def test_compile_stats_merges_this_runs_files_only(tmp_path, monkeypatch, capsys):
    """An earlier run's per-worker files in the same directory were merged into the table (3 s
    and 56 compiles for a run of 1 s and 27); an empty or missing directory printed "0 s, 0
    compiles" and exit 0."""
    from benchmarks import compile_stats as cs

    with pytest.raises(SystemExit) as e:
        cs.cli([str(tmp_path / "none")])
    assert e.value.code == 2 and "no out_*.json" in capsys.readouterr().err
    (tmp_path / "out_gw0.json").write_text('{"program": {"a": [1.0, 3]}, "test": {}}')
    monkeypatch.setenv("COMPILE_STATS_DIR", str(tmp_path))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    # (the plugin's log switch and loggers: not this test process's)
    import logging
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    from types import SimpleNamespace
    monkeypatch.setattr(cs, "logging", SimpleNamespace(
        getLogger=lambda name: logging.Logger(name), WARNING=logging.WARNING,
        ERROR=logging.ERROR))
    cs.pytest_configure(None)
    assert not list(tmp_path.glob("out_*.json"))


def test_efficiency_records_the_memory_of_every_config(monkeypatch, tmp_path):
    """The memory record kept the last config only (each config's entry written under the
    last config's name, after the list was parsed up front)."""
    import json

    bench = _script("bench_efficiency", monkeypatch)
    row = {"peak GFLOP/s": 1.0, "variant": "library", "% of peak": 1.0, "N": 1, "batch": 2,
           "ms/step": 1.0, "models·steps/s": 1.0, "GFLOP/s": 1.0, "vs library": 1.0}
    monkeypatch.setattr(bench, "bench", lambda n, b, args: ([dict(row)], {"n": n, "b": b}))
    out = tmp_path / "e.json"
    bench.main(["--configs", "1x2,3x4", "--out", str(out)])
    assert json.loads(out.read_text())["memory"] == {"1x2": {"n": 1, "b": 2},
                                                    "3x4": {"n": 3, "b": 4}}


@pytest.mark.parametrize("name, argv, words", [
    ("bench_end_to_end", ["--quick", "--methods", "foo"], "--methods: unknown 'foo'"),
    ("bench_end_to_end", ["--quick", "--forget-class", "12"], "forget class 12 does not exist"),
    ("bench_sweep", ["--quick", "--methods", "foo"], "invalid choice: 'foo'"),
    ("bench_gradtau_vs_torch", ["--quick", "--fraction", "1.5"],
     "--fraction 1.5: a request's share"),
    ("bench_gradtau_vs_torch", ["--quick", "--tau", "nan"], "--tau nan: pass a finite number")])
def test_bad_settings_are_refused_before_anything_trains(name, argv, words, monkeypatch,
                                                          capsys):
    """A wrong method name, forget class or request size was refused after the original (or
    a fleet) had trained: 20 s with --quick, minutes without; a NaN τ timed a NaN step
    (stop 64)."""
    from hyperforget_jax import train
    from hyperforget_jax.errors import HyperforgetError

    def no(*a, **k):
        raise AssertionError("trained before the settings were checked")

    monkeypatch.setattr(train, "fit", no)
    monkeypatch.setattr(train, "fit_fleet", no)
    bench = _script(name, monkeypatch)
    try:
        bench.main(argv)
    except SystemExit as e:
        assert e.code == 2
        assert words in capsys.readouterr().err
    except HyperforgetError as e:
        assert words in str(e)
    else:
        raise AssertionError("not refused")


def test_results_json_is_strict_json_and_tables_take_no_flags(tmp_path):
    """A NaN (a ratio without PyTorch) was written as the token NaN, which strict JSON parsers
    refuse; `tables.py --bogus` printed the tables, exit 0 (stop 64)."""
    import json

    from benchmarks import common, tables

    path = common.write_json("x", {"rows": [{"vs torch eager": float("nan")}]},
                             str(tmp_path / "x.json"))
    text = path.read_text()
    assert "NaN" not in text
    assert json.loads(text)["rows"] == [{"vs torch eager": None}]
    with pytest.raises(SystemExit) as e:
        tables.main(["--bogus"])
    assert e.value.code == 2
