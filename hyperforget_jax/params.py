"""Parameters as data: pytree ↔ flat vector, per-tensor spans and G.pt tokenisation.

The flat order is the pytree's leaf order (``jax.tree.leaves``: sorted dict keys), the same
order every function here uses, so ``unflatten(flatten(p), p)`` is the identity and a flat vector
sampled by the hypernetwork maps back onto the classifier's tensors.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax.errors import ArchitectureError, ConfigError

Params = Any


class TensorSpan(NamedTuple):
    """Where one tensor lives in the flat vector."""

    path: str
    shape: tuple[int, ...]
    start: int
    stop: int


class Chunk(NamedTuple):
    """One G.pt token: a slice ``[start, stop)`` of the flat vector inside a single tensor."""

    tensor: int
    start: int
    stop: int


def param_count(params: Params) -> int:
    return sum(int(np.prod(jnp.shape(l))) for l in jax.tree.leaves(params))


def param_spans(params: Params) -> list[TensorSpan]:
    """One span per tensor, in flat order. Works on arrays or ``ShapeDtypeStruct`` leaves."""
    spans, start = [], 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        shape = tuple(jnp.shape(leaf))
        size = int(np.prod(shape))
        spans.append(TensorSpan(jax.tree_util.keystr(path), shape, start, start + size))
        start += size
    return spans


def flatten(params: Params) -> jax.Array:
    """Concatenates every tensor into one 1-D vector (jit- and vmap-compatible), in the dtype
    the leaves promote to (float32 for float32 parameters with integer leaves).

    Raises:
      ArchitectureError: ``params`` hold no array (an empty pytree died in jnp's "Need at least
        one array to concatenate", which named neither the params nor the fix); an integer
        leaf that the vector's dtype cannot hold exactly (:func:`_check_exact_ints`).
    """
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ArchitectureError(f"cannot flatten {params!r:.60}: the pytree holds no array; "
                                "pass the model's parameters (e.g. state.params)")
    # Promoted over the leaves' own dtypes, a weak one (a Python float, jnp.asarray(0.1)) read
    # as its default: weakly typed, a float32 leaf took bfloat16 leaves' dtype and was rounded
    # (0.1234567 → 0.12353516), so unflatten(flatten(p), p) was not p.
    out = jnp.result_type(*(jnp.dtype(jnp.result_type(leaf)) for leaf in leaves))
    _check_exact_ints(params, out)
    return jnp.concatenate([jnp.ravel(leaf).astype(out) for leaf in leaves])


def _exact_range(dtype) -> tuple[int, int]:
    """The integers that ``dtype`` holds exactly: all of an integer dtype's, ±2^(mantissa + 1)
    of a float's (2^24 for float32)."""
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return int(info.min), int(info.max)
    m = 2 ** (jnp.finfo(dtype).nmant + 1)
    return -m, m


def _check_exact_ints(params: Params, out) -> None:
    """Refuses an integer leaf whose values the flat vector's dtype ``out`` cannot hold: a
    float32 vector rounded 2**24 + 1 to 2**24 without a word (and a uint32 value past 2^31
    wrapped in an int32 one). A leaf whose dtype fits (int8 / int16 in float32) is not read;
    one that may not fit is checked on its values, or refused when traced (its values are
    unknown). A tree of floating leaves only (every model's parameters) is not looked at."""
    lo, hi = _exact_range(out)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        # The leaf's own dtype: without x64, jnp.result_type reads a NumPy int64 / uint64 as
        # int32 / uint32, which passed an int-only tree whose 2**40 then wrapped to 0.
        dtype = (np.dtype(leaf.dtype) if isinstance(leaf, (np.ndarray, np.generic))
                 else jnp.result_type(leaf))
        if not jnp.issubdtype(dtype, jnp.integer):
            continue
        info = jnp.iinfo(dtype)
        if lo <= int(info.min) and int(info.max) <= hi:
            continue
        where = f"flatten: the {dtype} leaf {jax.tree_util.keystr(path) or '(root)'}"
        fix = ("keep integers out of the tree, or flatten them on their own (a tree of "
               "integer leaves stays integer)")
        if isinstance(leaf, jax.core.Tracer):
            # An optax state's int32 step count beside float32 moments is the common case:
            # outside jit the same call reads the count and takes it when it fits.
            raise ArchitectureError(f"{where} may hold integers that the {jnp.dtype(out).name} "
                                    f"vector cannot (outside [{lo}, {hi}]), and under jit its "
                                    f"values cannot be checked; call flatten outside jit (the "
                                    f"values are then checked), {fix}")
        v = np.asarray(leaf)
        bad = [int(b) for b in (v.min(), v.max()) if not lo <= int(b) <= hi] if v.size else []
        if bad:
            raise ArchitectureError(f"{where} holds {bad[0]}, which the {jnp.dtype(out).name} "
                                    f"vector cannot hold exactly (integers in [{lo}, {hi}] "
                                    f"only); {fix}")


def unflatten(flat: jax.Array, template: Params) -> Params:
    """Inverse of :func:`flatten`: cuts ``flat`` into tensors shaped like ``template``.

    Raises:
      ArchitectureError: if ``flat`` is not 1-D or its length differs from the template's
        parameter count.
    """
    n = param_count(template)
    if jnp.ndim(flat) != 1 or jnp.shape(flat)[0] != n:
        raise ArchitectureError(
            f"flat parameter vector has shape {tuple(jnp.shape(flat))} but the architecture "
            f"has {n} parameters; flatten parameters of the same architecture")
    leaves, treedef = jax.tree.flatten(template)
    out = [jnp.reshape(flat[s.start:s.stop], s.shape).astype(jnp.result_type(l))
           for s, l in zip(param_spans(template), leaves)]
    return jax.tree.unflatten(treedef, out)


def chunk_spans(params: Params, max_chunk: int = 1000) -> list[Chunk]:
    """G.pt tokenisation: every tensor is cut into consecutive chunks of at most ``max_chunk``
    values, never mixing two tensors (G.pt's MNIST MLP: 7,960 values → 11 tokens)."""
    chunks = []
    for t, s in enumerate(param_spans(params)):
        size = s.stop - s.start
        for k in range(math.ceil(size / max_chunk)):
            chunks.append(Chunk(t, s.start + k * max_chunk, min(s.stop, s.start + (k + 1) * max_chunk)))
    return chunks


def tokenize(flat: jax.Array, chunks: list[Chunk], max_chunk: int = 1000) -> jax.Array:
    """(..., P) flat vectors → (..., num_tokens, max_chunk) tokens, zero-padded."""
    if jnp.shape(flat)[-1] != chunks[-1].stop:
        # A longer vector lost its tail without a word (a shorter one failed in jnp.pad).
        raise ArchitectureError(f"tokenize: flat vectors of {jnp.shape(flat)[-1]} values for "
                                f"chunks covering {chunks[-1].stop}; flatten parameters of the "
                                "architecture the chunks were made for")
    toks = [jnp.pad(flat[..., c.start:c.stop],
                    [(0, 0)] * (flat.ndim - 1) + [(0, max_chunk - (c.stop - c.start))])
            for c in chunks]
    return jnp.stack(toks, axis=-2)


def detokenize(tokens: jax.Array, chunks: list[Chunk]) -> jax.Array:
    """(..., num_tokens, max_chunk) → (..., P): drops the padding of :func:`tokenize`."""
    return jnp.concatenate([tokens[..., i, : c.stop - c.start] for i, c in enumerate(chunks)],
                           axis=-1)


def stack_trees(trees: list[Params]) -> Params:
    """Stacks pytrees leaf-wise along a new leading axis (e.g. to build a fleet)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def tree_index(tree: Params, i: int) -> Params:
    """Member ``i`` of a stacked pytree (inverse of :func:`stack_trees`).

    Raises:
      ConfigError: a concrete ``i`` outside ``-n..n-1`` for ``n`` members (JAX clamps an
        index past the end: ``tree_index(fleet_of_3, 7)`` was member 2, a duplicate model).
    """
    leaves = jax.tree.leaves(tree)
    concrete = (isinstance(i, (int, np.integer)) and not isinstance(i, bool)) or (
        isinstance(i, (np.ndarray, jax.Array)) and not isinstance(i, jax.core.Tracer)
        and np.ndim(i) == 0 and np.issubdtype(np.asarray(i).dtype, np.integer))
    if leaves and concrete and np.ndim(leaves[0]) > 0:
        n = np.shape(leaves[0])[0]
        if not -n <= int(i) < n:
            raise ConfigError(f"tree_index: member {int(i)} of a stack of {n} (indices "
                              f"{-n}..{n - 1})")
    return jax.tree.map(lambda x: x[i], tree)


def committed(tree: Params, home: Any = None) -> Params:
    """``tree`` with every uncommitted array committed to the device it is on (no copy) and
    every numpy array put on the default device, committed; committed or sharded arrays and
    tracers stay as they are. Where the tree's committed arrays all sit on one device (or
    ``home`` names one: :func:`home_device` of the parameters), the uncommitted and numpy ones
    are committed there instead.

    JAX compiles a program once per placement of its arguments: parameters restored from disk
    (committed) and the same parameters fresh from ``fit`` (uncommitted) were two compilations
    of every program they reach (the CLI's Retrain beside a loaded original: each evaluation
    twice; ``unlearn`` from loaded parameters after one from ``fit``'s: the method's program
    again). Committed, both kinds share one executable, with the same bits. Parameters on
    another device than the default one (``jax.device_put(p, jax.devices()[1])``) beside fresh
    counters on the default one failed every program with JAX's "incompatible devices"."""
    home = home if home is not None else home_device(tree)

    def one(a):
        if isinstance(a, np.ndarray):
            a = jax.device_put(a)
        if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and not a.committed:
            return jax.device_put(a, home if home is not None else a.sharding)
        return a
    return jax.tree.map(one, tree)


