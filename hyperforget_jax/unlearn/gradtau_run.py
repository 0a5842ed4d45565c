"""The ∇τ runner: a thin driver over the building blocks of :mod:`.gradtau`.

A forget-epoch is τ refreshed on device (:func:`.gradtau.refresh_tau`), then the epoch's batch
pairs under ``lax.scan``, gathered from the on-device data with a host-built, seed-pure index
plan. One compiled call runs a *run* of 2^j consecutive forget-epochs (another ``lax.scan``;
:func:`epoch_runs`: a budget of 6 is two calls, 4 + 2), or a single one when checkpointing after
every epoch. The program belongs to the model and is compiled once per shape and run length;
the hyperparameters (learning rate, weight decay, α₀, the budget E) are traced values, so every
config with the same batch shapes shares it, and a *fleet* of members (seeds × configs,
:func:`hyperforget_jax.unlearn.unlearn_sweep`) runs as the same program under ``vmap``.

Why runs of epochs and not one call each: every call of a compiled program gets its temporary
buffers afresh, and on CPU that memory comes from the kernel page by page. The ``cnn``'s
forget-epoch program at batch 256 + 256 has ≈ 130 MB of temporaries: ≈ 32,000 page faults a
call, about a tenth of its run time on this project's 2-core machine. Inside one call the loop
reuses them (benchmarks/README.md §1).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hyperforget_jax import microbatch, train, xla
from hyperforget_jax.data import Dataset, ForgetSplit, shared_rows
from hyperforget_jax.config import INT32_MAX, refuse_unread
from hyperforget_jax.checkpoint_checks import model_identity, refuse_other_jax_settings
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError, kind_of
from hyperforget_jax.metrics import rows_independent_once
from hyperforget_jax.models import Architecture, as_model
from hyperforget_jax.params import committed
from hyperforget_jax.rundir import array_fingerprint, data_fingerprint
from hyperforget_jax.train_run import refuse_nonfinite_outputs
from hyperforget_jax.unlearn import gradtau as G

log = logging.getLogger("hyperforget_jax.unlearn.gradtau")
Params = Any


class Plan(NamedTuple):
    """One member's host-side run: its static shape signature, traced hyperparameters, index
    plans and the facts reported in ``info``."""

    static: tuple          # (descent_only, tau_mode, E, N_f, B_f, B_r): one program per value
    hp: dict               # float32 scalars, traced
    f_idx: np.ndarray      # (E, N_f, B_f)
    r_idx: np.ndarray      # (E, N_f, B_r)
    alpha0: float
    clamped: bool


#: The fields of a GradTauConfig that only shape the ascent (α and τ): Fine-tune has none.
ASCENT_FIELDS = ("alpha0", "alpha_scale", "alpha_max", "tau_mode", "tau_refresh_epochs")


def refuse_ascent_fields(cfg: G.GradTauConfig) -> None:
    """Raises ConfigError when a Fine-tune config sets a field of the ascent (``ASCENT_FIELDS``)
    to other than its default: Fine-tune is α ≡ 0 (descent on D_r), so the value would be
    ignored yet recorded in ``info["config"]`` as if it had run (``alpha0`` 0 is α ≡ 0)."""
    default = G.GradTauConfig()
    for name in ASCENT_FIELDS:
        value = getattr(cfg, name)
        if value != getattr(default, name) and not (name == "alpha0" and value == 0):
            raise ConfigError(f"finetune runs with α ≡ 0 (descent on D_r) and would ignore "
                              f"{name}={value!r}; drop {name}, or run method 'gradtau' with it")


def refuse_unread_refresh(cfg: G.GradTauConfig) -> None:
    """Raises ConfigError when ∇τ's config names a τ that is never refreshed (``tau_mode``
    ``"chance"``: log K, a constant; ``"unseen_class"``: measured once) and sets
    ``tau_refresh_epochs``: the run gave the default's bits, yet ``info["config"]`` recorded
    the refresh as if it had run (the streamed runner refuses it with a constant τ too).
    ``tau_mode="auto"`` is accepted with any refresh period: one config serves a sweep over
    class requests (where ``auto`` is the constant ``chance``) and random ones (``val``,
    refreshed), and ``info["tau_mode"]`` records which τ ran."""
    every = cfg.tau_refresh_epochs
    if cfg.alpha0 == 0 or every == G.GradTauConfig().tau_refresh_epochs:
        return
    if cfg.tau_mode in ("chance", "unseen_class"):
        raise ConfigError(f"tau_refresh_epochs={every} refreshes τ, but tau_mode="
                          f"{cfg.tau_mode!r} is "
                          + ("log K, a constant" if cfg.tau_mode == "chance" else
                             "measured once")
                          + "; drop tau_refresh_epochs, or set tau_mode='val' (τ of the "
                          "current model on the validation set, refreshed) or 'auto'")


def refuse_overridden(cfg: G.GradTauConfig) -> None:
    """Raises ConfigError when one field of ∇τ's config makes another unread and that other
    is set to other than its default: ``epochs`` replaces the budget that ``max_epochs`` caps
    (``epochs=5, max_epochs=2`` ran 5 forget-epochs), ``alpha0`` replaces the α₀ that
    ``alpha_scale`` / ``alpha_max`` compute (``alpha0=0.5, alpha_max=0.2`` ran α₀ = 0.5), and
    ``alpha0=0`` (or ``alpha_scale=0`` / ``alpha_max=0``, which compute α₀ = 0) runs no
    ascent, so no τ (``tau_mode``, ``tau_refresh_epochs``). Each ran as if the second field
    were absent, yet ``info["config"]`` recorded it as given."""
    unread = [("epochs", "max_epochs", "caps the budget that epochs replaces")] \
        if cfg.epochs is not None else []
    if cfg.alpha0 is not None:
        unread += [("alpha0", f, "sets the α₀ that alpha0 replaces")
                   for f in ("alpha_scale", "alpha_max")]
    if cfg.alpha0 is not None:
        off = "alpha0" if cfg.alpha0 == 0 else None
    else:
        off = next((f for f in ("alpha_scale", "alpha_max") if getattr(cfg, f) == 0), None)
    if off is not None:
        # alpha_scale=0 or alpha_max=0 give α₀ = 0 as alpha0=0 does (an "ascent off" end of a
        # sweep over alpha_scale): no τ is measured, yet its settings were recorded as run.
        unread += [(off, f, f"sets the τ of an ascent that {off}=0 turns off")
                   for f in ("tau_mode", "tau_refresh_epochs")]
    refuse_unread(cfg, [(name, f"{why} ({given}={getattr(cfg, given)!r})",
                         f"drop {name} or {given}") for given, name, why in unread],
                  [G.GradTauConfig()])


def make_plan(split: ForgetSplit, cfg: G.GradTauConfig, seed: int,
              forget_classes: tuple[int, ...] | None, method: str = "gradtau") -> Plan:
    """Everything host-side about one ∇τ (``method="gradtau"``) or Fine-tune
    (``"finetune"``: α ≡ 0, :func:`.gradtau.finetune_epochs` = int(6·N_r / N_f) forget-epochs
    unless ``cfg.epochs`` is set) run."""
    if not isinstance(cfg, G.GradTauConfig):    # a baseline's config: an AttributeError
        raise ConfigError(f"{method} takes a GradTauConfig, got "
                          f"{kind_of(cfg, G.GradTauConfig)}")
    nf, nr = len(split.forget), len(split.retain)
    if method == "finetune":
        refuse_ascent_fields(cfg)
    else:
        refuse_unread_refresh(cfg)
    refuse_overridden(cfg)
    epochs = cfg.epochs
    if method == "finetune" and epochs is None:
        bf, br = min(cfg.batch_size, nf), min(cfg.batch_size, nr)
        epochs = G.finetune_epochs(math.ceil(nr / br), math.ceil(nf / bf), cfg.max_epochs)
    f_idx, r_idx, E = G.plan_batches(nf, nr, cfg.batch_size, epochs, seed, cfg.max_epochs)
    # Refused before α₀'s clamp warning: a refused request printed that warning too (two
    # lines on the CLI's stderr, --quiet or not).
    G.refuse_zero_budget(E, cfg, nf, nr, method)
    if method == "finetune" or cfg.alpha0 == 0:
        alpha0, clamped = 0.0, False
    elif cfg.alpha0 is not None:
        alpha0, clamped = float(cfg.alpha0), False
    else:
        alpha0, clamped = G.initial_alpha(nf, nf + nr, cfg.alpha_scale, cfg.alpha_max)
        if clamped:
            G.warn_clamped(nf, nf + nr, cfg.alpha_scale, cfg.alpha_max)
    descent_only = alpha0 == 0
    mode = None if descent_only else G.resolve_tau_mode(cfg.tau_mode, forget_classes)
    n = f_idx.shape[1]
    hp = {"lr": cfg.lr, "weight_decay": cfg.weight_decay,
          "final_lr_fraction": cfg.final_lr_fraction, "alpha0": alpha0, "epochs": E,
          # (capped: a count of steps past int32 is "never again", as the cap is for a run)
          "refresh_steps": min(cfg.tau_refresh_epochs * n, INT32_MAX)}
    hp = {k: np.asarray(v, np.int32 if k == "refresh_steps" else np.float32)
          for k, v in hp.items()}
    static = (descent_only, mode, E, n, f_idx.shape[2], r_idx.shape[2])
    return Plan(static, hp, f_idx, r_idx, alpha0, clamped)


def epoch_runs(start: int, stop: int) -> list[tuple[int, int]]:
    """Forget-epochs ``[start, stop)`` as consecutive runs ``(first epoch, length)`` of 2^j
    epochs, longest first: one compiled call each (6 epochs: ``[(0, 4), (4, 2)]``). Fewer
    calls than epochs, and a handful of run lengths, so budgets share their programs.

    >>> epoch_runs(0, 7)
    [(0, 4), (4, 2), (6, 1)]
    """
    runs, e = [], start
    while e < stop:
        k = 1 << ((stop - e).bit_length() - 1)
        runs.append((e, k))
        e += k
    return runs


def per_example(model: Architecture, params: Params, x: Any) -> bool:
    """Whether ``model``'s logits of an example do not depend on the rest of its batch, so its
    batches may be computed in chunks (CPU, ``chunk="auto"``). The registered models: always.
    A user's model: checked once, on 4 examples of ``x`` whole and one by one (a forward pass
    with batch statistics, e.g. BatchNorm without running averages, differs); its batches are
    then computed whole, as on GPU. One example cannot tell (whole = alone): False, not
    checked, so the answer kept for the model is never one example's."""
    return rows_independent_once(model, ("per_example", tuple(np.shape(x)[1:])), model.apply,
                                 params, x)


