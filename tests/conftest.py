"""Test set-up: 4 fake CPU devices for the pmap / sharded equivalence tests. This must run
before JAX initialises its backend, hence at conftest import time."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# On a GPU (JAX_PLATFORMS=cuda,cpu) JAX multiplies float32 matrices in TF32 by default, which
# rounds their inputs to 10 mantissa bits: two formulations of one computation then differ by
# 1e-5-1e-4 (an H200, 2026-12-04: 10 of the equivalence tests). The tests assert that the
# formulations compute the same thing, so they run at full float32 there; the library keeps
# JAX's default. XLA:CPU computes float32 in full either way.


def _xla_flags_known(flags: str) -> bool:
    """Whether this jaxlib's XLA takes ``flags`` in XLA_FLAGS: an unknown flag aborts every
    process at its first JAX call. Known for jaxlib 0.10; another jaxlib is asked in a probe
    process (once per test run: the workers inherit the answer in XLA_FLAGS)."""
    import importlib.metadata
    import subprocess
    import sys

    if importlib.metadata.version("jaxlib").startswith("0.10."):
        return True
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                           env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                           capture_output=True)
    return probe.returncode == 0


_ON_CPU = os.environ["JAX_PLATFORMS"].split(",")[0] in ("cpu", "")
if not _ON_CPU:
    os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
elif "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    # CI time: on CPU the suite spends most of its time compiling, and most of that in LLVM's
    # optimisation of the generated code. Level 0 skips it: the suite's pytest time fell from
    # 636 s to 435 s (clean clone, 2 cores, 2026-12-05). XLA's own HLO passes are unchanged,
    # but the machine code rounds differently: 3 epochs of a small GAN, whose training
    # amplifies rounding, end 6e-3 apart at the two levels (3e-2 with the mixture prior;
    # benchmarks/xla_rounding.py). The
    # tests compare formulations compiled alike, within one process or between processes with
    # the same flags, so their tolerances hold. Users' programs and the benchmarks keep XLA's
    # default; name the flag in XLA_FLAGS to run the tests at another level.
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

_FASTER_COMPILES = "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
if (_ON_CPU and "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]
        and _xla_flags_known(_FASTER_COMPILES)):
    # CI time, again: at level 0 most of a compilation is XLA:CPU's fusion emitters (each
    # fusion through MLIR to LLVM IR). The older emitters, still in XLA, compile the same HLO
    # ≈ 3× faster, and one LLVM module per program instead of parts for parallel threads
    # (2 cores, 2 workers: no thread to spare) saves more on the cnn (a fresh fit + ∇τ on one
    # core, backend compile: gpt_mlp 3.1 → 1.0 → 0.95 s, cnn 6.9 → 2.2 → 1.5 s;
    # benchmarks/compile_flags.py, 2026-12-07). The suite's pytest time:
    # 1042 s → 550 s (2026-12-07, README's Tests). The programs may round differently
    # (benchmarks/xla_rounding.py), and the same argument as above holds; the tests of the bits
    # a user gets compile with XLA's default emitters (:func:`default_emitters`). Name
    # xla_cpu_use_fusion_emitters in XLA_FLAGS to choose yourself.
    os.environ["XLA_FLAGS"] += " " + _FASTER_COMPILES
# CI time: one persistent XLA compilation cache per test run, shared by the xdist workers and
# every subprocess they start (both inherit the environment set here, in the controlling
# process, before they start), so a program is not compiled again by each worker and each
# killed-and-resumed victim. Entries are keyed by the HLO, the compile options and XLA_FLAGS,
# so programs never mix. The kill-and-resume test of `hyperforget train` removes it from its
# victims' environment, to keep proving that a freshly compiling process resumes exactly
# (tests/test_reliability_resume.py). Removed when the run ends (pytest_unconfigure).
_OWN_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _OWN_XLA_CACHE = tempfile.mkdtemp(prefix="hyperforget-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_XLA_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


# The Ctrl-C tests send SIGINT to CLI subprocesses. A test run started as a background job of a
# non-interactive shell inherits SIGINT as *ignored*, which exec passes on, and Python then never
# raises KeyboardInterrupt in those children. A Python-level handler is reset to the default by
# exec, so installing one here gives every child an ordinary Ctrl-C (no preexec_fn, no fork).
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_unconfigure(config):
    if _OWN_XLA_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_XLA_CACHE, ignore_errors=True)


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hyperforget_jax import data  # noqa: E402


@pytest.fixture(scope="session")
def mnist_splits():
    return data.make_splits(data.load_mnist5k())


@pytest.fixture(scope="session")
def digits_splits():
    return data.make_splits(data.load_digits())


def devices_or_skip(n: int):
    """The first ``n`` devices for a multi-device equivalence test. On CPU the conftest fakes 4,
    so fewer is a broken set-up and fails; on an accelerator with fewer than ``n`` chips (one
    GPU) the test is skipped, and the rest of the suite still runs there."""
    ds = jax.devices()
    if len(ds) < n:
        if ds[0].platform == "cpu":
            raise AssertionError(f"needs {n} devices, {len(ds)} present: the conftest fakes "
                                 "4 CPU devices through XLA_FLAGS before JAX starts")
        pytest.skip(f"needs {n} {ds[0].platform} devices, {len(ds)} present")
    return ds[:n]


def exact_on_cpu_only(measured: str):
    """Marks a test whose tolerance holds on XLA:CPU but not on a GPU, where two differently
    compiled programs round differently: expected to fail there (not strict), with what was
    measured. On CPU the test asserts as written."""
    return pytest.mark.xfail(jax.default_backend() != "cpu", strict=False,
                             reason=f"exact on XLA:CPU only; on GPU: {measured}")


def default_emitters(monkeypatch):
    """For a test of bits a user gets from XLA:CPU: the library's programs compiled from here
    on (to the end of the test) with XLA's default fusion emitters, where the test process uses
    the older ones (see the top of this file), and the registered models' program stores
    emptied for the test, so no program compiled before is reused."""
    if "--xla_cpu_use_fusion_emitters=false" not in os.environ["XLA_FLAGS"].split():
        return
    from hyperforget_jax import models, xla

    opts = {**(xla.compiler_options() or {}), "xla_cpu_use_fusion_emitters": True}
    monkeypatch.setattr(xla, "compiler_options", lambda: opts)
    monkeypatch.setattr(models, "_REGISTERED_PROGRAMS", {})


def host_params(shapes, seed=0, std=None, zero=()):
    """Parameters of the ``jax.ShapeDtypeStruct`` pytree ``shapes`` drawn with NumPy on the host,
    at the scales of Flax's default initialisers: zero biases, unit norm scales, other leaves
    normal with ``std`` (default LeCun's 1/sqrt(fan_in)); leaves whose path contains one of
    ``zero`` are zeros. For tests that need a well-scaled state, not Flax's draws: compiled
    or op by op, a model's init can cost more on XLA:CPU than the calls the test makes."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['bias']") or any(z in name for z in zero):
            return np.zeros(s.shape, s.dtype)
        if name.endswith("['scale']"):
            return np.ones(s.shape, s.dtype)
        sd = 1 / np.sqrt(np.prod(s.shape[:-1])) if std is None else std
        return (sd * rng.standard_normal(s.shape)).astype(s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def toy_model(n=16, seed=0, name="gpt_mlp"):
    """A registered model on 8×8×1 inputs, its parameters, and a maker of random (x, y) batches
    of n."""
    from hyperforget_jax import models

    arch = models.make_architecture(name, (8, 8, 1))
    params = arch.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    batch = lambda: (jnp.asarray(rng.random((n, 8, 8, 1), np.float32)),
                     jnp.asarray(rng.integers(0, 10, n), jnp.int32))
    return arch, params, batch


class ForeignTensor:
    """Another framework's tensor (a torch DataLoader's batches): numpy reads it through
    ``__array__``, and its ``dtype`` is not one numpy or JAX can interpret."""

    class _Dtype:
        def __repr__(self):
            return "foreign.float32"

    def __init__(self, a):
        self._a = np.asarray(a)
        self.shape, self.dtype = self._a.shape, self._Dtype()

    def __array__(self, dtype=None, copy=None):
        return self._a if dtype is None else self._a.astype(dtype)

    def __len__(self):
        return len(self._a)


def assert_trees_close(a, b, atol=1e-5, rtol=0.0):
    assert len(jax.tree.leaves(a)) == len(jax.tree.leaves(b)), "the trees differ in structure"
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol,
                                   err_msg=jax.tree_util.keystr(path))


def tiny_hyperspec(arch, variant="dihyfo2", forget_class=None):
    """A 1-layer, 16-wide HyperForget spec (T = 10) for tests that never train it: the output
    layer is diffused, single-class requests only."""
    from hyperforget_jax import params as P_
    from hyperforget_jax.hyperforget import denoiser as DN
    from hyperforget_jax.hyperforget import dihyfo as H
    from hyperforget_jax.hyperforget.weightspace import WeightSpace

    shapes = tuple(s.shape for s in P_.param_spans(arch.param_shapes()))
    ws = WeightSpace(shapes, True, (1.0,) * len(shapes),
                     (0.0,) * (len(shapes) - 2) + (1.0, 1.0))
    n = 3 if variant == "dihyfo1" else 4
    return H.HyperSpec(variant, arch, ws,
                       DN.DenoiserConfig(num_layers=1, width=16, num_heads=2, num_freqs=8,
                                         tokens="units"),
                       forget_class, num_train_steps=10, scalar_mean=(0.0,) * n,
                       scalar_std=(1.0,) * n, default_targets=((1, 5.0, 0.0),))


def save_zero_hypernet(path, spec, meta=None) -> None:
    """Saves a hypernetwork of ``spec`` with zero weights, as ``hyperforget hypertrain`` would
    (``meta``: what it records, e.g. its corpus's data)."""
    from hyperforget_jax.hyperforget import denoiser as DN
    from hyperforget_jax.hyperforget import dihyfo as H

    shapes = DN.param_shapes(spec.model())
    H.save_hypernet(path, H.Hypernet(spec, jax.tree.map(lambda l: np.zeros(l.shape, l.dtype),
                                                        shapes)), meta)


class CompileCounter:
    """Counts XLA backend compilations inside a ``with`` block (not Python-level caches)."""

    def __enter__(self):
        self.n = 0

        def listener(event, duration, **kwargs):
            if event == "/jax/core/compile/backend_compile_duration":
                self.n += 1

        self._listener = listener
        jax.monitoring.register_event_duration_secs_listener(listener)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def load_experiment(name: str):
    """Imports ``experiments/<name>.py`` (the experiments folder is not a package)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
