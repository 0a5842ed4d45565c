"""∇τ on streamed data: host batch pairs from an iterator instead of D_f / D_r on the device.

The in-memory runner (:func:`.gradtau_run.run_gradtau`, what ``unlearn("gradtau")`` calls)
puts D_f, D_r and the validation set on the device (replicated under a mesh) and gathers every
batch there. When the data does not fit, or arrives from a pipeline, :func:`run_gradtau_stream`
takes the batch pairs from the host, one compiled step per pair, with the same building blocks
(:func:`.gradtau.nabla_tau`, :func:`.gradtau.gradtau_tx`) and the same schedule: α and the
learning rate held per forget-epoch of N_f = ceil(|D_f| / B) pairs, the budget E from the sizes.
fed the runner's own batches it gives the runner's parameters (tested to 1e-5, also on a mesh).

    params, info = run_gradtau_stream(model, params, batches, n_forget=len(d_f),
                                      n_retain=len(d_r), tau=math.log(10))

``batches(epoch)`` yields that forget-epoch's ``(forget_batch, retain_batch)`` pairs, each an
``(x, y)`` of host arrays. Under ``jax.distributed`` with a mesh each process yields *its own
rows* of every global batch (assembled with ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
import numbers
import types
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import train, xla
from hyperforget_jax.checkpoint_checks import naming_non_finite_start
from hyperforget_jax.config import INT32_MAX
from hyperforget_jax.errors import ConfigError, DataError, NonFiniteError
from hyperforget_jax.models import _Programs, as_model
from hyperforget_jax.params import committed, refuse_traced
from hyperforget_jax.train_run import (_refuse_missing_outputs, check_sync_every,
                                       refuse_nonfinite_outputs)
from hyperforget_jax.unlearn import gradtau as G
from hyperforget_jax.unlearn.gradtau_run import _check_finite, per_example, refuse_overridden

Params = Any
Pair = tuple[Any, Any]


def stream_schedule(n_forget: int, n_retain: int, cfg: G.GradTauConfig) -> tuple[int, int, float,
                                                                                  bool]:
    """``(E, N_f, α₀, clamped)`` of a ∇τ run over |D_f| = ``n_forget`` and |D_r| = ``n_retain``:
    the in-memory runner's budget and α₀ (batches of ``min(cfg.batch_size, |set|)``)."""
    for n, what in ((n_forget, "n_forget"), (n_retain, "n_retain")):
        # Counts of samples: 2.5 or True set α₀ and the budget from a number no set has.
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise ConfigError(f"{what} must be an integer (the number of samples), got {n!r}; "
                              "pass len(d_f) / len(d_r)")
    if n_forget < 1 or n_retain < 1:
        raise ConfigError(f"∇τ needs a non-empty forget and retain set, got |D_f| = {n_forget}, "
                          f"|D_r| = {n_retain}")
    n_f = math.ceil(n_forget / min(cfg.batch_size, n_forget))
    n_r = math.ceil(n_retain / min(cfg.batch_size, n_retain))
    epochs = cfg.epochs if cfg.epochs is not None else G.budget_epochs(n_r, n_f, cfg.max_epochs)
    # Before α₀'s clamp warning: a refused request printed it too.
    G.refuse_zero_budget(epochs, cfg, n_forget, n_retain, "run_gradtau_stream")
    if cfg.alpha0 is not None:
        alpha0, clamped = float(cfg.alpha0), False
    else:
        alpha0, clamped = G.initial_alpha(n_forget, n_forget + n_retain, cfg.alpha_scale,
                                          cfg.alpha_max)
        if clamped:
            G.warn_clamped(n_forget, n_forget + n_retain, cfg.alpha_scale, cfg.alpha_max)
    return epochs, n_f, alpha0, clamped


def _step_program(model, n: int, tau_fn: Callable | None, mesh: Mesh | None,
                  chunk: str | None) -> Callable:
    loss_fn = train.per_example_ce(model.apply)

    def step(ts, gs, hp, fb, rb, tau_args):
        tx = G.gradtau_tx(hp["lr"], hp["weight_decay"], hp["final_lr_fraction"], hp["epochs"], n)
        gt = G.nabla_tau(loss_fn, G.alpha_schedule_fn(hp["alpha0"], hp["epochs"], n),
                         tau=0.0, tau_fn=tau_fn,
                         refresh_every=None if tau_fn is None else hp["refresh_steps"],
                         chunk=chunk)
        grads, gs, m = gt.update(ts.params, gs, fb, rb, *tau_args)
        ts, finite = train.apply_step(ts, grads, m["loss"], tx)
        return ts, gs, {"forget_loss": m["forget_loss"], "retain_loss": m["retain_loss"],
                        "tau": m["tau"], "finite": finite, "ascent": m["ascent"]}

    if mesh is None:
        return xla.jit(step, donate_argnums=0)
    m, axis = train.auto_mesh(mesh)
    repl, rows = NamedSharding(m, P()), NamedSharding(m, P(axis))
    return xla.jit(step, in_shardings=(repl, repl, repl, rows, rows, repl),
                   out_shardings=repl, donate_argnums=0)


