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
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol,
                                   err_msg=jax.tree_util.keystr(path))
