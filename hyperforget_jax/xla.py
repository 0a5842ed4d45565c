"""The XLA options every program the library compiles uses, and ``jit`` that applies them.

XLA:CPU (jaxlib 0.10) hands convolutions, dots and reductions to YNNPACK by default. On this
project's 2-core x86 machine its convolutions keep about 1.3 cores busy; listing only dots and
reductions in ``xla_cpu_experimental_ynn_fusion_type`` leaves the convolutions to XLA's Eigen
kernels, which occupy both cores: the cnn's gradient runs 1.8× faster (batch 512). Programs
without convolutions keep XLA's default kernels and give the same bits (tested), and
convolution results agree with the defaults to float rounding (≈ 1e-6 relative;
tests/test_xla.py; benchmarks/README.md, §1).

The option goes to each compiled program (``jax.jit(..., compiler_options=...)``), not to the
process: a user's own programs and ``XLA_FLAGS`` are untouched. It is a field of XLA's
``DebugOptions`` that only the CPU compiler reads, so it is passed only when JAX's default
backend is the CPU: each PJRT plugin checks every option against its own ``DebugOptions``
("No such compile option" for a field it lacks), and a GPU / TPU plugin built from another XLA
than jaxlib's would have refused every library program for an option it ignores anyway (GPU /
TPU compilation was not run here: no accelerator was available). ``jax.pmap`` takes no
compiler options, so ``pmap`` steps keep XLA's default. To turn it off, set
``HYPERFORGET_XLA_OPTIONS=0``; a flag named in ``XLA_FLAGS`` wins over the library's value
for it.

JAX accepts ``compiler_options`` on a top-level ``jax.jit`` only: called inside a user's
``jax.jit`` / ``lax.scan`` / ``eval_shape`` / ``grad`` (or any other transformation), a library
program runs as a plain ``jax.jit``: compiled as part of the caller's program with the caller's
options, or (under a top-level ``jax.vmap``) with XLA's defaults.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable

import jax

try:                                          # JAX's own test for "not inside a transformation"
    from jax._src.core import trace_state_clean as _top_level
except ImportError:  # pragma: no cover - a JAX without it: the options always (as before)
    _top_level = lambda: True

# Dots and reductions stay with YNNPACK (XLA's default); convolutions go to Eigen.
DEFAULTS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options() -> dict[str, str] | None:
    """The options :func:`jit` passes now: ``DEFAULTS`` less any flag set in ``XLA_FLAGS``,
    or None when ``HYPERFORGET_XLA_OPTIONS=0`` or the default backend is not the CPU."""
    if os.environ.get("HYPERFORGET_XLA_OPTIONS", "1").strip() in ("0", "false", "off"):
        return None
    if jax.default_backend() != "cpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    opts = {k: v for k, v in DEFAULTS.items() if f"--{k}" not in flags}
    return opts or None


class _Jitted:
    """A ``jax.jit`` with compiler options at the top level and without them when called inside
    a transformation (where JAX refuses them: "can only be passed to top-level jax.jit").
    Other attributes (``lower``, ``trace``, ...) are the top-level function's."""

    def __init__(self, fun: Callable, kwargs: dict, opts: dict):
        self._top = jax.jit(fun, compiler_options=opts, **kwargs)
        self._nested = jax.jit(fun, **kwargs)

    def __call__(self, *args, **kwargs):
        return (self._top if _top_level() else self._nested)(*args, **kwargs)

    def __getattr__(self, name):
        if name in ("_top", "_nested"):   # not set yet (copy / pickle build a bare instance)
            raise AttributeError(name)
        return getattr(self._top, name)


def jit(fun: Callable, **kwargs: Any):
    """``jax.jit(fun, **kwargs)`` with :func:`compiler_options` (unless the caller passes its
    own ``compiler_options``) when called at the top level; inside a user's ``jax.jit``,
    ``lax.scan`` or other transformation, the plain ``jax.jit(fun, **kwargs)``."""
    if "compiler_options" not in kwargs:
        opts = compiler_options()
        if opts:
            return _Jitted(fun, kwargs, opts)
    return jax.jit(fun, **kwargs)


def standard_promotion(fun: Callable) -> Callable:
    """``fun`` run under ``jax.numpy_dtype_promotion("standard")``, whatever the caller set.

    Under a caller's ``jax_numpy_dtype_promotion="strict"`` optax's Adam (``1 - b1**count``: a
    Python float and an int32) and ∇τ's own steps raised a ``TypePromotionError`` from deep
    inside a step. Strict mode only refuses promotions, it never changes a result, so the
    training and unlearning entry points run under JAX's default and give the bits they give
    without it (the caller's model is traced under it too)."""

    @functools.wraps(fun)
    def run(*args: Any, **kwargs: Any) -> Any:
        strict = jax.config.jax_numpy_dtype_promotion != "standard"
        # jax_numpy_rank_promotion="raise" too (it only refuses implicit broadcasts, never
        # changes a result): the corpus build and hypernetwork training broadcast (N, K) by
        # (K,) and failed with JAX's ValueError from deep inside (stop 63).
        ranked = jax.config.jax_numpy_rank_promotion == "raise"
        if not strict and not ranked:
            # Entered only when needed: under a thread-local config context every jitted call
            # takes JAX's slower dispatch path (train_gan measured 10 % slower).
            return fun(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            if strict:
                stack.enter_context(jax.numpy_dtype_promotion("standard"))
            if ranked:
                stack.enter_context(jax.numpy_rank_promotion("allow"))
            return fun(*args, **kwargs)

    return run