_STEPS_ATTR = "__hyperforget_stream_steps__"


def _cached_step_program(model, n: int, tau_fn: Callable | None, mesh: Mesh | None,
                         chunk: str | None) -> Callable:
    """:func:`_step_program`, compiled once per (model, N_f, mesh, chunk) and reused by later
    calls (float hyperparameters are arguments of the program). With a constant τ the program
    is the model's own (:meth:`Architecture.program`). With ``tau_fn`` it closes over the
    caller's function, so it is kept *on that function* (as ``hf.as_model`` keeps a model's
    adapter on it): holding ``tau_fn`` reuses it, dropping it frees both, and no model-level or
    module-level cache keeps a user's function alive. A ``tau_fn`` that takes no attributes is
    compiled per call."""
    key = ("gradtau_stream_step", n, mesh, chunk)
    build = lambda: _step_program(model, n, tau_fn, mesh, chunk)
    if tau_fn is None:
        return model.program(key, build)
    if isinstance(tau_fn, types.MethodType):   # its __dict__ is the function's, for any self
        return build()
    # Kept with its owner: functools.wraps copies a function's __dict__ onto the wrapper, whose
    # steps then ran the wrapped tau_fn.
    owner, store = getattr(tau_fn, "__dict__", {}).get(_STEPS_ATTR, (None, None))
    if owner is not tau_fn:
        store = _Programs()
        try:
            object.__setattr__(tau_fn, _STEPS_ATTR, (tau_fn, store))
        except (AttributeError, TypeError):   # bound methods, objects with __slots__
            return build()
    # The program references ``model``, so its id is not reused while the entry lives.
    return store.get((id(model), *key), build)


def _refuse_unread(cfg: G.GradTauConfig, tau_fn: Callable | None, tau_args: tuple) -> None:
    """Refuses what the stream would drop without a word: τ comes from ``tau`` / ``tau_fn``, so
    a ``tau_mode`` other than the default is never read; a constant τ reads neither
    ``tau_args`` nor ``tau_refresh_epochs``."""
    default = G.GradTauConfig()
    if cfg.tau_mode != default.tau_mode:
        raise ConfigError(f"run_gradtau_stream takes τ from tau= or tau_fn= and would ignore "
                          f"config.tau_mode={cfg.tau_mode!r}; drop tau_mode and pass tau="
                          "math.log(num_classes) (chance) or tau_fn=gradtau.val_tau_fn(apply) "
                          "with tau_args=(val.x, val.y) (val)")
    if tau_fn is None and tau_args:
        raise ConfigError("run_gradtau_stream: tau_args are tau_fn's arguments, but a constant "
                          "tau= is given; drop tau_args, or pass tau_fn= instead of tau=")
    if tau_fn is None and cfg.tau_refresh_epochs != default.tau_refresh_epochs:
        raise ConfigError(f"run_gradtau_stream: config.tau_refresh_epochs="
                          f"{cfg.tau_refresh_epochs} refreshes τ with tau_fn, but a constant "
                          "tau= is never refreshed; drop tau_refresh_epochs, or pass tau_fn=")


