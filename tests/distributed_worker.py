"""One process of the 2-process data-parallel ∇τ run (started by ``test_distributed.py``).

    python tests/distributed_worker.py PROCESS_ID NUM_PROCESSES PORT OUT.npz SAVED

Every process reads the params checkpoint ``SAVED`` (written by the test, as every process of a
pod reads one trained model) onto its own device, builds the same problem (:func:`problem`),
feeds its own rows of every global batch, runs ``STEPS`` data-parallel ∇τ steps and writes the
final parameters (flat) and what it read to ``OUT.npz``; then it trains with the streamed
driver ``train.fit_stream`` on its own rows of the same batches (:func:`stream_problem`). The
test runs both in one process on the whole batches and compares.
"""

from __future__ import annotations

import sys

import numpy as np

ARCH, STEPS, BATCH, TAU, ALPHA, TOTAL = "mlp", 3, 32, 3.0, 0.3, 100


def problem():
    """(arch, tx, initial params, [(forget_batch, retain_batch)] * STEPS), all deterministic."""
    import jax

    from hyperforget_jax.models import make_architecture
    from hyperforget_jax.unlearn import gradtau

    arch = make_architecture(ARCH)
    tx = gradtau.make_gradtau_optimizer(TOTAL)
    params = jax.tree.map(np.asarray, arch.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(STEPS):
        def b():
            return (rng.random((BATCH, 28, 28, 1), np.float32),
                    rng.integers(0, 10, BATCH).astype(np.int32))
        batches.append((b(), b()))
    return arch, tx, params, batches


def stream_problem():
    """(arch, cfg, [(x, y)] * 4): the streamed-training problem (G.pt's MLP, random data)."""
    from hyperforget_jax import train
    from hyperforget_jax.models import make_architecture

    rng = np.random.default_rng(1)
    batches = [(rng.random((BATCH, 28, 28, 1), np.float32),
                rng.integers(0, 10, BATCH).astype(np.int32)) for _ in range(4)]
    cfg = train.TrainConfig(arch="gpt_mlp", epochs=1, lr=1e-2, seed=3)
    return make_architecture("gpt_mlp"), cfg, batches


def main(pid: int, nproc: int, port: int, out: str, saved: str) -> None:
    from hyperforget_jax import distributed as dist

    dist.initialize(f"127.0.0.1:{port}", nproc, pid, initialization_timeout=40)

    import jax
    import jax.numpy as jnp

    from hyperforget_jax import params as P_
    from hyperforget_jax import train
    from hyperforget_jax.checkpoint import load_params

    loaded, _ = load_params(saved, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    arch, tx, params, batches = problem()
    mesh = dist.global_mesh()
    step = dist.data_parallel_gradtau_step(arch.apply, tx, mesh)
    state = dist.replicate(train.init_state(arch, tx, None, params), mesh)
    rows = slice(pid * BATCH // nproc, (pid + 1) * BATCH // nproc)
    for fb, rb in batches:
        local = lambda b: (b[0][rows], b[1][rows])  # noqa: E731
        state, m = step(state, dist.global_batch(local(fb), mesh),
                        dist.global_batch(local(rb), mesh), jnp.float32(TAU),
                        jnp.float32(ALPHA))
    flat = np.asarray(P_.flatten(dist.fetch(state.params)))
    s_arch, s_cfg, s_batches = stream_problem()
    streamed, _ = train.fit_stream(s_arch, [(x[rows], y[rows]) for x, y in s_batches], s_cfg,
                                   mesh=mesh)
    np.savez(out, flat=flat, loss=float(np.asarray(m["loss"].addressable_data(0))),
             stream_flat=np.asarray(P_.flatten(dist.fetch(streamed.params))),
             process_count=jax.process_count(), device_count=jax.device_count(),
             loaded=np.asarray(loaded["w"]),
             loaded_here=list(loaded["w"].devices()) == jax.local_devices()[:1])
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
