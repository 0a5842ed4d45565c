"""Mean losses and their gradients over a batch, computed in chunks of examples on CPU.

A compiled gradient holds every example's saved activations at once: the ``cnn``'s gradient at
512 images has ≈ 150 MB of XLA temporaries. On XLA:CPU that costs twice: the temporaries are
allocated afresh on each call (the allocator hands buffers this large back to the OS, so each
call page-faults all of them), and the activations do not stay in cache between the forward and
the backward pass. Summing the per-example losses and gradients over chunks of a few dozen
examples inside one ``lax.scan`` keeps the temporaries small and reused: the ``cnn``'s gradient
at 512 images ran 2.4× faster in chunks of 32 (125 → 51 ms, no page faults; the MLP, whose
activations are small, is left whole; ``benchmarks/README.md`` §1).

The chunked sums are the same sums in another order (≈ 1e-7 relative, tested). Only CPU gets
them: the choice is made with ``lax.platform_dependent`` when the computation is lowered, and
GPUs and TPUs compute the whole batch at once, as before.

Chunking is valid only for losses that are a mean over independent examples (no batch
statistics), which is the ``loss_fn(params, batch) -> (B,)`` contract of the library's blocks
when every leaf of ``batch`` has the batch axis first. ``chunk``:

* ``None`` — the whole batch in one pass (the default of the public building blocks, whose
  ``loss_fn`` may be the user's);
* ``"auto"`` — :func:`auto_chunk`: chunks of ≈ ``AUTO_BUDGET_BYTES`` of saved activations (the
  library's own steps, whose loss is the per-example cross-entropy);
* an int — chunks of that many examples (the last chunk takes the remainder).
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .errors import ConfigError

# Saved activations per chunk that "auto" aims for, and the smallest chunk it picks. A chunk's
# temporaries are ≈ 1.2× its saved activations; 24 MiB keeps them under glibc's largest mmap
# threshold (32 MiB), so the allocator reuses them from call to call. Measured (512-image
# gradients of the cnn, 283 KB per example): chunks of 16 / 32 / 64 / 128 ran 54 / 51 / 51 /
# 67 ms, the whole batch 126 ms (only 128 and the whole batch page-fault); resnet18 (13 MB per
# example, batch 32): chunks of 8 ran best (493 ms; whole 588, chunks of 1 1,025). Below the
# budget the batch is left whole (the MLP: 8 KB per example; chunks were slower there).
AUTO_BUDGET_BYTES = 24 * 2**20
MIN_AUTO_CHUNK = 8


def per_example_losses(loss_fn: Callable, who: str = "loss_fn") -> Callable:
    """``loss_fn`` refusing, with a :class:`ConfigError`, a return value that is not one array
    of losses: a ``has_aux``-style ``(losses, aux)`` (or a model's ``(losses, updated
    batch_stats)``) failed in ``jnp.mean`` with a bare TypeError about tuples."""
    @functools.wraps(loss_fn)
    def checked(params, batch):
        values = loss_fn(params, batch)
        if not isinstance(values, (jax.Array, np.ndarray, np.generic, float, int)):
            raise ConfigError(
                f"{who} returned a {type(values).__name__}, not an array: it must return the "
                "per-example losses of shape (B,) alone (not (losses, aux)); compute metrics "
                "from the model outside it, and run BatchNorm in evaluation mode with "
                "batch_stats closed over (its updated statistics cannot come back out)")
        return values
    return checked


def batch_size(batch: Any) -> int | None:
    """The leading axis shared by every leaf of ``batch``, or None if the leaves disagree."""
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(batch)}
    if len(sizes) != 1 or None in sizes:
        return None
    return sizes.pop()


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


def saved_bytes_per_example(loss_fn: Callable, params: Any, batch: Any) -> int:
    """Bytes of activations the backward pass of ``mean(loss_fn(params, batch))`` saves per
    example: the growth of the VJP's residuals from 1 to 2 examples (shapes only, nothing
    runs)."""
    def residual_bytes(n):
        b = jax.tree.map(lambda a: jax.ShapeDtypeStruct((n,) + tuple(jnp.shape(a)[1:]),
                                                         jnp.result_type(a)), batch)
        vjp = jax.eval_shape(lambda p, b: jax.vjp(lambda q: jnp.mean(loss_fn(q, b)), p)[1],
                             _abstract(params), b)
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(vjp))
    return max(residual_bytes(2) - residual_bytes(1), 0)


def auto_chunk(loss_fn: Callable, params: Any, batch: Any,
               budget: int | None = None) -> int | None:
    """The chunk ``"auto"`` picks: the largest power of two whose saved activations fit in
    ``budget`` (default ``AUTO_BUDGET_BYTES``; the chunk is at least ``MIN_AUTO_CHUNK``), or
    None (the whole batch) when the batch fits, is too small to split, or its leaves do not
    share a batch axis."""
    budget = AUTO_BUDGET_BYTES if budget is None else budget
    n = batch_size(batch)
    if n is None or n <= MIN_AUTO_CHUNK:
        return None
    per_example = saved_bytes_per_example(loss_fn, params, batch)
    if per_example * n <= budget:
        return None
    fits = max(budget // max(per_example, 1), 1)
    chunk = max(1 << (int(fits).bit_length() - 1), MIN_AUTO_CHUNK)
    return chunk if chunk < n else None


def resolve_chunk(chunk: Any, loss_fn: Callable, params: Any, batch: Any) -> int | None:
    """``chunk`` as an int number of examples, or None for the whole batch (see the module
    docstring).

    Raises:
      ConfigError: ``chunk`` is not None / ``"auto"`` / a positive int, or it is an int and the
        leaves of ``batch`` do not share a batch axis.
    """
    if chunk is None:
        return None
    if isinstance(chunk, str):
        if chunk != "auto":
            raise ConfigError(f"chunk={chunk!r}: use None, 'auto' or a positive number of "
                              "examples")
        return auto_chunk(loss_fn, params, batch)
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ConfigError(f"chunk={chunk!r}: use None, 'auto' or a positive number of examples")
    chunk = int(chunk)      # (np.int64(4) was refused)
    n = batch_size(batch)
    if n is None:
        raise ConfigError("chunk= needs every leaf of the batch to have the batch axis first; "
                          "pass chunk=None to compute the batch whole")
    return chunk if chunk < n else None


def _chunks(batch: Any, chunk: int) -> tuple[Any, Any]:
    """``batch`` as (k full chunks stacked on a new leading axis, the remainder or None)."""
    n = batch_size(batch)
    k = n // chunk
    full = jax.tree.map(lambda a: a[:k * chunk].reshape((k, chunk) + a.shape[1:]), batch)
    rest = None if n == k * chunk else jax.tree.map(lambda a: a[k * chunk:], batch)
    return full, rest


def _at_least_f32(a) -> jnp.dtype:
    """The dtype sums of ``a`` accumulate in: float32, or ``a``'s when wider."""
    return jnp.promote_types(jnp.result_type(a), jnp.float32)


