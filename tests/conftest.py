"""Test set-up: 4 fake CPU devices for the pmap / sharded equivalence tests. This must run
before JAX initialises its backend, hence at conftest import time."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hyperforget_jax import data  # noqa: E402


@pytest.fixture(scope="session")
def mnist_splits():
    return data.make_splits(data.load_mnist5k())


@pytest.fixture(scope="session")
def digits_splits():
    return data.make_splits(data.load_digits())


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


def save_zero_hypernet(path, spec) -> None:
    """Saves a hypernetwork of ``spec`` with zero weights, as ``hyperforget hypertrain`` would."""
    from hyperforget_jax.hyperforget import denoiser as DN
    from hyperforget_jax.hyperforget import dihyfo as H

    shapes = DN.param_shapes(spec.model())
    H.save_hypernet(path, H.Hypernet(spec, jax.tree.map(lambda l: np.zeros(l.shape, l.dtype),
                                                        shapes)))