def home_device(tree: Any) -> Any:
    """The one device that every committed array of ``tree`` sits on alone, or None (none is
    committed, or they are sharded / spread over several devices: left to the caller)."""
    devices = set()
    for a in jax.tree.leaves(tree):
        if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer) and a.committed:
            devices.add(frozenset(a.devices()))
    if len(devices) == 1 and len(next(iter(devices))) == 1:
        return next(iter(next(iter(devices))))
    return None


def refuse_traced(tree: Any, name: str) -> None:
    """Raises :class:`ConfigError` when a leaf of ``tree`` is a tracer: ``name`` is a host-side
    driver (its own compiled programs, Python loops, early stops, numpy results) and cannot
    run inside a caller's ``jax.jit`` / ``vmap`` / ``grad`` / ``scan``, where it failed deep
    inside with JAX's TracerArrayConversionError or ConcretizationTypeError."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree)):
        raise ConfigError(f"{name} runs its own compiled loops on the host and cannot be called "
                          "inside jax.jit / vmap / grad / scan (it was given traced "
                          "parameters); call it outside the transformation, on concrete arrays")


def all_finite(tree: Params) -> jax.Array:
    """True when every floating leaf is free of NaN and inf (a scalar bool, jit-compatible)."""
    leaves = [jnp.all(jnp.isfinite(l)) for l in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(l), jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def perturbed(params: Any, scale: float = 0.1, seed: int = 1) -> Any:
    """``params`` plus Gaussian noise of std ``scale`` on every floating leaf (its dtype
    kept), for checks of a model's *structure* that a special initialisation can hide: a
    zero-initialised head outputs 0 whatever follows it, a gate initialised to 0 hides the
    branch behind it."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    return jax.tree.unflatten(treedef, [
        a + (scale * jax.random.normal(k, np.shape(a), jnp.float32)).astype(jnp.result_type(a))
        if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a
        for a, k in zip(leaves, keys)])