@xla.standard_promotion
def run_gradtau_stream(arch: Any, params: Params,
                       batches: Callable[[int], Iterable[tuple[Pair, Pair]]], *,
                       n_forget: int, n_retain: int, config: G.GradTauConfig | None = None,
                       tau: float | None = None, tau_fn: Callable | None = None,
                       tau_args: tuple = (), mesh: Mesh | None = None,
                       input_shape: tuple | None = None, num_classes: int | None = None,
                       sync_every: int = 8) -> tuple[Params, dict]:
    """∇τ from streamed batch pairs; returns (params, info) like :func:`.gradtau_run.run_gradtau`.

    Args:
      arch: the model (anything ``hf.as_model`` takes).
      params: the original parameters (not modified).
      batches: ``batches(epoch) -> iterable of (forget_batch, retain_batch)``, each batch an
        ``(x, y)`` of host arrays; every forget-epoch must yield exactly N_f =
        ceil(n_forget / min(batch_size, n_forget)) pairs (the schedule counts them).
      n_forget, n_retain: |D_f| and |D_r|: they set the budget E and α₀ as in the runner.
      config: hyperparameters (default: the paper's); ``tau_mode`` is not used here (τ is
        ``tau`` or ``tau_fn``), so a non-default one is refused.
      tau: a constant τ (class removal: ``math.log(num_classes)``, the runner's default).
      tau_fn: ``tau_fn(params, *tau_args) -> scalar`` τ of the current model, refreshed every
        ``config.tau_refresh_epochs`` forget-epochs (the paper's τ:
        ``gradtau.val_tau_fn(model.apply)`` with ``tau_args=(val.x, val.y)``). The compiled
        step is kept on this function: pass the same one again to reuse it (a fresh
        ``val_tau_fn(...)`` per call compiles afresh).
      tau_args: device-resident arguments of ``tau_fn`` (replicated under a mesh).
      mesh: optional mesh: each batch is split along its data axis, the state replicated.
        Under ``jax.distributed`` each process yields its own rows of every global batch.
      input_shape, num_classes: passed to ``hf.as_model`` (e.g. ``"mlp"`` on 8×8 digits:
        ``input_shape=(8, 8, 1)``); an adapter already knows them.
      sync_every: wait for the device every this many steps (bounds the dispatch queue).

    Returns:
      The parameters and ``info``: ``steps``, ``epochs``, ``batches_per_epoch``, ``alpha0``,
      ``alpha_clamped``, ``tau`` (the value at each refresh, or the constant), per-epoch
      ``forget_loss`` / ``retain_loss`` / ``ascent_steps`` (as :func:`.run_gradtau`'s),
      ``tau_reached``: True when some step ran without the ascent, else None with a
      ``tau_reached_note`` (the runner measures the end's loss on D_f, which a stream does not
      hold: a class removal whose every step ascended may be far from forgotten).

    Raises:
      ConfigError: neither or both of ``tau`` / ``tau_fn``; a ``config.tau_mode`` other than
        ``"auto"``; ``tau_args`` or a ``config.tau_refresh_epochs`` other than 5 with a
        constant ``tau``; an epoch with the wrong number of pairs, a batch of more rows than
        ``min(config.batch_size, n)`` of its set (global rows), an epoch whose forget batches
        hold fewer rows than ``n_forget`` (the schedule is computed for the config's batches
        over the whole D_f), a local batch that does not split over the local devices.
      NonFiniteError: a step produced NaN/inf (named); nothing is returned.
    """
    train.check_mesh(mesh, "run_gradtau_stream")
    cfg = config or G.GradTauConfig()
    check_sync_every(sync_every, "run_gradtau_stream")
    if (tau is None) == (tau_fn is None):
        raise ConfigError("run_gradtau_stream needs exactly one of tau= (a constant) and "
                          "tau_fn= (τ of the current model)")
    _refuse_unread(cfg, tau_fn, tau_args)
    refuse_overridden(cfg)
    # A NaN / inf τ stopped the run as "check the data", a vector τ in lax.cond's TypeError.
    G._check_constants(tau, 0.5, measured=tau is None)
    model = as_model(arch, input_shape, num_classes)
    if (tau_fn is not None and tau_args and model.input_shape is not None
            and np.shape(tau_args[0])[1:] == tuple(model.input_shape)):
        # Held-out images for the τ: 0..255 ones measured a τ 13× too large, without a word.
        model.check_inputs(tau_args[0], "tau_args[0] (the held-out images tau_fn reads)")
    refuse_traced(params, "run_gradtau_stream")     # a host loop, as unlearn("gradtau")
    model.check_params(params)
    E, n, alpha0, clamped = stream_schedule(n_forget, n_retain, cfg)
    if not callable(batches):
        raise ConfigError("run_gradtau_stream: batches must be a function of the forget-epoch, "
                          "batches(epoch) -> iterable of (forget_batch, retain_batch)")
    hp = {"lr": np.float32(cfg.lr), "weight_decay": np.float32(cfg.weight_decay),
          "final_lr_fraction": np.float32(cfg.final_lr_fraction),
          "alpha0": np.float32(alpha0), "epochs": np.float32(E),
          "refresh_steps": np.int32(min(cfg.tau_refresh_epochs * n, INT32_MAX))}
    tx = G.gradtau_tx(cfg.lr, cfg.weight_decay, cfg.final_lr_fraction, E, n)
    # A copy (the state is donated), committed as run_gradtau's: a start restored from disk
    # and a fresh one share the compiled step (uncommitted, they were two compilations).
    ts = train.init_state(model, tx, None, jax.tree.map(jnp.array, committed(params)))
    gs = G.GradTauState(jnp.int32(0), jnp.asarray(0.0 if tau is None else tau,
                                                  G.tau_dtype(params)))
    # Built at the first batch: whether it may run in chunks depends on the model.
    step = outputs = None
    if mesh is not None:
        repl = NamedSharding(train.auto_mesh(mesh)[0], P())
        ts, gs, hp, tau_args = jax.device_put((ts, gs, hp, tuple(tau_args)), repl)
    else:
        ts, gs = committed((ts, gs))
        hp, tau_args = jax.tree.map(jnp.asarray, (hp, tuple(tau_args)))
    put = lambda b: train.global_rows((np.asarray(b[0], np.float32),
                                       np.asarray(b[1], np.int32)), mesh)
    finite, dev_f, dev_r, dev_a, taus = [], [], [], [], []
    queued = 0    # steps dispatched since the last wait, across forget-epochs (N_f may be 1)
    # The batches the schedule was computed for: at most min(batch_size, |set|) rows each
    # (global rows: under jax.distributed each process passes its share), and a forget-epoch
    # covers D_f. Unchecked, a stream of 1-row forget batches, or of D_f twice per batch, ran
    # to the end with the steps, E and α₀ of the config's batches in its info.
    bf, br = min(cfg.batch_size, n_forget), min(cfg.batch_size, n_retain)
    for e in range(E):
        k, ms, seen = 0, [], 0
        for k, pair in enumerate(batches(e), 1):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise DataError(f"run_gradtau_stream: forget-epoch {e}, item {k} is a "
                                f"{type(pair).__name__}, not a (forget_batch, retain_batch) "
                                "pair")
            fb, rb = pair
            if k > n:
                raise ConfigError(f"run_gradtau_stream: forget-epoch {e} yielded more than "
                                  f"N_f = {n} batch pairs")
            # (x, y) pairs, as fit_stream takes: a dict batch was a bare KeyError, an
            # (x, y, w) batch ran with its weights dropped.
            for what, b in (("forget", fb), ("retain", rb)):
                if not (isinstance(b, (tuple, list)) and len(b) == 2):
                    raise DataError(f"run_gradtau_stream: forget-epoch {e}, pair {k}: the "
                                    f"{what} batch is a {type(b).__name__}"
                                    f"{f' of {len(b)}' if isinstance(b, (tuple, list)) else ''}"
                                    ", not an (x, y) pair of images and labels")
            # The labels on the host once: the checks and the step read them; host images as
            # numpy arrays (a torch tensor failed the dtype check with a bare TypeError).
            fb, rb = ((b[0] if isinstance(b[0], (jax.Array, np.ndarray)) else np.asarray(b[0]),
                       np.asarray(b[1])) for b in (fb, rb))
            for what, b in (("forget", fb), ("retain", rb)):
                if b[1].ndim == 0:      # one example per pair: len() was a bare TypeError
                    raise DataError(f"run_gradtau_stream: forget-epoch {e}, pair {k}: the "
                                    f"{what} batch has a label of shape () (one example, not "
                                    "a batch); stream (B, ...) images with (B,) labels")
                if not len(b[1]):
                    raise DataError(f"run_gradtau_stream: forget-epoch {e}, pair {k}: the "
                                    f"{what} batch has no rows; drop empty batches")
            rows_f, rows_r = (len(b[1]) * jax.process_count() for b in (fb, rb))
            if rows_f > bf or rows_r > br:
                what, rows, most = (("forget", rows_f, bf) if rows_f > bf
                                    else ("retain", rows_r, br))
                raise ConfigError(f"run_gradtau_stream: forget-epoch {e}, pair {k}: a {what} "
                                  f"batch of {rows} rows, but config.batch_size "
                                  f"{cfg.batch_size} gives batches of at most {most} (the "
                                  "schedule's N_f and budget are computed for them); stream "
                                  "batches of config.batch_size rows, or set it to yours")
            seen += rows_f
            # A device batch's values are read once (reading one waits for the queued steps).
            model.check_inputs(fb[0], "a streamed forget batch", fb[1],
                               values=step is None or not isinstance(fb[0], jax.Array))
            model.check_inputs(rb[0], "a streamed retain batch", rb[1],
                               values=step is None or not isinstance(rb[0], jax.Array))
            if step is None:   # a model with batch statistics runs whole batches (per_example)
                chunk = "auto" if per_example(model, params, rb[0]) else None
                step = _cached_step_program(model, n, tau_fn, mesh, chunk)
                outputs = model.num_outputs(params, np.shape(rb[0])[1:], "run_gradtau_stream",
                                            len(rb[0]))
            if jax.process_count() == 1:   # as fit_stream: one process refusing would hang
                # A label past the last logit gave a NaN loss, stopped as "check the data for
                # NaN/inf or lower the learning rate".
                for b, what in ((fb, "forget"), (rb, "retain")):
                    if np.size(b[1]):
                        _refuse_missing_outputs(model, outputs, int(np.max(b[1])),
                                                "run_gradtau_stream",
                                                f"a streamed {what} batch has a label past them")
            ts, gs, m = step(ts, gs, hp, put(fb), put(rb), tau_args)
            ms.append(m)
            queued += 1
            if queued >= sync_every:
                jax.block_until_ready(m["finite"])
                queued = 0
        if k != n:
            raise ConfigError(f"run_gradtau_stream: forget-epoch {e} yielded {k} batch pairs; "
                              f"the schedule needs N_f = {n} (ceil(|D_f| / batch))")
        if seen < n_forget:
            raise ConfigError(f"run_gradtau_stream: forget-epoch {e} streamed {seen} forget "
                              f"rows, fewer than n_forget = {n_forget}: a forget-epoch covers "
                              "D_f (a truncated forget stream unlearned part of it); stream "
                              "every forget sample once per forget-epoch")
        stacked = jax.tree.map(lambda *v: jnp.stack(v), *ms)
        finite.append((e, stacked["finite"]))
        dev_f.append(stacked["forget_loss"].mean())
        dev_r.append(stacked["retain_loss"].mean())
        dev_a.append(stacked["ascent"].sum())
        if tau_fn is not None and e % cfg.tau_refresh_epochs == 0:
            taus.append(stacked["tau"][0])
    # A NaN / inf τ from the user's tau_fn stopped the run as "check the data or lower the
    # learning rate". One measured in a later forget-epoch than the first non-finite step is
    # the diverged parameters' (named below), not the τ's.
    # Starting parameters holding NaN are named first (they make τ NaN too).
    bad = next((e for e, fin in finite if not np.asarray(fin).all()), E)
    with naming_non_finite_start("run_gradtau_stream", params, "params"):
        for e, t in zip(range(0, E, cfg.tau_refresh_epochs), taus):
            if e <= bad and not np.isfinite(float(t)):
                raise NonFiniteError(f"run_gradtau_stream: tau_fn returned {float(t)} at the "
                                     f"τ refresh of forget-epoch {e}; it must return a finite "
                                     "loss (e.g. the mean cross-entropy on held-out data)")
        _check_finite(finite, n)
    out = jax.block_until_ready(ts.params)
    if E:                                      # (epochs=0: the parameters as given)
        refuse_nonfinite_outputs(model, out, fb[0], "run_gradtau_stream")  # the last forget batch
    tau_hist = [float(tau)] if tau is not None and E else [float(t) for t in taus]
    info = {"steps": E * n, "epochs": E, "batches_per_epoch": n, "alpha0": alpha0,
            "alpha_clamped": clamped, "tau": tau_hist,
            "forget_loss": [float(v) for v in dev_f], "retain_loss": [float(v) for v in dev_r],
            "ascent_steps": [int(v) for v in dev_a]}
    info.update(_tau_reached(info, n))
    return out, info


def _tau_reached(info: dict, n: int) -> dict:
    """``tau_reached`` as the in-memory runner's where the stream shows it: True when some step
    ran without the ascent (the forget batch's loss was at least τ). When every step ran it,
    the runner measures the end's loss on D_f, which a stream does not hold: None, with a note
    saying how to check."""
    asc = info["ascent_steps"]
    if not asc:
        return {"tau_reached": None}
    if min(asc) < n:
        return {"tau_reached": True}
    return {"tau_reached": None,
            "tau_reached_note": "every step ran the ascent (each forget batch's loss below τ "
                                "before its step); the stream's end was not measured: compare "
                                "the returned parameters' mean loss on D_f with info['tau'][-1]"}


__all__ = ["run_gradtau_stream", "stream_schedule"]