def rows_per_call(model: Architecture, params: Params, x: Any, members: int = 1) -> int:
    """Rows of ``x`` a one-call forward pass takes (teacher logits, U-LiRA's confidences): all
    of them up to ``metrics.WHOLE_CALL_ROWS`` (every published size), else that many model
    evaluations (rows × ``members``) per call; all of them, whatever their number, for a model
    whose rows depend on their batch (:func:`per_example`). ``params``: one model's."""
    from hyperforget_jax.metrics import WHOLE_CALL_ROWS

    if len(x) <= WHOLE_CALL_ROWS or not per_example(model, params, x):
        return len(x)
    return max(1, WHOLE_CALL_ROWS // members)


def _epochs_program(model: Architecture, descent_only: bool, mode: str | None, fleet: bool,
                    mesh: Mesh | None, data_batched: bool = False,
                    plan_batched: bool = True, how: str = "vmap",
                    chunk: str | None = "auto") -> Callable:
    """``run(ts, gs, hp, arrays, f_idx, r_idx) -> (ts, gs, metrics, taus)``: k consecutive
    forget-epochs, k = ``f_idx.shape[0]`` (index plans ``(k, [members,] N_f, B)``); metrics
    ``(k, [members,] N_f)`` per step, ``taus`` the τ of each epoch ``(k, [members])``.
    ``arrays = {"xf", "yf", "xr", "yr", "tau": (τ inputs)}``, shared by every member of a
    fleet, or one per member (``data_batched``: each member its own request of equal size);
    the index plans per member, or shared when every member has the same (``plan_batched``
    False: gathers stay unbatched); ``chunk``: "auto" (CPU) or None (whole batches: a model
    whose examples are not independent, see :func:`per_example`)."""

    # Independent rows (chunk set): a validation set above TAU_ROWS is taken in chunks (the
    # row count is part of the program's key).
    tau_rows = G.TAU_ROWS if chunk else None

    def build():
        loss_fn = train.per_example_ce(model.apply)
        constrain = train.shard_rows(mesh)
        tau_fn = {"val": G.val_tau_fn, "unseen_class": G.unseen_class_tau_fn}.get(mode)
        tau_fn = None if tau_fn is None else tau_fn(model.apply, tau_rows)

        def run(ts, gs, hp, arrays, f_idx, r_idx, hint):
            n = f_idx.shape[0]
            tx = G.gradtau_tx(hp["lr"], hp["weight_decay"], hp["final_lr_fraction"],
                              hp["epochs"], n)
            xf, yf, xr, yr = arrays["xf"], arrays["yf"], arrays["xr"], arrays["yr"]
            if tau_fn is not None:
                every = None if mode == "unseen_class" else hp["refresh_steps"]
                gs = G.refresh_tau(gs, ts.params, tau_fn, every, *arrays["tau"])
            gt = G.nabla_tau(loss_fn, G.alpha_schedule_fn(hp["alpha0"], hp["epochs"], n),
                             tau=0.0, chunk=chunk)

            def step(carry, inp):
                ts, gs, hint = carry
                fi, ri = inp
                rb = constrain((xr[ri], yr[ri]))
                if descent_only:  # Fine-tune: the forget batch is never looked at
                    loss, grads = microbatch.mean_value_and_grad(loss_fn, ts.params, rb, chunk)
                    # 0, not a NaN sentinel (never reported): NaN tripped jax_debug_nans.
                    m = {"loss": loss, "forget_loss": jnp.float32(0.0), "retain_loss": loss,
                         "ascent": jnp.bool_(False)}
                    gs = G.GradTauState(gs.count + 1, gs.tau)
                else:
                    grads, gs, m = gt.update(ts.params, gs, constrain((xf[fi], yf[fi])), rb,
                                             ascent_hint=hint)
                    hint = None if hint is None else m["ascent"]
                ts, finite = train.apply_step(ts, grads, m["loss"], tx)
                return (ts, gs, hint), {"loss": m["loss"], "forget_loss": m["forget_loss"],
                                        "retain_loss": m["retain_loss"], "finite": finite,
                                        "ascent": m["ascent"]}

            (ts, gs, hint), metrics = jax.lax.scan(step, (ts, gs, hint), (f_idx, r_idx))
            return ts, gs, metrics, hint

        if fleet:
            p_ax = 0 if plan_batched else None
            run = train.over_members(
                run, (0, 0, 0, 0 if data_batched else None, p_ax, p_ax, None), how)

        def run_epochs(ts, gs, hp, arrays, f_idx, r_idx):
            # The previous step's ascent predicts the next one's (gradtau_objective's
            # ascent_hint; chunked batches on CPU only, single models only: under vmap the cond
            # would run both branches). Every call starts expecting it on.
            hint = None if fleet or descent_only else jnp.bool_(True)

            def epoch(carry, plan):
                ts, gs, hint = carry
                ts, gs, m, hint = run(ts, gs, hp, arrays, *plan, hint)
                return (ts, gs, hint), (m, gs.tau)
            (ts, gs, _), (metrics, taus) = jax.lax.scan(epoch, (ts, gs, hint), (f_idx, r_idx))
            return ts, gs, metrics, taus

        if mesh is None:
            return xla.jit(run_epochs, donate_argnums=0)
        m, _ = train.auto_mesh(mesh)
        repl = NamedSharding(m, P())
        return xla.jit(run_epochs, in_shardings=repl, out_shardings=repl, donate_argnums=0)

    return model.program(("gradtau_epochs", descent_only, mode, fleet, mesh, data_batched,
                          plan_batched, how, chunk, tau_rows), build)


def joinable(split: ForgetSplit) -> bool:
    """Whether D_f's and D_r's rows can be one array as they are (:func:`device_arrays`'
    ``joined``): a split built by hand may hold them in two dtypes, which joining would
    convert, or in two image sizes that a model taking any size runs apart."""
    f, r = split.forget, split.retain
    return f.x.dtype == r.x.dtype and f.y.dtype == r.y.dtype and f.x.shape[1:] == r.x.shape[1:]


def device_arrays(split: ForgetSplit, val: Dataset, mode: str | None,
                  forget_classes: tuple[int, ...] | None, mesh: Mesh | None = None,
                  joined: bool = False) -> dict:
    """The run's data on the device: ``{"xf", "yf", "xr", "yr", "tau": (τ inputs)}``.

    ``joined``: D_f's rows then D_r's as one array, given as both ``xf`` and ``xr`` (the retain
    plan shifted by |D_f|), so the data's shape is |D_f| + |D_r|, the same for every request on
    one training set: a sweep over forget-set sizes whose batch plans agree in shape reuses one
    compiled run instead of compiling it again per size (the steps gather the same rows)."""
    if joined:
        rows = (np.concatenate([split.forget.x, split.retain.x]),
                np.concatenate([split.forget.y, split.retain.y]))
    else:
        rows = (split.forget.x, split.forget.y, split.retain.x, split.retain.y)
    tree = (rows, G.tau_inputs(mode, val, forget_classes) if mode else ())
    if mesh is None:
        rows, tau = jax.tree.map(jnp.asarray, tree)
    else:
        rows, tau = jax.device_put(tree, NamedSharding(train.auto_mesh(mesh)[0], P()))
    xf, yf, xr, yr = rows * 2 if joined else rows      # joined: (x, y) as both sets'
    return {"xf": xf, "yf": yf, "xr": xr, "yr": yr, "tau": tau}


#: run-identity fields recorded since 2026-12-05 ("model": since stop 57): checkpoints that
#: lack them still resume.
_RECORDED_SINCE = ("data", "start", "model")


def _validate_resume(saved: dict, want: dict, directory) -> None:
    diff = [k for k in want if saved.get(k) != want[k]
            and not (k in _RECORDED_SINCE and k not in saved)]
    if diff:
        raise CheckpointError(
            f"{directory} holds a different ∇τ run ({diff[0]}: {saved.get(diff[0])!r} on disk, "
            f"{want[diff[0]]!r} now); pass an empty checkpoint directory for a new run")


def _initial_tau(plan: Plan, num_classes: int) -> float:
    return float(math.log(num_classes)) if plan.static[1] == "chance" else 0.0


def _check_finite(chunks: list, n_per_epoch: int, member: str = "") -> None:
    for e0, fin in chunks:
        fin = np.asarray(fin)
        if not fin.all():
            bad = e0 * n_per_epoch + int(np.argmin(fin))
            raise NonFiniteError(
                f"∇τ: non-finite loss, parameters or optimiser state at step {bad} (forget-epoch "
                f"{bad // n_per_epoch}, batch pair {bad % n_per_epoch}){member}; stopped "
                "without returning or saving parameters. Check the data for NaN/inf or lower "
                "the learning rate")


def run_gradtau(arch: Any, params: Params, split: ForgetSplit, val: Dataset,
                config: G.GradTauConfig | None = None, seed: int = 0,
                forget_classes: tuple[int, ...] | None = None, *, checkpointer=None,
                meta: dict | None = None, mesh: Mesh | None = None,
                method: str = "gradtau") -> tuple[Params, dict]:
    """Runs ∇τ (or Fine-tune, ``method="finetune"``) from ``params``; returns (params, info).

    One compiled call per run of 2^j forget-epochs (:func:`epoch_runs`; one per epoch when
    checkpointing; the program is the model's own, compiled once per shape and run length),
    with no host synchronisation between calls unless checkpointing. Everything it
    does is a pure function of the sizes, the config and ``seed``, so a resumed run gives the
    same parameters as an uninterrupted one.

    Args:
      arch: the model (anything ``hf.as_model`` takes).
      params: the original model's parameters (not modified).
      split: D_f / D_r.
      val: held-out validation data (τ).
      config: hyperparameters (default: the paper's).
      seed: batch order.
      forget_classes: the forgotten classes for class removal (selects τ, see ``tau_mode``).
      checkpointer: optional :class:`hyperforget_jax.checkpoint.Checkpointer`: the state is
        saved after every forget-epoch (checkpoint step = forget-epochs done, meta carries the
        τ history) and a rerun on the same directory resumes from the latest step. A directory
        holding a different run (other config, seed, request data, validation data or
        starting parameters) is refused.
      meta: JSON-serialisable metadata stored with each checkpoint.
      mesh: optional ``jax.sharding.Mesh``: both batches are split along its data axis, the
        state and data replicated; same parameters as one device (to float rounding).
      method: ``"gradtau"`` or ``"finetune"`` (α ≡ 0, descent on D_r, int(6·N_r / N_f)
        forget-epochs: 2E or 2E + 1, the official fine-tune's budget).

    Returns:
      The parameters and an info dict: ``steps``, ``epochs``, ``alpha0``, ``alpha_clamped``,
      ``tau_mode``, ``tau`` (every refresh), per-epoch ``forget_loss`` / ``retain_loss``,
      per-epoch ``ascent_steps`` (steps whose ascent term was on, ReLU(τ − L_f) > 0 and
      α > 0; the others skip the forget batch's backward), ``resumed_from`` (forget-epochs
      restored from the checkpoint, 0 for a fresh run), ``tau_reached`` (some step ran
      without the ascent, or the end's forget loss is at least τ; None for Fine-tune). A class
      removal whose budget ends with the forget loss below τ logs a warning.

    Raises:
      ConfigError: a config that is not a GradTauConfig.
      NonFiniteError: a step produced NaN/inf (named in the message); nothing is saved.
      CheckpointError: the checkpoint directory holds a different run.
    """
    train.check_mesh(mesh, "run_gradtau")
    cfg = config or G.GradTauConfig()
    model = as_model(arch, split.forget.x.shape[1:], split.forget.num_classes)
    if val is not None:     # as unlearn: 0..255 validation images measured a τ 13× too large
        model.check_inputs(val.x, "validation set", val.y)
    plan = make_plan(split, cfg, seed, forget_classes, method)
    descent_only, mode, E, n = plan.static[:4]
    tx = G.gradtau_tx(cfg.lr, cfg.weight_decay, cfg.final_lr_fraction, E, n)
    # A copy, so donating the state never invalidates the caller's parameters; committed, so
    # parameters restored from disk and fresh from fit share the compiled runs.
    ts = train.init_state(model, tx, None, jax.tree.map(jnp.array, committed(params)))
    run_id = {"n_forget": len(split.forget), "n_retain": len(split.retain), "seed": int(seed),
              "epochs": E, "tau_mode": mode, "config": dataclasses.asdict(cfg)}
    if checkpointer is not None:   # the request's data and the start, not only their sizes
        used = (split.forget, split.retain) + (() if val is None else (val,))
        run_id.update(data=data_fingerprint(*used),
                      start=array_fingerprint(*jax.tree.leaves(params)),
                      # another model of the same parameter tree returned this one's result
                      model=model_identity(model.to_json()))
    start, taus, hist_f, hist_r, hist_a = 0, [], [], [], []
    if checkpointer is not None and checkpointer.latest_step() is not None:
        ts, saved = checkpointer.restore(committed(ts))    # (placed as the run's state)
        g = saved.get("gradtau", {})
        _validate_resume(g.get("run", {}), run_id, checkpointer.directory)
        start = int(g["epoch"])
        if start < E:
            refuse_other_jax_settings(checkpointer.directory, checkpointer.written_under(),
                                      "a ∇τ run")
        taus, hist_f, hist_r = list(g["tau"]), list(g["forget_loss"]), list(g["retain_loss"])
        hist_a = list(g.get("ascent_steps", []))
    tau0 = taus[-1] if taus else _initial_tau(plan, split.forget.num_classes)
    gs = G.GradTauState(jnp.int32(start * n), jnp.asarray(tau0, G.tau_dtype(params)))
    chunk = "auto" if per_example(model, ts.params, split.retain.x) else None
    run = _epochs_program(model, descent_only, mode, False, mesh, chunk=chunk)
    joined = joinable(split)
    arrays = device_arrays(split, val, mode, forget_classes, mesh, joined)
    r_idx = plan.r_idx + (len(split.forget) if joined else 0)   # into D_f's rows, then D_r's
    if mesh is not None:
        ts, gs = jax.device_put((ts, gs), NamedSharding(train.auto_mesh(mesh)[0], P()))
    else:
        # Committed, as every run's outputs are: the optimiser state and τ state were not, so
        # the first run of a call compiled its program a second time for that placement (a
        # 2-epoch run after a 15-epoch one: a new compilation, same bits).
        ts, gs = committed((ts, gs))
    hp = jax.tree.map(jnp.asarray, plan.hp)
    c = cfg.tau_refresh_epochs
    # unseen_class τ is measured once: refreshing it chases its own tail (pushing the c-logit
    # down everywhere raises −log p_c on kept samples too; 14 → 80 in 4 refreshes).
    reported = lambda e: mode in ("val", "unseen_class") and (
        e % c == 0 if mode == "val" else e == 0)
    runs = ([(e, 1) for e in range(start, E)] if checkpointer is not None
            else epoch_runs(start, E))
    done = []                  # (first epoch, finite (k, N_f), L_f, L_r, ascent steps, τ): (k,)
    for e0, k in runs:
        ts, gs, m, tau_k = run(ts, gs, hp, arrays, jnp.asarray(plan.f_idx[e0:e0 + k]),
                               jnp.asarray(r_idx[e0:e0 + k]))
        res = (e0, m["finite"], m["forget_loss"].mean(-1), m["retain_loss"].mean(-1),
               m["ascent"].sum(-1), tau_k)
        if checkpointer is None:
            done.append(res)
        else:                          # k = 1: to the host and saved, epoch by epoch
            _, fin, lf, lr, asc, tau_k = jax.device_get(res)
            _check_finite([(e0, fin)], n)
            hist_f.append(float(lf[0]))
            hist_r.append(float(lr[0]))
            hist_a.append(int(asc[0]))
            taus += [float(tau_k[0])] if reported(e0) else []
            if e0 + 1 == E:      # not saved as the run's end (and reloaded as done)
                refuse_nonfinite_outputs(model, ts.params, split.forget.x, method)
            checkpointer.save(e0 + 1, ts, {**(meta or {}), "gradtau": {
                "epoch": e0 + 1, "run": run_id, "tau": taus, "forget_loss": hist_f,
                "retain_loss": hist_r, "ascent_steps": hist_a}},
                # every save_interval_steps-th epoch (all were written), and the last one
                force=e0 + 1 == E)
    # Without a checkpointer everything stays on device until here: no host sync in the loop.
    _check_finite([d[:2] for d in done], n)
    for e0, _, lf, lr, asc, tau_k in jax.device_get(done):
        hist_f += [float(v) for v in lf]
        hist_r += [float(v) for v in lr]
        hist_a += [int(v) for v in asc]
        taus += [float(t) for i, t in enumerate(tau_k) if reported(e0 + i)]
    if mode == "chance":
        taus = [tau0] if E else []
    out = jax.block_until_ready(ts.params)
    refuse_nonfinite_outputs(model, out, split.forget.x, method)
    info = {"steps": E * n, "epochs": E, "batches_per_epoch": n, "alpha0": plan.alpha0,
            "alpha_clamped": plan.clamped, "tau_mode": mode, "tau": taus,
            "forget_loss": [] if descent_only else hist_f, "retain_loss": hist_r,
            "ascent_steps": hist_a, "resumed_from": start}
    info.update(tau_reached(model, lambda: out, split.forget, info, n, descent_only))
    note_tau_not_reached(info, forget_classes)
    return out, info


def tau_reached(model: Architecture, params: Callable[[], Params], forget: Dataset, info: dict,
                n: int, descent_only: bool) -> dict:
    """``{"tau_reached": ...}``: whether the forget loss reached τ within the budget. True when
    some step ran without the ascent (ReLU(τ − L_f) = 0); when every step ran it, the end's
    parameters (``params()``, asked for only then) are measured once (their mean loss on D_f,
    also recorded as ``final_forget_loss``): the last steps may have carried it past τ. None
    for Fine-tune and an empty budget."""
    asc = info["ascent_steps"]
    if descent_only or not len(asc):
        return {"tau_reached": None}
    if min(asc) < n:
        return {"tau_reached": True}
    loss = model.program("mean_forget_loss", lambda: xla.jit(
        lambda p, x, y: jnp.mean(train.per_example_ce(model.apply)(p, (x, y)))))
    lf = float(loss(params(), jnp.asarray(forget.x), jnp.asarray(forget.y)))
    tau = info["tau"][-1] if info["tau"] else float("nan")
    return {"tau_reached": bool(lf >= tau), "final_forget_loss": lf}


def note_tau_not_reached(info: dict, forget_classes: tuple[int, ...] | None,
                         member: str = "") -> None:
    """Logs a warning when a class removal's budget ended before the forget loss reached τ
    (the ascent on at every step): the class is then far from forgotten. The registered mlp and
    cnn pass τ within two steps on MNIST-5k; the README's own-model example (8×8 digits, one
    hidden layer of 64) keeps 71 % of class 4 under the paper's budget and forgets it (0 %)
    with 80 forget-epochs."""
    if forget_classes and info.get("tau_reached") is False:
        lf = info.get("final_forget_loss", float("nan"))
        log.warning("∇τ%s: the budget of %d forget-epochs ended with the forget loss (%.3g) "
                    "still below τ (%.3g), the ascent on at every step: class %s is likely not "
                    "forgotten; check its forget accuracy, and raise the budget "
                    "(GradTauConfig(epochs=...), e.g. 80) or the learning rate", member,
                    info["epochs"], lf, info["tau"][-1] if info["tau"] else float("nan"),
                    ", ".join(map(str, forget_classes)))


def run_gradtau_fleet(model: Architecture, params: Params, split: ForgetSplit | list,
                      val: Dataset, plans: list[Plan], forget_classes: tuple[int, ...] | None,
                      vectorize: str = "vmap", members: list[int] | None = None
                      ) -> tuple[Params, list[dict]]:
    """Members with one static signature as one vmapped program: ``params`` stacked (leading
    axis = members), one :class:`Plan` per member, ``split`` shared or one per member (equal
    sizes). Returns stacked params and one info each (as :func:`run_gradtau`'s). Used by
    ``unlearn_sweep``, which passes each member's place in the sweep (``members``) for the
    warnings; by default their place in this group."""
    members = list(range(len(plans))) if members is None else list(members)
    per_member = isinstance(split, list)  # (a ForgetSplit is a tuple itself)
    descent_only, mode, E, n = plans[0].static[:4]
    if any(p.static != plans[0].static for p in plans):
        raise ConfigError("run_gradtau_fleet: members differ in shape; group them first")
    tx = G.gradtau_tx(1e-3, 0.0, 0.1, E, n)  # the state's structure only: values are traced
    ts = jax.vmap(lambda p: train.init_state(model, tx, None, p))(
        jax.tree.map(jnp.array, params))
    num_classes = (split[0] if per_member else split).forget.num_classes
    M = len(plans)
    gs = G.GradTauState(jnp.zeros((M,), jnp.int32),
                        jnp.full((M,), _initial_tau(plans[0], num_classes),
                                 G.tau_dtype(params)))
    ts, gs = committed((ts, gs))      # as the runs' outputs are: one program per run length
    hp = jax.tree.map(lambda *v: jnp.asarray(np.stack(v)), *[p.hp for p in plans])
    shared_plan = all(np.array_equal(p.f_idx, plans[0].f_idx)
                      and np.array_equal(p.r_idx, plans[0].r_idx) for p in plans)
    if shared_plan:   # one seed, several configs: the same batches for every member
        f_idx, r_idx = plans[0].f_idx, plans[0].r_idx
    else:
        f_idx = np.stack([p.f_idx for p in plans], 1)   # (E, M, N, B)
        r_idx = np.stack([p.r_idx for p in plans], 1)
    one = jax.tree.map(lambda l: l[0], params)
    chunk = "auto" if per_example(model, one, (split[0] if per_member else split).retain.x) \
        else None
    rows = shared_rows(split) if per_member else None
    if rows is not None:
        # One request per member on one training set: its rows once on the device, and each
        # member's batches as indices into them (the same values as its own copy's).
        m_ax = np.arange(M)[:, None, None]
        f_idx = rows.forget[m_ax, f_idx if not shared_plan else f_idx[:, None]]
        r_idx = rows.retain[m_ax, r_idx if not shared_plan else r_idx[:, None]]
        shared_plan, per_member = False, False
        x, y = jnp.asarray(rows.x), jnp.asarray(rows.y)
        arrays = {"xf": x, "yf": y, "xr": x, "yr": y,
                  "tau": jax.tree.map(jnp.asarray, G.tau_inputs(mode, val, forget_classes)
                                      if mode else ())}
    elif per_member:
        arrays = jax.tree.map(lambda *a: jnp.stack(a), *[
            device_arrays(sp, val, mode, forget_classes) for sp in split])
    else:   # one request: its rows joined, as run_gradtau's (one program across sizes)
        joined = joinable(split)
        arrays = device_arrays(split, val, mode, forget_classes, joined=joined)
        r_idx = r_idx + (len(split.forget) if joined else 0)
    run = _epochs_program(model, descent_only, mode, True, None, per_member, not shared_plan,
                          vectorize, chunk)
    done = []                  # per run of k epochs: finite (k, M, n), L_f, L_r, ascent, τ (k, M)
    for e0, k in epoch_runs(0, E):
        ts, gs, m, tau_k = run(ts, gs, hp, arrays, jnp.asarray(f_idx[e0:e0 + k]),
                               jnp.asarray(r_idx[e0:e0 + k]))
        done.append((m["finite"], m["forget_loss"].mean(-1), m["retain_loss"].mean(-1),
                     m["ascent"].sum(-1), tau_k))
    out = jax.block_until_ready(ts.params)
    # Each (E, M, ...) with members first: (M, E, ...).
    fin, hf, hr, ha, taus = (
        np.moveaxis(np.concatenate(parts), 0, 1) for parts in zip(*jax.device_get(done))
    ) if done else (np.ones((M, 0, n), bool), np.zeros((M, 0)), np.zeros((M, 0)),
                    np.zeros((M, 0), int), np.zeros((M, 0)))
    infos = []
    for i, p in enumerate(plans):
        _check_finite([(e, fin[i, e]) for e in range(E)], n, f" (sweep member {i})")
    refuse_nonfinite_outputs(model, out, (split[0] if isinstance(split, list) else split)
                             .forget.x, f"{'finetune' if descent_only else 'gradtau'} sweep",
                             stacked=True)
    for i, p in enumerate(plans):
        every = int(p.hp["refresh_steps"]) // max(n, 1)
        if mode == "val":
            tau_i = [float(taus[i, e]) for e in range(E) if e % every == 0]
        elif mode == "unseen_class":
            tau_i = [float(taus[i, 0])] if E else []
        else:
            tau_i = [_initial_tau(p, num_classes)] if (mode == "chance" and E) else []
        infos.append({"steps": E * n, "epochs": E, "batches_per_epoch": n, "alpha0": p.alpha0,
                      "alpha_clamped": p.clamped, "tau_mode": mode, "tau": tau_i,
                      "forget_loss": [] if descent_only else hf[i].tolist(),
                      "retain_loss": hr[i].tolist(),
                      "ascent_steps": [int(a) for a in ha[i]], "resumed_from": 0})
        forget = (split[i] if isinstance(split, list) else split).forget
        infos[-1].update(tau_reached(model, lambda i=i: jax.tree.map(lambda l: l[i], out),
                                     forget, infos[-1], n, descent_only))
        note_tau_not_reached(infos[-1], forget_classes, f" (sweep member {members[i]})")
    return out, infos


def compiled_forget_epoch(arch: Any, total_steps: int, lr: float, weight_decay: float,
                          final_lr_fraction: float, descent_only: bool = False) -> Callable:
    """The legacy per-step-schedule epoch ``run(state, xf, yf, xr, yr, f_idx, r_idx, alphas,
    tau) -> (state, metrics)`` (α given per step, the per-step :func:`.gradtau.lr_schedule`);
    kept for benchmarks comparing against older runs. Owned by the model, not cached globally.
    """
    model = as_model(arch)

    def build():
        tx = G.make_gradtau_optimizer(total_steps, lr, weight_decay, final_lr_fraction)
        step = G.make_gradtau_step(model.apply, tx)
        if descent_only:
            plain = train.make_train_step(model.apply, tx)

            def step(state, forget_batch, retain_batch, tau, alpha):
                state, m = plain(state, retain_batch)
                # 0, not a NaN sentinel (never reported): NaN tripped jax_debug_nans.
                return state, {"loss": m["loss"], "forget_loss": jnp.float32(0.0),
                               "retain_loss": m["loss"], "finite": m["finite"],
                               "ascent": jnp.bool_(False)}

        def run(state, xf, yf, xr, yr, f_idx, r_idx, alphas, tau):
            def body(s, inp):
                fi, ri, a = inp
                return step(s, (xf[fi], yf[fi]), (xr[ri], yr[ri]), tau, a)
            return jax.lax.scan(body, state, (f_idx, r_idx, alphas))

        return xla.jit(run, donate_argnums=0)

    return model.program(("legacy_forget_epoch", total_steps, lr, weight_decay,
                          final_lr_fraction, descent_only), build)
