"""U-LiRA: per-example membership inference against unlearning (Hayes et al. 2024, "Inexact
unlearning needs more careful evaluations to avoid a false sense of privacy").

The question U-LiRA asks of one forget example x: *was this model unlearned on x, or retrained
without x?* It is answered with a likelihood-ratio test between two per-example Gaussians of
the logit-scaled confidence φ(x) = log p_y(x) − log(1 − p_y(x)), fitted on shadow models.

Variant implemented here (shadow-paired, offline, one target pair) [ours where noted]:

1. S shadow splits: each shadow s keeps a random half of D_f and a random half of D_r
   (A_s; exact halves, so every shadow has the same shapes and the fleet compiles once).
   F_s = D_f ∩ A_s are the shadow's forget targets.
2. Two vmapped fleets trained with the original recipe (``TrainConfig``, seed per shadow):
   "in" shadows on A_s, "retrain" shadows on A_s \\ F_s [paper: retrained shadows].
3. Each "in" shadow is unlearned on (F_s, A_s \\ F_s) by the method under test [paper]; this is
   the costly part, done per shadow with :func:`hyperforget_jax.unlearn.unlearn`.
4. For every x ∈ D_f: μ_unl(x), μ_ret(x) are the means of φ(x) over the shadows with x ∈ F_s
   (unlearned and retrained respectively); the variances are *global* per distribution (pooled
   over examples, one degree of freedom per example spent on its mean) — LiRA's fixed-variance
   option, recommended below ~64 shadows [ours: S is small on CPU]. Examples that no shadow
   targeted are skipped.
5. Targets [paper]: each shadow pair in turn (leave one shadow out): its unlearned and its
   retrained shadow are scored on its own forget targets F_s with Gaussians fitted on the
   *other* shadows, Λ(x) = log N(φ; μ_unl, σ_unl) − log N(φ; μ_ret, σ_ret); the attack says
   "unlearned" when Λ > 0. Reported (``accuracy``, ``auc``): balanced accuracy over all the
   pairs' decisions and the ROC AUC of Λ. **Ideal: 0.5** (the method's unlearned models are
   indistinguishable from retrained ones per example). The targets are then drawn as the
   shadows are, on half of D_r: until stop 58 the target pair was the real request's unlearned
   model and Retrain, trained on all of D_r, whose confidences sat ≈ 2σ above the shadows'
   means, so on a random request nearly every example read "unlearned" and a model that was not
   unlearned at all scored ≈ 0.5 (the privacy gate passed it). That pair's numbers are still
   reported (``target_pair_accuracy``, ``target_pair_auc``) [ours].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hyperforget_jax import metrics, train, xla
from hyperforget_jax.config import SEED_LIMIT, check_config, field
from hyperforget_jax.data import Dataset, ForgetSplit, refuse_repeated_indices
from hyperforget_jax.errors import ConfigError, DataError, ForgetRequestError, NonFiniteError
from hyperforget_jax.evaluation import _check_fsplit_rows
from hyperforget_jax.models import Architecture, as_model
from hyperforget_jax.params import refuse_traced, tree_index
from hyperforget_jax.rundir import data_fingerprint
from hyperforget_jax.unlearn.gradtau_run import rows_per_call


@dataclasses.dataclass(frozen=True)
class ULiRAConfig:
    """Shadow budget. With 8 shadows each forget example is targeted by ~4 of them; a full
    U-LiRA run (2 fleets of 8 MLPs + 8 unlearning runs) takes ~10–20 s on MNIST-5k / 2 cores.

        python experiments/unlearning_table.py --ulira-shadows 8

    Attributes:
      num_shadows: shadow splits S, each with an "in" and a "retrain" shadow model (>= 3:
        each pair is scored with the others' Gaussians) [ours: the paper uses many more; S is
        small on CPU].
      seed: seed of the shadow splits (>= 0). The shadows' initialisations are drawn from
        the training recipe's seed (``train_cfg.seed * 1000 + 1 + s`` for shadow ``s``), not
        from this seed: vary ``train_cfg.seed`` to redraw them.
    """

    num_shadows: int = field(8, ge=3)
    seed: int = field(0, ge=0, lt=SEED_LIMIT)

    def __post_init__(self):
        check_config(self)


class Shadows(NamedTuple):
    """Shadow fleets (stacked params, leading axis S) and their splits (indices into D).

    ``forget_idx`` and ``data``: the request's forget indices and the training set's
    fingerprint they were trained for (:func:`train_shadows` records both; None: not known,
    e.g. built by hand). Indices alone match another training set of the same size (a
    fraction request draws the same indices on any split seed's), and shadows of class 3
    scored a request for classes 3 and 5 on its class-3 half, both without a word."""

    in_params: Any
    retrain_params: Any
    forget_sets: np.ndarray   # (S, |D_f|/2) training-set indices F_s
    retain_sets: np.ndarray   # (S, |D_r|/2) training-set indices A_s \ F_s
    forget_idx: np.ndarray | None = None
    data: str | None = None


def _check_shadows(shadows: Shadows, train_ds: Dataset, split: ForgetSplit | None,
                   who: str) -> None:
    """DataError / ForgetRequestError when ``shadows`` were trained on another training set
    than ``train_ds``, or for another request than ``split``'s (as far as they record)."""
    if shadows.data is not None and shadows.data != data_fingerprint(train_ds):
        raise DataError(f"{who}: the shadows were trained on another training set (fingerprint "
                        f"{shadows.data}) than train_ds ({train_ds.name!r}, {len(train_ds)} "
                        "images); train_shadows on this training set, or pass the one they "
                        "were trained on")
    if shadows.forget_idx is not None and split is not None and not np.array_equal(
            np.sort(np.asarray(split.forget_idx)), np.sort(shadows.forget_idx)):
        raise ForgetRequestError(f"{who}: the shadows were trained for another request "
                                 f"({len(shadows.forget_idx)} forget indices, this split has "
                                 f"{len(split.forget_idx)} and not the same); train_shadows "
                                 "for this request")


def logit_confidence(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """φ = log p_y − log(1 − p_y) = z_y − logsumexp_{k≠y} z_k (stable for confident models),
    in float32 at least (bfloat16 logits of a low-precision model are upcast first)."""
    logits = metrics.at_least_float32(logits)
    z_y = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return z_y - jax.scipy.special.logsumexp(others, -1)


def _fit_fleet_on_subsets(arch: Architecture, train_ds: Dataset, subsets: np.ndarray,
                          cfg: train.TrainConfig, seeds: list[int]) -> Any:
    """Like :func:`train.fit_fleet`, but member i trains on ``train_ds[subsets[i]]`` (equal
    sizes): the batches of each member index the shared on-device set through its subset."""
    return train.fit_fleet(arch, train_ds, cfg, seeds, subsets=subsets)[0].params


def train_shadows(arch: Any, train_ds: Dataset, split: ForgetSplit,
                  train_cfg: train.TrainConfig, cfg: ULiRAConfig = ULiRAConfig()) -> Shadows:
    """Steps 1–2: shadow splits and the two vmapped fleets ("in" on A_s, "retrain" on
    A_s \\ F_s). Independent of the unlearning method, so one set serves every method.
    ``arch`` is any model with an init (``hf.as_model``)."""
    arch = as_model(arch, train_ds.x.shape[1:], train_ds.num_classes)
    refuse_repeated_indices(split, "train_shadows")
    fsets, rsets = shadow_subsets(split, cfg)
    seeds = [int(train_cfg.seed) * 1000 + 1 + s for s in range(cfg.num_shadows)]
    in_params = _fit_fleet_on_subsets(arch, train_ds, np.concatenate([fsets, rsets], 1),
                                      train_cfg, seeds)
    re_params = _fit_fleet_on_subsets(arch, train_ds, rsets, train_cfg, seeds)
    return Shadows(in_params, re_params, fsets, rsets, np.asarray(split.forget_idx),
                   data_fingerprint(train_ds))


def shadow_subsets(split: ForgetSplit, cfg: ULiRAConfig = ULiRAConfig()
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 alone, no training: each shadow's half of the forget and of the retain indices,
    ``(num_shadows, |F| // 2)`` and ``(num_shadows, |R| // 2)``. Raises ConfigError for a
    split the test cannot run on (a caller may ask before training anything else)."""
    nf, nr = len(split.forget_idx), len(split.retain_idx)
    if nf < 2 or nr < 2:
        raise ConfigError("U-LiRA needs at least 2 forget and 2 retain samples")
    rng = np.random.default_rng([cfg.seed, 7])
    fsets = np.stack([split.forget_idx[rng.permutation(nf)[: nf // 2]]
                      for _ in range(cfg.num_shadows)])
    rsets = np.stack([split.retain_idx[rng.permutation(nr)[: nr // 2]]
                      for _ in range(cfg.num_shadows)])
    # Before training two fleets for a test that cannot run: each pair is scored with the
    # others' Gaussians, whose pooled variance needs an example two of them targeted.
    for s in range(cfg.num_shadows):
        _check_variance_dof(np.unique(np.delete(fsets, s, 0), return_counts=True)[1])
    return fsets, rsets


def unlearn_shadows(shadows: Shadows, unlearn_fn: Callable[[Any, ForgetSplit, int], Any],
                    train_ds: Dataset) -> Any:
    """Step 3: ``unlearn_fn(params, split, seed) -> params`` applied to every "in" shadow on its
    own request; returns the stacked unlearned shadows."""
    _check_shadows(shadows, train_ds, None, "unlearn_shadows")
    outs = []
    for s in range(len(shadows.forget_sets)):
        f, r = shadows.forget_sets[s], shadows.retain_sets[s]
        sp = ForgetSplit(train_ds.subset(f), train_ds.subset(r), f, r)
        outs.append(unlearn_fn(tree_index(shadows.in_params, s), sp, s))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)


def shadow_splits(shadows: Shadows, train_ds: Dataset) -> list[ForgetSplit]:
    """The S shadow requests (F_s, A_s \\ F_s) as forget splits (equal sizes)."""
    return [ForgetSplit(train_ds.subset(f), train_ds.subset(r), f, r)
            for f, r in zip(shadows.forget_sets, shadows.retain_sets)]


def unlearn_shadows_sweep(shadows: Shadows, method: str, arch: Any, train_ds: Dataset,
                          val: Dataset, config: Any = None, vectorize: str = "vmap") -> Any:
    """Step 3 as one vmapped program per request (one, unless a shadow's half of a
    class-removal forget set misses a small class): every "in" shadow unlearned by ``method`` on
    its own request (shadow ``s`` with seed ``s``, as :func:`unlearn_shadows` with
    ``unlearn(method, arch, p, split, val, config, seed=s)``), through
    :func:`hyperforget_jax.unlearn.unlearn_sweep` (``vectorize`` as there). Returns the stacked
    unlearned shadows. The seeds are 0..S−1: a target unlearned with a seed in that range
    shares that seed's draws with one shadow (batch orders over sets of other sizes, and Bad
    Teacher's random teacher: measured without effect on the table's U-LiRA, an auditor's
    probe); unlearn the target with a seed ≥ S to keep every draw apart."""
    from hyperforget_jax.unlearn import _forget_classes, unlearn_sweep

    _check_shadows(shadows, train_ds, None, "unlearn_shadows_sweep")
    splits = shadow_splits(shadows, train_ds)
    # Half of a class-removal forget set can hold no sample of a small forgotten class: that
    # shadow removes the classes its half holds, a request of its own, and a sweep runs one
    # request (τ is chosen per request). Each request's shadows are one sweep; a forget set
    # of large classes is one group, the one call it always was.
    groups: dict[Any, list[int]] = {}
    for s, sp in enumerate(splits):
        groups.setdefault(_forget_classes(sp), []).append(s)
    out: list[Any] = [None] * len(splits)
    for members in groups.values():
        idx = np.asarray(members)
        starts = (shadows.in_params if len(groups) == 1 else
                  jax.tree.map(lambda v: v[idx], shadows.in_params))
        results = unlearn_sweep(method, arch, starts, [splits[s] for s in members], val,
                                seeds=members, configs=None if config is None else [config],
                                params_stacked=True, vectorize=vectorize)
        for s, r in zip(members, results):
            out[s] = r.params
    return jax.tree.map(lambda *xs: jnp.stack(xs), *out)


def _phi_fleet(model: Architecture, stacked: Any, x: jax.Array, y: jax.Array) -> np.ndarray:
    fn = model.program("ulira_phi_fleet", lambda: xla.jit(jax.vmap(
        lambda p, xx, yy: logit_confidence(model.apply(p, xx), yy), in_axes=(0, None, None))))
    members = len(jax.tree.leaves(stacked)[0])
    rows = rows_per_call(model, jax.tree.map(lambda l: l[0], stacked), x, members)
    return metrics.in_row_chunks(fn, stacked, (x, y), rows, axis=1)


def _phi(model: Architecture, params: Any, x: jax.Array, y: jax.Array) -> np.ndarray:
    fn = model.program("ulira_phi", lambda: xla.jit(
        lambda p, xx, yy: logit_confidence(model.apply(p, xx), yy)))
    return metrics.in_row_chunks(fn, params, (x, y), rows_per_call(model, params, x))


def _check_variance_dof(counts: np.ndarray) -> None:
    """Raises unless some example has two shadow values (``counts``: shadows per targeted
    example): otherwise the pooled within-example variance has no degree of freedom, and σ
    would be the 1e-3 floor, a nearest-mean test reported as U-LiRA."""
    if counts.max() < 2:
        raise ConfigError(f"U-LiRA: each of the {len(counts)} targeted forget examples is "
                          "targeted by one shadow only, so the per-example variance cannot be "
                          "estimated; use more shadows (ULiRAConfig(num_shadows=...)) or a "
                          "larger forget set")


def _refuse_nonfinite_shadows(phi_unl: np.ndarray, phi_ret: np.ndarray,
                              targeted: np.ndarray) -> None:
    """NonFiniteError naming the first shadow (its own index) whose confidences on the
    examples it targeted are NaN/inf; values it did not target are never scored."""
    for name, phi in (("unlearned shadow", phi_unl), ("retrained shadow", phi_ret)):
        bad = ~np.isfinite(np.where(targeted, phi, 0.0)).all(1)
        if bad.any():
            raise NonFiniteError(f"U-LiRA: the {name} {int(np.argmax(bad))}'s confidences are "
                                 "NaN/inf on its forget set: that shadow diverged - rerun it "
                                 "with a lower learning rate")


def ulira_test(phi_unl: np.ndarray, phi_ret: np.ndarray, targeted: np.ndarray,
               target_unl: np.ndarray, target_ret: np.ndarray, scores: bool = False) -> dict:
    """Steps 4–5 on numbers: (S, n) shadow confidences of unlearned / retrained shadows, the
    (S, n) mask of which shadows targeted each example, and (n,) target confidences.

    Returns ``accuracy`` (balanced, ideal 0.5), ``auc``, ``n_examples``. Raises
    ``NonFiniteError`` naming the shadow or target whose confidences are NaN/inf,
    ``DataError`` for arrays of other shapes, ``ConfigError`` when no example was targeted by
    two shadows (no variance to pool)."""
    from sklearn.metrics import roc_auc_score

    phi_unl, phi_ret = np.asarray(phi_unl, np.float64), np.asarray(phi_ret, np.float64)
    targeted = np.asarray(targeted, bool)
    target_unl = np.asarray(target_unl, np.float64)
    target_ret = np.asarray(target_ret, np.float64)
    if (phi_unl.ndim != 2 or phi_ret.shape != phi_unl.shape or targeted.shape != phi_unl.shape
            or target_unl.shape != phi_unl.shape[1:] or target_ret.shape != phi_unl.shape[1:]):
        raise DataError(f"ulira_test takes (S, n) shadow confidences and targeted mask and (n,) "
                        f"target confidences, got {phi_unl.shape}, {phi_ret.shape}, "
                        f"{targeted.shape}, {target_unl.shape}, {target_ret.shape}; pass one "
                        "row per shadow and one column per forget example")
    ok = targeted.any(0)
    if not ok.any():
        raise ConfigError("no forget example was targeted by any shadow; use more shadows")
    _refuse_nonfinite_shadows(phi_unl, phi_ret, targeted)
    for name, phi in (("unlearned", target_unl), ("retrained", target_ret)):
        if not np.isfinite(phi[ok]).all():
            raise NonFiniteError(f"U-LiRA: the {name} target model's confidences are NaN/inf: "
                                 "that model diverged - evaluate a finite model")
    cnt = targeted.sum(0)[ok]
    _check_variance_dof(cnt)
    mu_u = np.where(targeted, phi_unl, 0).sum(0)[ok] / cnt
    mu_r = np.where(targeted, phi_ret, 0).sum(0)[ok] / cnt
    res_u = (phi_unl[:, ok] - mu_u)[targeted[:, ok]]
    res_r = (phi_ret[:, ok] - mu_r)[targeted[:, ok]]
    # Pooled within-example variance: each example's mean uses its own cnt shadows, so the
    # residuals have cnt.sum() − n_examples degrees of freedom (an example targeted once adds
    # an exact 0). Dividing by cnt.sum() read σ ~13 % low at 8 shadows (until 2026-12-05).
    dof = int(cnt.sum()) - int(ok.sum())
    sd_u = max(float(np.sqrt(np.sum(res_u ** 2) / dof)), 1e-3)
    sd_r = max(float(np.sqrt(np.sum(res_r ** 2) / dof)), 1e-3)

    def score(phi):
        phi = phi[ok]
        lu = -0.5 * ((phi - mu_u) / sd_u) ** 2 - math.log(sd_u)
        lr = -0.5 * ((phi - mu_r) / sd_r) ** 2 - math.log(sd_r)
        return lu - lr

    s_u, s_r = score(target_unl), score(target_ret)
    acc = 0.5 * (np.mean(s_u > 0) + np.mean(s_r <= 0))
    labels = np.r_[np.ones(len(s_u)), np.zeros(len(s_r))]
    auc = float(roc_auc_score(labels, np.r_[s_u, s_r]))
    out = {"accuracy": float(acc), "auc": auc, "n_examples": int(ok.sum()),
           "sigma_unlearned": sd_u, "sigma_retrained": sd_r}
    if scores:          # Λ of each target decision (ulira_loso_test pools them)
        out.update(scores_unlearned=s_u, scores_retrained=s_r)
    return out


def ulira_loso_test(phi_unl: np.ndarray, phi_ret: np.ndarray, targeted: np.ndarray) -> dict:
    """Step 5 on numbers, leave one shadow out: each shadow pair s is the target pair in turn,
    scored on the examples it targeted with :func:`ulira_test`'s Gaussians fitted on the other
    shadows (examples no other shadow targeted are skipped). Same arguments as
    :func:`ulira_test`'s first three; returns ``accuracy`` (balanced over all the pairs'
    decisions, ideal 0.5), ``auc`` and ``n_decisions`` (per side)."""
    from sklearn.metrics import roc_auc_score

    targeted = np.asarray(targeted, bool)
    phi_unl, phi_ret = np.asarray(phi_unl, np.float64), np.asarray(phi_ret, np.float64)
    # A 1-D row was read as shadows of one example each; other widths were IndexErrors.
    if phi_unl.ndim != 2 or phi_ret.shape != phi_unl.shape or targeted.shape != phi_unl.shape:
        raise DataError(f"ulira_loso_test takes (S, n) shadow confidences and targeted mask, got "
                        f"{phi_unl.shape}, {phi_ret.shape}, {targeted.shape}; pass one row per "
                        "shadow and one column per forget example")
    # Named here with the shadows' own indices: inside the loop a left-out index was off by
    # one, and shadow 0's NaN blamed "the target model".
    _refuse_nonfinite_shadows(phi_unl, phi_ret, targeted)
    # Values a shadow did not target are never scored (they are NaN-free from here on).
    phi_unl, phi_ret = np.where(targeted, phi_unl, 0.0), np.where(targeted, phi_ret, 0.0)
    if phi_unl.shape[0] < 3:
        raise ConfigError(f"U-LiRA: {phi_unl.shape[0]} shadow pairs leave {phi_unl.shape[0] - 1} "
                          "to fit each target's Gaussians, too few for a variance; use "
                          "ULiRAConfig(num_shadows=3) or more")
    s_u, s_r = [], []
    for s in range(phi_unl.shape[0]):
        rest = np.delete(np.arange(phi_unl.shape[0]), s)
        cols = targeted[rest].any(0)      # the others' Gaussians: means here, σ pooled here
        mine = targeted[s][cols]
        if not mine.any():
            continue
        r = ulira_test(phi_unl[rest][:, cols], phi_ret[rest][:, cols], targeted[rest][:, cols],
                       phi_unl[s, cols], phi_ret[s, cols], scores=True)
        s_u.append(r["scores_unlearned"][mine])
        s_r.append(r["scores_retrained"][mine])
    if not s_u:
        raise ConfigError("U-LiRA: no shadow's forget targets were targeted by another shadow; "
                          "use more shadows (ULiRAConfig(num_shadows=...))")
    s_u, s_r = np.concatenate(s_u), np.concatenate(s_r)
    labels = np.r_[np.ones(len(s_u)), np.zeros(len(s_r))]
    return {"accuracy": float(0.5 * (np.mean(s_u > 0) + np.mean(s_r <= 0))),
            "auc": float(roc_auc_score(labels, np.r_[s_u, s_r])), "n_decisions": len(s_u)}


def ulira(arch: Any, shadows: Shadows, unlearned_shadows: Any, train_ds: Dataset,
          split: ForgetSplit, target_unlearned: Any, target_retrained: Any) -> dict:
    """U-LiRA on the forget set of the real request (module docstring): ``accuracy`` / ``auc``
    with each shadow pair as the target in turn (ideal 0.5), and ``target_pair_accuracy`` /
    ``target_pair_auc`` for ``target_unlearned`` and ``target_retrained`` (trained on all of
    D_r, twice the shadows' data: biased towards "unlearned" on random requests).

    ``arch`` is any model ``hf.as_model`` takes. A host-side test (NumPy statistics over the
    shadows' confidences): the parameters are refused when traced, as every evaluator's are."""
    refuse_traced((shadows.retrain_params, unlearned_shadows, target_unlearned,
                   target_retrained), "ulira")
    refuse_repeated_indices(split, "ulira")
    _check_shadows(shadows, train_ds, split, "ulira")
    _check_fsplit_rows(train_ds, split)     # the split's rows are train_ds's at its indices
    model = as_model(arch, train_ds.x.shape[1:], train_ds.num_classes)
    # Parameters of another architecture failed in Flax (ScopeParamShapeError, no ValueError).
    for params in (target_unlearned, target_retrained, tree_index(shadows.retrain_params, 0),
                   tree_index(unlearned_shadows, 0)):
        model.check_params(params)
    x, y = jnp.asarray(split.forget.x), jnp.asarray(split.forget.y)
    phi_u = _phi_fleet(model, unlearned_shadows, x, y)
    phi_r = _phi_fleet(model, shadows.retrain_params, x, y)
    targeted = np.stack([np.isin(split.forget_idx, f) for f in shadows.forget_sets])
    pair = ulira_test(phi_u, phi_r, targeted, _phi(model, target_unlearned, x, y),
                      _phi(model, target_retrained, x, y))
    loso = ulira_loso_test(phi_u, phi_r, targeted)
    return {**loso, "n_examples": pair["n_examples"], "sigma_unlearned": pair["sigma_unlearned"],
            "sigma_retrained": pair["sigma_retrained"],
            "target_pair_accuracy": pair["accuracy"], "target_pair_auc": pair["auc"]}