def _sum_loss(loss_fn, params, batch):
    """The chunk's summed loss, accumulated in at least float32: a bfloat16 loss summed chunk
    by chunk in bfloat16 drifted by several of its ulps (1.8% at chunks of 8 of 512) where the
    whole batch's mean is rounded once."""
    values = loss_fn(params, batch)
    return jnp.sum(values, dtype=_at_least_f32(values))


def _zero_loss(loss_fn, params, full):
    one = jax.tree.map(lambda a: a[0], full)
    return jnp.zeros((), jax.eval_shape(functools.partial(_sum_loss, loss_fn), params, one).dtype)


def varying_axes(tree: Any) -> frozenset:
    """The ``shard_map`` axes any leaf of ``tree`` varies over (empty outside ``shard_map``,
    under ``pmap`` and with ``check_vma=False``)."""
    out = frozenset()
    for leaf in jax.tree.leaves(tree):
        aval = jax.typeof(leaf)
        mat = getattr(aval, "manual_axis_type", None)
        out |= (mat.varying if mat is not None else frozenset(getattr(aval, "vma", ())))
    return out


def axis_names(axis_name: Any) -> tuple:
    """``axis_name`` (None, a name, or a tuple / list of names) as a tuple of names."""
    if axis_name is None:
        return ()
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def local_params(params: Any, batches: Any, axis_name: Any, who: str, none_means: str,
                 fix: str | None = None) -> Any:
    """``params`` made device-varying over the ``shard_map`` axes of ``axis_name`` (a name or a
    tuple of names) that ``batches`` are split over, so that their gradient is each device's
    own, for one ``pmean`` over ``axis_name`` afterwards.

    Under ``check_vma=True`` autodiff *sums* the gradient of replicated parameters over every
    axis the loss varies over, so the pmean returned n_devices × the mean (also for a batch
    split over two mesh axes with ``axis_name=("a", "b")``: a tuple was never cast). pmap,
    named vmap and ``check_vma=False`` carry no axes: ``params`` come back unchanged.

    Raises:
      ConfigError: the batches are split over an axis that ``axis_name`` does not name (its
        devices' gradients would be summed, not averaged); ``none_means``: what that does with
        ``axis_name=None``; ``fix``: what to do instead, for a caller that takes no
        ``axis_name`` (default: name the axes with it).
    """
    names = axis_names(axis_name)
    own = varying_axes(params)
    split = varying_axes(batches) - own
    missing = sorted(split - set(names))
    if missing:
        every = sorted(split | set(names))
        eg = every[0] if len(every) == 1 else tuple(every)
        given = " is None" if axis_name is None else f"={axis_name!r} does not name them all"
        fix = fix or (f"pass axis_name= naming every axis the batches are split over, e.g. "
                      f"axis_name={eg!r}")
        raise ConfigError(f"{who}: the batches are split over the shard_map axes "
                          f"{sorted(split)} but axis_name{given}: {none_means}; {fix}")
    # Every named axis, not only the split ones: pmean over a mix of device-varying and
    # replicated values is refused under check_vma (axis_name=("a", "b"), rows split over "a").
    cast = tuple(a for a in names if a not in own) if split else ()
    if not cast:
        return params
    return jax.tree.map(lambda p: jax.lax.pcast(p, cast, to="varying"), params)


