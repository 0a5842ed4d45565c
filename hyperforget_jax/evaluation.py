"""The unlearning evaluation of METHODS.md §4 for one model: RA / FA / TA, per-class accuracy and
every named membership-inference variant, always meant to be read beside Retrain's numbers.

Non-members of the loss/entropy attacks: for random-subset forgetting, held-out test samples (the
NeurIPS 2023 starting kit); for class removal, held-out test samples *of the forgotten classes*:
test samples of the kept classes are well classified by every model, Retrain included, so an
attack against them would only measure "is this the forgotten class", not membership.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from hyperforget_jax import metrics
from hyperforget_jax.config import is_scalar_number
from hyperforget_jax.data import (ForgetRequest, ForgetSplit, Splits, _check_seed, forget_mask,
                                  refuse_training_rows)
from hyperforget_jax.errors import ConfigError, DataError, ForgetRequestError, kind_of
from hyperforget_jax.models import as_model
from hyperforget_jax.params import refuse_traced

#: Metric keys of :func:`evaluate_unlearning`, in table order, with the direction that is "better
#: forgotten" left to the comparison with Retrain.
TABLE_KEYS = ("retain_acc", "forget_acc", "test_acc", "test_acc_kept", "test_acc_forgotten",
              "mia_loss_lr", "mia_entropy_lr", "mia_efficacy_svc")
GAP_KEYS = ("forget_acc", "retain_acc", "test_acc", "mia_loss_lr")
#: The logistic-regression attacks cross-validate on members vs non-members: below this many
#: samples on either side they are reported as None with the reason in ``not_applicable``.
MIN_LR_ATTACK_SAMPLES = 2


def evaluate_unlearning(arch: Any, params: Any, splits: Splits, fsplit: ForgetSplit,
                        request: ForgetRequest, seed: int = 0) -> dict[str, Any]:
    """Evaluates ``params`` after (or before) forgetting ``request``.

    Args:
      arch: the model (anything ``hf.as_model`` takes: a registered name, an Architecture, a
        Flax module, an ``apply_fn(params, x) -> logits``).
      params: the parameters to evaluate; checked against the model (shapes, dtypes, no
        extra or missing leaf).
      splits: train / validation / test data.
      fsplit: the forget / retain split of the request.
      request: the forget request (class removal selects the attacks' non-members).
      seed: seeds the attacks' subsampling and cross-validation. Both draw rows by position:
        the same sets in another row order are another draw, as another seed is (accuracies
        stay the same; on digits, class 3, ``mia_loss_lr`` read 0.43–0.59 over six orders of
        the test set). Compare rows evaluated on the same splits with the same seed. The CLI
        evaluates a run with its own command's seed (``hyperforget unlearn`` / ``sample``'s
        ``--seed``, ``train`` / ``retrain``'s training seed), not 0: pass that seed here to
        get its numbers.

    Returns:
      A flat, JSON-ready dict: floats ``retain_acc``, ``forget_acc``, ``test_acc`` (and
      ``*_loss``), for class removal ``test_acc_kept`` / ``test_acc_forgotten``, and
      ``mia_loss_lr``, ``mia_entropy_lr``, ``mia_efficacy_svc``; ``per_class_test_acc``, a
      list of one float per class (NaN for a class the test set lacks). Accuracies and
      attack accuracies are fractions in [0, 1] (:func:`gap_to_retrain` reports points). An
      attack that cannot run (fewer than :data:`MIN_LR_ATTACK_SAMPLES` forget samples; for
      ``mia_loss_lr``, a loss of +inf, where a model gives the true label probability 0) is
      ``None``, with the reason in the dict ``not_applicable`` (present only then). Where
      the members' and non-members' class mixes differ beyond sampling noise, the attacks
      take each class equally from both; the dict ``attacks_class_matched`` (present only
      then) gives the test's p-value and the rows kept (:func:`metrics.class_matched_rows`).

    Raises:
      ArchitectureError: parameters that do not fit the model.
      DataError: ``splits`` / ``fsplit`` not a Splits / ForgetSplit, splits that disagree on the
        number of classes, images of a shape the model does not take, or NaN/inf images (the
        set is named); for class removal, a test set without samples of a forgotten class or
        of a kept one.
      ForgetRequestError: ``fsplit`` is not ``hf.resolve_forget(splits.train, request)`` (the
        split of another request, or of another training set).
      NonFiniteError: the model's outputs on a set are NaN or +inf, or finite logits whose
        spread overflows the loss to +inf (a diverged model; a −inf true-label logit is a mask).
    """
    seed = _check_seed(seed, "evaluation seed")
    if not isinstance(splits, Splits) or not isinstance(fsplit, ForgetSplit):
        raise DataError(f"evaluate_unlearning takes splits=hf.make_splits(...) and "
                        f"fsplit=hf.resolve_forget(splits.train, request), got "
                        f"{kind_of(splits, Splits)} and {kind_of(fsplit, ForgetSplit)}")
    counts = {n: getattr(splits, n).num_classes for n in ("train", "val", "test")}
    if len(set(counts.values())) > 1:   # e.g. from_arrays inferred it from the labels present
        raise DataError(f"the splits disagree on the number of classes ({counts}); build every "
                        "part with the same num_classes, e.g. "
                        "hf.data.from_arrays(x, y, num_classes=10)")
    # The split must be the request's, on this training set: the attacks' non-members and
    # test_acc_forgotten are chosen from ``request``, the members from ``fsplit``.
    want = np.flatnonzero(forget_mask(splits.train, request))
    if not np.array_equal(want, np.asarray(fsplit.forget_idx)):
        raise ForgetRequestError(f"fsplit is not the split of {request.describe()} on "
                                 "splits.train; pass fsplit=hf.resolve_forget(splits.train, "
                                 "request)")
    _check_fsplit_rows(splits.train, fsplit)
    refuse_training_rows(splits.test, "the test set", "TA and the attacks' non-members would "
                         "be training images: pass a held-out test set (splits.test of "
                         "hf.make_splits)", splits.train)
    model = as_model(arch, splits.test.x.shape[1:], splits.test.num_classes)
    refuse_traced(params, "evaluate_unlearning")
    model.check_params(params)
    model.check_inputs(splits.test.x, f"test set {splits.test.name!r}", splits.test.y)
    out = {}
    per = {}
    for name, ds in (("retain", fsplit.retain), ("forget", fsplit.forget), ("test", splits.test)):
        if not np.all(np.isfinite(ds.x)):  # say which set, not only "x contains NaN"
            raise DataError(f"the {name} set ({ds.name!r}) has NaN or inf images; clean the "
                            "data before evaluating")
        per[name] = metrics.per_sample_outputs(model, params, ds.x, ds.y)
        # Finite parameters can still overflow (a last step at a huge lr): the attacks would
        # then refuse their NaN losses as bad data.
        metrics.refuse_non_finite_outputs(per[name], f" on the {name} set ({ds.name!r})",
                                          ds.y)
        out[f"{name}_acc"] = float(np.mean(per[name]["correct"]))
        out[f"{name}_loss"] = float(np.mean(per[name]["loss"]))
    test_correct = np.asarray(per["test"]["correct"])
    out["per_class_test_acc"] = [float(test_correct[splits.test.y == c].mean())
                                 if np.any(splits.test.y == c) else float("nan")
                                 for c in range(splits.test.num_classes)]
    nonmember = per["test"]
    if request.classes is not None:
        forgotten = np.isin(splits.test.y, request.classes)
        if not forgotten.any() or forgotten.all():
            raise DataError(f"the test set has {int(forgotten.sum())} samples of the forgotten "
                            f"classes {request.classes} and {int((~forgotten).sum())} of the "
                            "kept ones; class-removal metrics need both (use a stratified "
                            "split, hf.make_splits; a class with too few samples to reach its "
                            "test split can only be forgotten as items: "
                            "hf.ForgetRequest(indices=...))")
        absent = [c for c in request.classes if not np.any(splits.test.y == c)]
        if absent:
            # The attacks' members are every forgotten class's training samples: non-members of
            # the other classes only would let the attack tell classes apart, not membership.
            raise DataError(f"the test set has no samples of forgotten class(es) {absent} of "
                            f"{request.classes}: test_acc_forgotten and the attacks' "
                            "non-members would stand for the other forgotten classes alone; use "
                            "a stratified split (hf.make_splits), or forget those classes' "
                            "samples as items: hf.ForgetRequest(indices=...)")
        out["test_acc_kept"] = float(test_correct[~forgotten].mean())
        out["test_acc_forgotten"] = float(test_correct[forgotten].mean())
        nonmember = {k: np.asarray(v)[forgotten] for k, v in per["test"].items()}
    member = per["forget"]
    y_non = (np.asarray(splits.test.y)[forgotten] if request.classes is not None
             else np.asarray(splits.test.y))
    matched = metrics.class_matched_rows(fsplit.forget.y, y_non, seed)
    if matched is not None:
        # The two sets' class mixes differ beyond sampling noise: the attacks take the same
        # number of each class from both, or they would tell classes apart, not membership.
        rows_m, rows_n, p = matched
        member = {k: np.asarray(v)[rows_m] for k, v in member.items()}
        nonmember = {k: np.asarray(v)[rows_n] for k, v in nonmember.items()}
        out.setdefault("attacks_class_matched", {})["lr"] = {
            "p_value": p, "members": int(len(rows_m)), "nonmembers": int(len(rows_n))}
    n_members, n_non = len(np.asarray(member["loss"])), len(np.asarray(nonmember["loss"]))
    if min(n_members, n_non) < MIN_LR_ATTACK_SAMPLES:
        # A cross-validated attack needs two samples per side; forgetting one sample is a normal
        # request, so report the attacks as not applicable instead of failing the evaluation.
        got = (f"{n_members} forget and {n_non} held-out samples" if matched is None else
               f"{n_members} of {len(fsplit.forget)} forget and {n_non} of {len(y_non)} "
               "held-out samples after class matching (the classes both sets hold)")
        reason = (f"needs at least {MIN_LR_ATTACK_SAMPLES} members and non-members, got {got}")
        out["mia_loss_lr"] = out["mia_entropy_lr"] = None
        out["not_applicable"] = {"mia_loss_lr": reason, "mia_entropy_lr": reason}
    else:
        inf_f, inf_n = (int(np.isinf(v["loss"]).sum()) for v in (member, nonmember))
        if inf_f or inf_n:
            # A −inf logit on the true label (a model that masks a class out) is a loss of +inf:
            # no feature for a logistic regression. The attack read it as a diverged model's
            # NaN; the entropy attack and the accuracies stay defined.
            out["mia_loss_lr"] = None
            out["not_applicable"] = {"mia_loss_lr": (
                f"the loss is +inf (probability 0 on the true label, e.g. a -inf logit) for "
                f"{inf_f} of {n_members} forget and {inf_n} of {n_non} held-out samples")}
        else:
            out["mia_loss_lr"] = metrics.mia_loss_lr(member["loss"], nonmember["loss"],
                                                     seed=seed)
        out["mia_entropy_lr"] = metrics.mia_entropy_lr(member["entropy"],
                                                       nonmember["entropy"], seed=seed)
    retain_conf, test_conf = per["retain"]["confidence"], per["test"]["confidence"]
    # The SVC's members (D_r) and non-members (test) the same way, over the classes D_r holds:
    # the test rows of a removed class stay non-members, as in the protocol (SalUn's).
    held = np.isin(splits.test.y, np.unique(fsplit.retain.y))
    if not held.any():
        # scipy's χ² test failed on the empty side ("expected frequencies has a zero element").
        out["mia_efficacy_svc"] = None
        out.setdefault("not_applicable", {})["mia_efficacy_svc"] = (
            "the test set holds no sample of the classes the retain set holds: the attack "
            "trains on retain (members) against test samples of the same classes")
        return out
    matched = metrics.class_matched_rows(fsplit.retain.y, np.asarray(splits.test.y)[held], seed)
    if matched is not None:
        retain_conf = np.asarray(retain_conf)[matched[0]]
        test_conf = np.asarray(test_conf)[np.sort(np.concatenate(
            [np.flatnonzero(held)[matched[1]], np.flatnonzero(~held)]))]
        out.setdefault("attacks_class_matched", {})["svc"] = {
            "p_value": matched[2], "retain": int(len(matched[0])), "test": int(len(matched[1]))}
    n_r, n_t = len(np.asarray(retain_conf)), len(np.asarray(test_conf))
    if min(n_r, n_t) < MIN_LR_ATTACK_SAMPLES:
        # (the SVC needs two members and two non-members, as the LR attacks do)
        out["mia_efficacy_svc"] = None
        out.setdefault("not_applicable", {})["mia_efficacy_svc"] = (
            f"needs at least {MIN_LR_ATTACK_SAMPLES} retain (members) and test samples "
            f"(non-members), got {n_r} and {n_t}"
            + (" after class matching" if matched is not None else ""))
        return out
    out["mia_efficacy_svc"] = metrics.mia_efficacy_svc(
        retain_conf, test_conf, per["forget"]["confidence"], seed=seed)
    return out


def _p(matched: dict) -> str:
    p = matched["p_value"]
    return f"χ² p = {p:.2g}" + ("" if p < metrics.CLASS_MIX_P else
                                ", too few rows for the test to be read")


def class_matched_note(row: dict) -> str | None:
    """A report's sentence on an evaluation whose attacks took class-matched rows
    (``attacks_class_matched``), or None."""
    m = row.get("attacks_class_matched")
    if not m:
        return None
    parts = []
    if "lr" in m:
        parts.append(f"mia_loss_lr / mia_entropy_lr took {m['lr']['members']} members and "
                     f"{m['lr']['nonmembers']} non-members, class by class "
                     f"({_p(m['lr'])})")
    if "svc" in m:
        parts.append(f"mia_efficacy_svc trained on {m['svc']['retain']} retain and "
                     f"{m['svc']['test']} test rows of its classes, class by class "
                     f"({_p(m['svc'])})")
    if "d_mia" in m:
        parts.append(f"d_mia_auc / d_mia_acc took {m['d_mia']['members']} members and "
                     f"{m['d_mia']['nonmembers']} non-members, class by class "
                     f"({_p(m['d_mia'])})")
    return ("The attacks' members and non-members differ in class mix (beyond sampling noise, "
            "or in sets too small to test): "
            + "; ".join(parts) + ".")


def _check_fsplit_rows(train, fsplit: ForgetSplit, rows: int = 256) -> None:
    """Raises unless ``fsplit``'s forget / retain sets are the rows of ``train`` at its indices
    and its retain indices are distinct and outside the forget set (all the rest, or a subset
    of it, as ``unlearn`` accepts). A fraction or index request picks the same indices on
    any training set of that size, so the split of another split seed (whose samples may lie in
    this test set) passes the index check; its images do not. Labels are compared in full,
    images on ``rows`` evenly spaced rows of each set: a whole comparison gathered the training
    set on every call (~1 s for CIFAR-10's 50,000 images), and another training set's rows
    differ almost everywhere."""
    retain_idx = np.asarray(fsplit.retain_idx)
    retain_want = np.setdiff1d(np.arange(len(train)), np.asarray(fsplit.forget_idx))
    same = (np.isin(retain_idx, retain_want).all()
            and len(np.unique(retain_idx)) == len(retain_idx))
    for part, idx in ((fsplit.forget, fsplit.forget_idx), (fsplit.retain, fsplit.retain_idx)):
        if not same:
            break
        idx = np.asarray(idx)
        same = len(part) == len(idx) and np.array_equal(np.asarray(part.y),
                                                        np.asarray(train.y)[idx])
        pick = np.unique(np.linspace(0, len(idx) - 1, min(rows, len(idx))).astype(np.int64))
        same = same and np.array_equal(np.asarray(part.x[pick]),
                                       np.asarray(train.x[idx[pick]]), equal_nan=True)
    if not same:
        raise ForgetRequestError("fsplit's forget / retain images are not splits.train's rows at "
                                 "its indices (a split of another training set, e.g. another "
                                 "split seed?); pass fsplit=hf.resolve_forget(splits.train, "
                                 "request)")


#: Short names of :data:`GAP_KEYS` for report headings.
GAP_LABELS = {"forget_acc": "FA", "retain_acc": "RA", "test_acc": "TA",
              "mia_loss_lr": "mia_loss_lr"}


def gap_keys(result: dict, retrain: dict) -> tuple[str, ...]:
    """The :data:`GAP_KEYS` that :func:`gap_to_retrain` averages: a metric that is not
    applicable (None, e.g. an attack on a one-sample forget set) in either row is left out."""
    return tuple(k for k in GAP_KEYS if result.get(k) is not None and retrain.get(k) is not None)


def gap_to_retrain(result: dict, retrain: dict) -> float:
    """Avg. Gap (METHODS.md §4): mean |metric − Retrain's| over FA, RA, TA and mia_loss_lr,
    in percentage points (accuracies and attack accuracy ×100). A metric that is None (not
    applicable) is left out (:func:`gap_keys`); a missing one is an error, as in
    :func:`metrics.avg_gap`: a row of other metrics would otherwise give a gap over fewer keys.

    Raises:
      ConfigError: a row without one of :data:`GAP_KEYS` (pass rows of
        :func:`evaluate_unlearning`), or with a value that is not a number or not a fraction
        in [0, 1] (a row in percent).
      DataError: a NaN/inf value (:func:`metrics.avg_gap`).
    """
    for name, row in (("result", result), ("retrain", retrain)):
        if not isinstance(row, Mapping):    # a string listed its letters as the keys it had
            raise ConfigError(f"gap_to_retrain: {name} must be a dict of metrics (a row of "
                              f"hf.evaluate_unlearning), got {type(row).__name__}")
        missing = [k for k in GAP_KEYS if k not in row]
        if missing:
            raise ConfigError(f"gap_to_retrain: {name} has no {', '.join(missing)} (has "
                              f"{sorted(row)}); pass rows of hf.evaluate_unlearning, or "
                              "hf.metrics.avg_gap(..., keys=...) for other metrics")
    keys = gap_keys(result, retrain)
    for name, row in (("result", result), ("retrain", retrain)):
        # Rows hold fractions: a row in percent (a table's numbers) gave a gap 100× too large,
        # and one row of each a meaningless one (8043.75 points), with no error.
        odd = [k for k in keys if not is_scalar_number(row[k])]
        if odd:
            raise ConfigError(f"gap_to_retrain: {name}[{odd[0]!r}] is {row[odd[0]]!r}, not a "
                              "number; pass rows of hf.evaluate_unlearning")
        high = {k: float(row[k]) for k in keys
                if math.isfinite(row[k]) and not 0 <= float(row[k]) <= 1}
        if high:
            raise ConfigError(f"gap_to_retrain: {name} has {high}, outside [0, 1]; rows of "
                              "hf.evaluate_unlearning hold fractions and the gap is reported "
                              "in points: divide percentages by 100")
    scaled = lambda d: {k: 100.0 * d[k] for k in keys}
    return metrics.avg_gap(scaled(result), scaled(retrain), keys=keys)
