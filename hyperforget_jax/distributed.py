"""Multi-process data parallelism on a real distributed runtime (``jax.distributed``).

The same program runs once per process (one process per host, or several on one machine); each
process feeds its own slice of every global batch and all of them hold the replicated state::

    from hyperforget_jax import distributed as dist
    dist.initialize("10.0.0.1:1234", num_processes=2, process_id=i)   # before any JAX work
    mesh = dist.global_mesh()                                           # all devices, ("data",)
    step = dist.data_parallel_gradtau_step(arch.apply, tx, mesh)
    state = dist.replicate(state, mesh)
    fb = dist.global_batch(local_forget_batch, mesh)    # this process's rows → one global array
    rb = dist.global_batch(local_retain_batch, mesh)
    state, metrics = step(state, fb, rb, tau, alpha)    # XLA all-reduces the gradients
    params = dist.fetch(state.params)                   # host numpy, identical on every process

On CPU the cross-process all-reduce goes through gloo over TCP
(``jax_cpu_collectives_implementation="gloo"``, set by :func:`initialize`); on GPU it is NCCL and
on TPU the ICI/DCN network, with no change to this code: only the coordinator address, the
process count and id (or the cluster's auto-detection: Slurm, Open MPI, Cloud TPU) differ.
"""

from __future__ import annotations

import numbers
import socket
from typing import Any, Callable

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hyperforget_jax import train
from hyperforget_jax.errors import ConfigError


def free_port() -> int:
    """A TCP port free on localhost right now (for a local coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, cpu_collectives: str = "gloo",
               initialization_timeout: int = 60, **kwargs: Any) -> None:
    """``jax.distributed.initialize`` with CPU collectives enabled.

    Must be called before any JAX computation. With no arguments JAX auto-detects the cluster
    (Cloud TPU, Slurm, Open MPI); otherwise pass all three of ``coordinator_address``
    (``"host:port"`` of process 0), ``num_processes`` and ``process_id``.

    Args:
      coordinator_address: ``host:port`` of process 0.
      num_processes: total number of processes.
      process_id: this process's rank in ``[0, num_processes)``.
      cpu_collectives: the CPU collectives implementation (``"gloo"``; ``"mpi"`` needs an MPI
        library); ignored by GPU/TPU backends.
      initialization_timeout: seconds to wait for the other processes.
      **kwargs: passed to ``jax.distributed.initialize``.

    Raises:
      ConfigError: inconsistent process arguments.
    """
    given = [a is not None for a in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError("distributed.initialize: pass coordinator_address, num_processes and "
                          "process_id together, or none of them (cluster auto-detection)")
    if num_processes is not None:
        # Plain integers first: "2" or 2.5 passed int() here and failed in JAX after the
        # collectives setting had changed; num_processes 0 blamed process_id.
        for name, v, low in (("num_processes", num_processes, 1), ("process_id", process_id, 0)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
                raise ConfigError(f"distributed.initialize: {name} must be an integer >= "
                                  f"{low}, got {v!r}")
        if not process_id < num_processes:
            raise ConfigError(f"distributed.initialize: process_id {process_id} is outside "
                              f"[0, {num_processes}); use a rank below num_processes")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=initialization_timeout, **kwargs)


def global_mesh() -> Mesh:
    """A 1-D ``("data",)`` mesh over every device of every process (Auto axes). Every process
    must have the same number of devices: the batch scheme (:func:`global_batch`, process
    ``i`` passing rows ``[i·b, (i+1)·b)``) splits the global batch evenly over processes."""
    if jax.local_device_count() * jax.process_count() != jax.device_count():
        # (JAX's "Unable to compute global_shape due to non-uniform sharding. Specify global
        # shape directly", which global_batch cannot)
        raise ConfigError(f"distributed: every process needs the same number of devices; this "
                          f"one has {jax.local_device_count()} of {jax.device_count()} over "
                          f"{jax.process_count()} processes (set each process's device count "
                          "alike, e.g. CUDA_VISIBLE_DEVICES)")
    return train.data_mesh(jax.devices())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A pytree held identically by every process → global arrays replicated over ``mesh``."""
    train.check_mesh(mesh, "distributed.replicate")
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def global_batch(local: Any, mesh: Mesh) -> Any:
    """This process's rows of a batch → global arrays sharded along ``"data"``.

    Process ``i`` passes rows ``[i·b, (i+1)·b)`` of the global batch (``b`` = global batch /
    process count, divisible by the local device count); the global array is their
    concatenation in process order. The same placement the mesh-aware drivers use
    (``train.global_rows``)."""
    return train.global_rows(local, mesh)


def fetch(tree: Any) -> Any:
    """Global arrays → host numpy: a replicated one's copy on this process, a sharded one whole
    when this process holds all of it.

    Raises:
      ConfigError: a sharded array spread over other processes too (it returned device 0's
        shard alone: a quarter of a batch's per-example outputs on 4 devices, without a word);
        gather it with ``jax.experimental.multihost_utils.process_allgather``.
    """
    def one(x):
        if not isinstance(x, jax.Array) or x.sharding.is_fully_replicated:
            return np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
        if x.is_fully_addressable:
            return np.asarray(x)
        raise ConfigError(f"fetch: an array of shape {x.shape} sharded over processes; this "
                          "process holds part of it: gather it with jax.experimental."
                          "multihost_utils.process_allgather(x, tiled=True)")
    return jax.tree.map(one, tree)


def data_parallel_gradtau_step(apply_fn: Callable, tx: optax.GradientTransformation,
                               mesh: Mesh) -> Callable:
    """The ∇τ step jitted over ``mesh``: state, τ, α replicated, both batches sharded along
    ``"data"``; XLA inserts the cross-process all-reduce of losses and gradients, so the result
    equals the single-device step on the whole global batch."""
    from hyperforget_jax.unlearn import gradtau

    return gradtau.sharded_gradtau_step(gradtau.make_gradtau_step(apply_fn, tx), mesh)