def chunked_mean_value_and_grad(loss_fn: Callable, params: Any, batch: Any,
                                chunk: int | None) -> tuple[jax.Array, Any]:
    """(mean loss, its gradient) as sums over chunks of ``chunk`` examples, on any platform
    (None: the whole batch in one pass; a chunk of at least the batch's size is the whole
    batch, as :func:`resolve_chunk` makes it: 5 of 4 examples was an IndexError, 0 a
    ZeroDivisionError)."""
    if chunk is not None and not isinstance(chunk, str):
        chunk = resolve_chunk(chunk, loss_fn, params, batch)
    elif chunk is not None:
        raise ConfigError(f"chunk={chunk!r}: chunked_mean_value_and_grad takes None or a "
                          "positive number of examples ('auto': mean_value_and_grad)")
    if chunk is None:
        return jax.value_and_grad(lambda p: jnp.mean(loss_fn(p, batch)))(params)
    vg = jax.value_and_grad(functools.partial(_sum_loss, loss_fn))
    full, rest = _chunks(batch, chunk)
    out = jax.eval_shape(loss_fn, params, jax.tree.map(lambda a: a[0], full))
    loss_dtype, out = out.dtype, out.shape
    if tuple(out) != (chunk,):
        raise ConfigError(f"chunk={chunk}: loss_fn returned shape {tuple(out)} for {chunk} "
                          f"examples; chunks need per-example losses of shape ({chunk},) (a "
                          "scalar or per-token loss would be summed per chunk and divided by "
                          "the batch size); return one value per example, or pass chunk=None")

    def body(acc, b):
        return jax.tree.map(jnp.add, acc, vg(params, b)), None

    # The gradients too are summed in at least float32 (and rounded once, to the parameters'
    # dtype, at the end): bfloat16 parameters' gradients summed chunk by chunk in bfloat16
    # were 5x further from the exact gradient than the whole batch's (chunks of 8 of 512).
    zero = (_zero_loss(loss_fn, params, full),
            jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _at_least_f32(p)), params))
    axes = varying_axes((params, batch))
    if axes:    # under shard_map the chunk sums vary over these axes: so must the carry

        def vary(z):
            missing = tuple(sorted(axes - varying_axes(z)))
            return jax.lax.pcast(z, missing, to="varying") if missing else z
        zero = jax.tree.map(vary, zero)
    total, _ = jax.lax.scan(body, zero, full)
    if rest is not None:
        total = jax.tree.map(jnp.add, total, vg(params, rest))
    n = batch_size(batch)
    return ((total[0] / n).astype(loss_dtype),
            jax.tree.map(lambda t, p: (t / n).astype(jnp.result_type(p)), total[1], params))


def mean_value_and_grad(loss_fn: Callable, params: Any, batch: Any,
                        chunk: Any = "auto") -> tuple[jax.Array, Any]:
    """(mean loss, gradient) of ``loss_fn`` over ``batch``, in chunks on CPU (``chunk``: see
    the module docstring)."""
    c = resolve_chunk(chunk, loss_fn, params, batch)
    in_chunks = lambda c: lambda p, b: chunked_mean_value_and_grad(loss_fn, p, b, c)
    if c is None:
        return in_chunks(None)(params, batch)
    return jax.lax.platform_dependent(params, batch, cpu=in_chunks(c), default=in_chunks(None))


__all__ = ["AUTO_BUDGET_BYTES", "MIN_AUTO_CHUNK", "auto_chunk", "batch_size",
           "chunked_mean_value_and_grad", "mean_value_and_grad", "resolve_chunk",
           "saved_bytes_per_example"]
