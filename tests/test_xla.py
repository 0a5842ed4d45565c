"""hyperforget_jax.xla: the compiler options of the library's programs (Eigen instead of
YNNPACK kernels for XLA:CPU convolutions), how a user turns them off, and that they change
speed only: results equal XLA's defaults to float rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hyperforget_jax import data, train, xla
from hyperforget_jax.models import make_architecture

from conftest import assert_trees_close


def test_options_default_env_off_and_xla_flags_win(monkeypatch):
    monkeypatch.delenv("HYPERFORGET_XLA_OPTIONS", raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert xla.compiler_options() == xla.DEFAULTS
    for off in ("0", "false", "off"):
        monkeypatch.setenv("HYPERFORGET_XLA_OPTIONS", off)
        assert xla.compiler_options() is None
    monkeypatch.delenv("HYPERFORGET_XLA_OPTIONS")
    # A flag the user set in XLA_FLAGS is theirs: the library does not override it.
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert xla.compiler_options() is None


def test_options_go_to_the_cpu_compiler_only(monkeypatch):
    """The option is a field only XLA:CPU reads, and a PJRT plugin refuses a field its own
    DebugOptions lacks ("No such compile option", as this CPU does for one it does not know):
    with a GPU / TPU default backend the library's programs are plain ``jax.jit``s."""
    monkeypatch.delenv("HYPERFORGET_XLA_OPTIONS", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with pytest.raises(Exception, match="No such compile option"):
        jax.jit(lambda a: a + 1, compiler_options={"xla_not_an_option": "1"})(1.0)
    assert isinstance(xla.jit(jnp.sin), xla._Jitted)
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        assert xla.compiler_options() is None
        assert not isinstance(xla.jit(jnp.sin), xla._Jitted)


def _step(name):
    arch = make_architecture(name)
    cfg = train.TrainConfig(arch=name, lr=1e-3)
    tx = train.make_optimizer(cfg)
    state = train.init_state(arch, tx, jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.random((16, 28, 28, 1), np.float32)),
             jnp.asarray(rng.integers(0, 10, 16)))
    return train.make_train_step(arch.apply, tx), state, batch


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
def test_library_programs_use_them_and_results_match_xla_defaults(monkeypatch):
    monkeypatch.delenv("HYPERFORGET_XLA_OPTIONS", raising=False)
    step, state, batch = _step("cnn")
    ours = train.jit_step(step)                     # the library's compiled step
    plain = jax.jit(step)                           # XLA's defaults
    text = ours.lower(state, batch).compile().as_text()
    default_text = plain.lower(state, batch).compile().as_text()
    conv_in_ynn = lambda t: [l for l in t.split("\n")
                             if '"__ynn_fusion"' in l and "conv_general_dilated" in l]
    assert not conv_in_ynn(text) and "convolution(" in text
    # Same computation, other kernels: equal to float rounding after 3 steps.
    sa, sb = state, state
    for _ in range(3):
        sa, ma = plain(sa, batch)
        sb, mb = ours(jax.tree.map(jnp.copy, sb), batch)
    assert abs(float(ma["loss"]) - float(mb["loss"])) < 1e-5
    assert_trees_close(sa.params, sb.params, atol=1e-4)
    # Turned off, the library compiles with XLA's defaults again.
    monkeypatch.setenv("HYPERFORGET_XLA_OPTIONS", "0")
    off = train.jit_step(step).lower(state, batch).compile().as_text()
    assert bool(conv_in_ynn(off)) == bool(conv_in_ynn(default_text))


def test_dense_programs_compile_exactly_as_xla_defaults(monkeypatch):
    """Without convolutions the options change nothing: the same kernels, the same bits."""
    monkeypatch.delenv("HYPERFORGET_XLA_OPTIONS", raising=False)
    step, state, batch = _step("mlp")
    ours, plain = xla.jit(step), jax.jit(step)
    ynn = lambda f: f.lower(state, batch).compile().as_text().count('"__ynn_fusion"')
    assert ynn(ours) == ynn(plain)           # the dots stay with YNNPACK, as by default
    sa, _ = plain(state, batch)
    sb, _ = ours(state, batch)
    assert_trees_close(sa.params, sb.params, atol=0.0)


def test_library_programs_run_inside_a_users_jit_scan_and_grad(monkeypatch):
    """JAX takes compiler options on a top-level jit only: ``G.compute_tau``,
    ``train.mean_cross_entropy`` (and the HyperForget sampler) raised "compiler_options can
    only be passed to top-level jax.jit" inside a user's jit, scan or grad."""
    from hyperforget_jax.unlearn import gradtau as G
    monkeypatch.delenv("HYPERFORGET_XLA_OPTIONS", raising=False)
    arch = make_architecture("mlp", (8, 8, 1))
    params = arch.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((16, 8, 8, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, 16))
    ce = lambda p: train.mean_cross_entropy(arch, p, x, y)
    want = float(ce(params))
    assert float(jax.jit(ce)(params)) == pytest.approx(want, rel=1e-6)
    _, got = jax.lax.scan(lambda c, _: (c, ce(params)), 0.0, None, length=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert jax.tree.structure(jax.grad(ce)(params)) == jax.tree.structure(params)
    val = data.Dataset(np.asarray(x), np.asarray(y, np.int32), 10, "toy")
    tau = jax.jit(lambda p: G.compute_tau("val", arch, p, val))(params)
    assert float(tau) == pytest.approx(want, rel=1e-6)


def test_library_programs_can_be_copied(monkeypatch):
    # The wrapper that drops the compiler options inside a transformation forwarded every
    # missing attribute to itself before __init__ had run: copy / deepcopy of a program (or of
    # anything holding one) ended in RecursionError where jax.jit's copies fine.
    import copy

    monkeypatch.delenv("HYPERFORGET_XLA_OPTIONS", raising=False)
    f = xla.jit(lambda x: x + 1)
    for g in (copy.copy(f), copy.deepcopy(f)):
        assert float(g(jnp.float32(1))) == 2.0


def test_standard_promotion_enters_a_config_context_only_under_another_setting(monkeypatch):
    """Under a thread-local config context every jitted call takes JAX's slower dispatch path
    (``train_gan`` ran 10 % slower wrapped): the wrapper sets "standard" only when the caller
    set something else."""
    entered, real = [], jax.numpy_dtype_promotion
    monkeypatch.setattr(jax, "numpy_dtype_promotion", lambda v: entered.append(v) or real(v))
    setting = xla.standard_promotion(lambda: jax.config.jax_numpy_dtype_promotion)
    assert setting() == "standard" and entered == []
    with real("strict"):
        assert setting() == "standard"
    assert entered == ["standard"]
