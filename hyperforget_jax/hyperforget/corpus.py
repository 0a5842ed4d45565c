"""The checkpoint corpus HyperForget learns from (METHODS.md §2, G.pt-style) [ours].

    hyperforget corpus --out runs/corpus --seeds 256          # resumable; see docs/hyperforget.md

For a fleet of target networks (trained together with ``vmap``):

1. ``original``: the classifier trained on D with a *per-seed recipe*: learning rate
   log-uniform in ``lr_range`` and epochs uniform in ``epochs_range`` (AdamW, batch 128, weight
   decay 1e-4, the batch order of ``train.fit`` for that seed). The default ranges bracket the
   recipes users train with (``hyperforget train``: lr 1e-3, 20 epochs; issue 13: lr 1e-3..3e-3,
   10..30 epochs), so a user's network lies inside the corpus distribution. Seeds start at
   ``first_seed`` = 100,000, far from the seeds users and evaluations pick (0, 1, 2, …), so no
   evaluation original is ever in the corpus.
2. ``unlearn``: for each forget request (every class, plus ``class_pairs`` two-class requests)
   an unlearning trajectory from the original: **masked self-distillation** [ours]. The student
   starts at the original θ₀ and is trained on every training image (D_r ∪ D_f) towards the
   original's own softmax with the forgotten classes' logits removed (−∞), updating the output
   layer only (``unlearn_layers="head"``; ``"all"`` trains every tensor). The forgotten
   classes' columns of the output kernel are not distilled but shrink to exactly 0 by the last
   step (``forget_readout="zero"``), so a forgotten logit stops reading the features: without
   this the features' memory of D_f leaks through the distilled column and mia_loss_lr stays
   ≈ 0.03–0.04 above Retrain's (``experiments/hyperforget_endpoint_mia.py``: +0.039 → +0.011
   on the held-out test originals, RA and FA unchanged). Measured against Retrain of the same
   seed and recipe (development runs on 6 validation originals × 10 classes, lr 1e-3..3e-3,
   10..30 epochs; docs/hyperforget.md, "Corpus endpoints"), the endpoints are within 0.1 RA
   points of Retrain with FA 0.00%; for comparison ∇τ + repair (the previous corpus) −1.9
   points RA, and fine-tuning on D_r alone leaves FA at 8–40%. It needs no Retrain run, and
   the change it makes is small and structured (110 of 7,960 values for G.pt's MLP), which is
   what lets a small hypernetwork reproduce it on unseen networks.
   Checkpoints are kept at ``checkpoints`` geometrically spaced steps, so the forget loss along
   a trajectory covers ≈ 0.3 → ≈ 12 (the range prompts can ask for).

Every checkpoint stores the trained values and, per class, the mean loss and accuracy on the
training, validation and test sets; the loss/accuracy on D_f and D_r of any request follow from
these and the class counts (:meth:`Corpus.request_metrics`).

On-disk format (no pickle; ``np.load(..., allow_pickle=False)``)::

    <out>/index.json                   config, architecture, requests, columns, trained span,
                                       per-shard status and recipes
    <out>/shard_00000/originals.npy    float32 (S, P)   the fleet's original networks
    <out>/shard_00000/original_metrics.npy  float32 (S, 6K)
    <out>/shard_00000/trajectory.npy   float32 (N, Q)   trained values (the ``trained`` span)
    <out>/shard_00000/rows.npy         int32   (N, 3)   original (row in the shard), request,
                                                        step
    <out>/shard_00000/metrics.npy      float32 (N, 6K)  {train,val,test}_{loss,acc}_{class}

A shard is one fleet of seeds; it is written to a temporary directory, renamed into place, and
only then marked done in ``index.json`` (itself replaced atomically), so a killed build resumes
at the first unfinished shard. The hypernetwork's train/test split is *by run*: the last
``test_fraction`` of the seeds are held out (``index["test_seeds"]``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
import os
import re
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperforget_jax import checkpoint_checks as CHECKS, data, report, rundir, train, xla
from hyperforget_jax.config import SEED_LIMIT, check_config, expand_user, field
from hyperforget_jax import params as P_
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError
from hyperforget_jax.hyperforget import corpus_index as CI
from hyperforget_jax.models import Architecture, as_model
from hyperforget_jax.train_run import refuse_nonfinite_outputs

FORMAT = CI.FORMAT
SPLITS = CI.SPLITS
metric_columns = CI.metric_columns


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """What the corpus holds (module docstring). Defaults: G.pt's MNIST MLP on MNIST-5k.

    Attributes:
      arch: target architecture name.
      num_seeds, first_seed: the runs (seeds first_seed .. first_seed + num_seeds − 1) [ours:
        far from the small seeds evaluations use].
      fleet_size: seeds trained together (one vmapped fleet = one shard).
      test_fraction: share of the seeds held out from hypernetwork training.
      lr_range: (low, high) of the per-seed learning rate, log-uniform [ours: brackets
        1e-3..3e-3].
      epochs_range: (low, high) of the per-seed epochs, uniform integers [ours: brackets 10..30].
      batch_size, weight_decay: the rest of the original's recipe (``TrainConfig``'s defaults).
      forget_classes: the classes of the single-class requests (None: every class).
      class_pairs: number of two-class requests added to the single-class ones ((0, 1),
        (2, 3), … then further pairs in a fixed shuffled order), >= 0, a cap: data with K
        classes has K(K−1)/2 pairs (45 for 10 classes, 4,950 for 100), and fewer than 7
        classes have fewer pairs than the default 20, and get all of them (the index's
        ``requests`` lists those built).
      unlearn_layers: ``"head"`` (output layer only) or ``"all"``: what the masked
        self-distillation trains.
      forget_readout: ``"zero"``: the forgotten classes' columns of the output kernel are not
        distilled but shrink to 0 (evenly in log-step, exactly 0 at the last step; their biases
        still train), so at the end a forgotten logit no longer reads the features;
        ``"train"``: they are distilled like every other value [ours: "zero" brings the
        endpoints' mia_loss_lr close to Retrain's, measured].
      unlearn_lr, unlearn_epochs, unlearn_batch_size: its AdamW recipe [ours: lr 1e-2 for 20
        epochs reaches FA 0 and the forget loss of Retrain's order, measured].
      checkpoints: trajectory checkpoints per request, at most (geometric in the step, the
        last at the end; steps that round to the same one are kept once:
        :func:`checkpoint_steps`).
    """

    arch: str = field("gpt_mlp")
    num_seeds: int = field(256, ge=2)
    first_seed: int = field(100_000, ge=0, lt=SEED_LIMIT)
    fleet_size: int = field(32, ge=1)
    test_fraction: float = field(0.0625, gt=0, lt=1)
    lr_range: tuple[float, ...] = field((7e-4, 4e-3), gt=0)
    epochs_range: tuple[int, ...] = field((8, 36), ge=1)
    batch_size: int = field(128, ge=1)
    weight_decay: float = field(1e-4, ge=0)
    forget_classes: tuple[int, ...] | None = field(None, ge=0)
    # No upper bound here: 45 (10 classes' pairs) refused a 100-class corpus more pairs.
    class_pairs: int = field(20, ge=0)
    unlearn_layers: str = field("head", choices=("head", "all"))
    forget_readout: str = field("zero", choices=("zero", "train"))
    unlearn_lr: float = field(1e-2, gt=0)
    unlearn_epochs: int = field(20, ge=1)
    unlearn_batch_size: int = field(128, ge=1)
    checkpoints: int = field(16, ge=1)

    def __post_init__(self):
        if type(self.num_seeds) is int and self.num_seeds < 2:
            raise ConfigError(f"CorpusConfig.num_seeds: a corpus needs >= 2 seeds (some are held "
                              f"out of hypernetwork training), got {self.num_seeds}")
        check_config(self)
        if self.first_seed + self.num_seeds > SEED_LIMIT:   # JAX keeps a seed's low 32 bits
            raise ConfigError(f"CorpusConfig.first_seed + num_seeds must be <= 2**32, got "
                              f"{self.first_seed} + {self.num_seeds}")
        for name in ("lr_range", "epochs_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ConfigError(f"CorpusConfig.{name} must be two values LOW HIGH with "
                                  f"LOW <= HIGH, got {lo_hi}")
        if len(self.test_seeds) >= self.num_seeds:
            raise ConfigError(f"CorpusConfig.test_fraction {self.test_fraction} holds out all "
                              f"{self.num_seeds} seeds, leaving none to train a hypernetwork "
                              "on; lower it (--test-fraction) or add seeds (--seeds)")
        fc = self.forget_classes
        if fc is not None and (not fc or len(set(fc)) != len(fc)):
            raise ConfigError(f"CorpusConfig.forget_classes must be distinct class ids, got "
                              f"{fc}")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.num_seeds))

    @property
    def test_seeds(self) -> list[int]:
        n = max(1, int(round(self.test_fraction * self.num_seeds)))
        return self.seeds[-n:]

    def recipe(self, seed: int) -> tuple[float, int]:
        """(learning rate, epochs) of one seed's original, drawn from the seed alone."""
        rng = np.random.default_rng([seed, 0x5EED])
        lo, hi = np.log(self.lr_range[0]), np.log(self.lr_range[1])
        lr = float(np.exp(rng.uniform(lo, hi)))
        return float(np.float32(lr)), int(rng.integers(self.epochs_range[0],
                                                       self.epochs_range[1] + 1))

    def requests(self, num_classes: int) -> list[tuple[int, ...]]:
        return CI.requests(self.forget_classes, self.class_pairs, num_classes)

    def to_json(self) -> dict:
        # Through JSON, so that tuples compare equal to the lists read back from index.json.
        return json.loads(json.dumps(dataclasses.asdict(self)))


def trained_span(arch: Architecture, layers: str) -> list[int]:
    """Tensor ids (flat order) the corpus's unlearning trains: ``"all"``, or ``"head"``: the
    output layer, i.e. the tensors of the top-level module called last (``Dense_1`` of G.pt's
    MLP, ``Dense_2`` of the 256-256 MLP, the Dense after resnet18's blocks). A model without a
    Flax module to trace falls back to the last top-level module in natural name order."""
    template = arch.param_shapes()
    leaves = jax.tree_util.tree_leaves_with_path(template)
    if layers == "all":
        return list(range(len(leaves)))
    top = [str(getattr(path[0], "key", path[0])) for path, _ in leaves]
    # The last one called that holds parameters (a parameter-free module such as a scaling or
    # activation module may be called after the head).
    last = next((n for n in reversed(_called_top_modules(arch, template)) if n in top), None)
    if last is None:
        def natural(name):
            m = re.match(r"(.*?)(\d+)$", name)
            return (m.group(1), int(m.group(2))) if m else (name, -1)

        last = max(set(top), key=natural)
    return [i for i, t in enumerate(top) if t == last]


def _called_top_modules(arch: Architecture, template) -> list[str]:
    """The names of the top-level submodules of ``arch``'s Flax module in the order a forward
    pass calls them (traced, nothing computed); empty when it cannot be traced so. Names
    follow construction order, not call order:
    ``nn.Dense(k)(nn.relu(nn.Dense(32)(x)))`` names its output layer ``Dense_0``, and
    resnet18's ``_BasicBlock_7`` sorts after its ``Dense_0``."""
    import flax.linen as nn

    module = getattr(arch, "module", None)
    if not isinstance(module, nn.Module) or arch.input_shape is None:
        return []
    called = []

    def record(next_fun, args, kwargs, context):
        path = context.module.scope.path if context.module.scope is not None else ()
        if context.method_name == "__call__" and len(path) == 1:
            called.append(path[0])
        return next_fun(*args, **kwargs)

    def forward(params, x):
        with nn.intercept_methods(record):
            return module.apply({"params": params}, x)

    try:
        jax.eval_shape(forward, template,
                       jax.ShapeDtypeStruct((1, *arch.input_shape), jnp.float32))
    except Exception:          # a model that cannot be traced so: the name-order fallback
        return []
    return called


def span_index(arch: Architecture, tensors: list[int]) -> np.ndarray:
    spans = P_.param_spans(arch.param_shapes())
    return np.concatenate([np.arange(spans[i].start, spans[i].stop) for i in tensors])


def readout_keep_mask(arch: Architecture, tensors: list[int], requests: list[tuple[int, ...]]
                      ) -> np.ndarray:
    """``(R, Q)`` float32 over the trained span of ``tensors``: 0 on the output kernel's columns
    of each request's forgotten classes, 1 elsewhere (``forget_readout="zero"``).

    The output kernel is the head's ``kernel`` whose last axis has ``num_classes`` entries."""
    template = arch.param_shapes()
    leaves = jax.tree_util.tree_leaves_with_path(template)
    k = arch.num_classes
    kern = [i for i in trained_span(arch, "head")
            if str(getattr(leaves[i][0][-1], "key", "")) == "kernel"
            and tuple(leaves[i][1].shape)[-1:] == (k,)]
    if len(kern) != 1 or kern[0] not in tensors:
        raise ConfigError(f"forget_readout='zero' needs an output layer with one kernel of "
                          f"{k} columns; {arch.name} has none: use forget_readout='train'")
    start = P_.param_spans(template)[kern[0]].start
    idx = span_index(arch, tensors)
    out = np.ones((len(requests), len(idx)), np.float32)
    for r, classes in enumerate(requests):
        col = np.zeros(leaves[kern[0]][1].shape, bool)
        col[..., list(classes)] = True
        out[r, np.isin(idx, start + np.flatnonzero(col))] = 0.0
    return out


# --- per-checkpoint metrics ------------------------------------------------------------------

#: Model evaluations (checkpoints × images of train, val and test together) per metrics call:
#: 64 checkpoints up to 8,192 images (every published corpus), fewer above (64 checkpoints over
#: CIFAR-10's 60,000 images hold ≈ 3.9 GiB of the ``mlp``'s activations: bench_scale.py).
METRIC_EVALS = 64 * 8192


def _metrics_program(arch: Architecture) -> Callable:
    """``(flat (M, P), sets, weights) -> (M, 6K)``, compiled once per model: the splits are
    arguments, so every corpus build and metrics call of a model shares one program (as
    constants of a closure, MNIST-5k's images made a 15.9 MB program, compiled per call)."""
    template = arch.param_shapes()

    def one(flat, sets, weights):
        p = P_.unflatten(flat, template)
        out = []
        for (x, y), w in zip(sets, weights):
            logits = arch.apply(p, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            acc = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            out += [loss @ w, acc @ w]
        return jnp.concatenate(out)

    return xla.jit(jax.vmap(one, (0, None, None)))


def make_metrics_fn(arch: Architecture, splits: data.Splits):
    """``flat (M, P) -> (M, 6K)``: per-class mean loss and accuracy on train/val/test, for
    ``chunk`` checkpoints per call (default: 64, fewer above 8,192 images in all:
    :data:`METRIC_EVALS`)."""
    k = arch.num_classes
    sets = [(jnp.asarray(ds.x), jnp.asarray(ds.y)) for ds in splits]
    weights = [jax.nn.one_hot(y, k) / jnp.maximum(jax.nn.one_hot(y, k).sum(0), 1.0)
               for _, y in sets]
    fn = arch.program(("corpus_metrics",), lambda: _metrics_program(arch))

    default = max(1, min(64, METRIC_EVALS // sum(len(x) for x, _ in sets)))

    def run(flat: np.ndarray, chunk: int | None = None) -> np.ndarray:
        # Every call has shape (chunk, P) (the last one zero-padded): one compilation.
        chunk = chunk or default
        out = []
        for i in range(0, len(flat), chunk):
            part = np.asarray(flat[i:i + chunk], np.float32)
            pad = np.zeros((chunk - len(part), part.shape[1]), np.float32)
            batch = jnp.asarray(np.concatenate([part, pad]))
            out.append(np.asarray(fn(batch, sets, weights))[:len(part)])
        return np.concatenate(out)

    run.chunk = default
    return run


# --- building one shard ----------------------------------------------------------------------

def _fleet_tx(weight_decay: float) -> Callable:
    # The library's training pieces (train.make_optimizer / make_train_step, as train.fit and
    # train.fit_fleet use them), vmapped over members whose learning rate is traced.
    recipe = train.TrainConfig(weight_decay=weight_decay)
    return lambda lr: train.make_optimizer(recipe, lr)


def _fleet_epoch(arch: Architecture, tx_for: Callable) -> Callable:
    """One epoch of a fleet, compiled once per model and weight decay: the data and learning
    rates are arguments, so every shard of a corpus (and every fleet of an experiment) runs
    the same program; as constants of a closure built per call, each compiled it again."""
    def member(st, lr, bi, active, x, y):
        new, m = train.make_train_step(arch.apply, tx_for(lr), guard=False)(st, (x[bi], y[bi]))
        keep = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, st)
        return keep, m["finite"] | ~active

    def epoch(st, idx, active, lrs, x, y):
        vm = jax.vmap(member, (0, 0, 0, 0, None, None))
        return jax.lax.scan(lambda c, i: vm(c, lrs, *i, x, y), st, (idx, active))

    return xla.jit(epoch)


@xla.standard_promotion
def train_fleet(arch: Architecture, x, y, seeds: list[int], recipes: list[tuple[float, int]],
                index_sets: list[np.ndarray] | None = None, batch_size: int = 128,
                weight_decay: float = 1e-4, check_outputs: bool = True) -> np.ndarray:
    """Trains one network per member in one vmapped program and returns them flat, (M, P).

    Member m is ``train.fit(arch, data[index_sets[m]], TrainConfig(seed=seeds[m],
    lr=recipes[m][0], epochs=recipes[m][1]))``: same initialisation (``key(seed)``), batch
    order, optimiser (``train.make_optimizer``) and step (``train.make_train_step``); the
    learning rate is traced (one program for every recipe), which changes float rounding only.
    Unlike :func:`hyperforget_jax.train.fit_fleet`, members may differ in epochs and index-set
    size (a member's steps are masked once its own run is over). A non-finite step raises
    ``NonFiniteError`` naming the step and member. ``index_sets`` (default: all of ``x``) may
    differ in size (e.g. Retrain on D_r of different requests): a member stops at the end of its
    own epoch. Seeds, recipes and index sets come one per member, and every set holds at least
    ``batch_size`` rows (``fit`` caps its batch at a smaller set; the fleet's batches are
    ``batch_size`` wide). ``check_outputs``: refuse, as ``fit`` does, a last update whose
    outputs are NaN/inf (off for a caller that checks its networks' losses itself).
    """
    m_ = len(seeds)
    # zip() dropped what one list had beyond another: a member without an index set came
    # back as its initialisation.
    if not m_ or len(recipes) != m_ or (index_sets is not None and len(index_sets) != m_):
        raise ConfigError(f"train_fleet: {m_} seeds, {len(recipes)} recipes and "
                          f"{'no' if index_sets is None else len(index_sets)} index sets; give "
                          "one recipe (and index set) per seed, at least one seed")
    index_sets = ([np.arange(len(x))] * m_ if index_sets is None
                  else [np.asarray(ix) for ix in index_sets])
    small = [(m, len(ix)) for m, ix in enumerate(index_sets) if len(ix) < batch_size]
    if small:
        # fit caps its batch at the set's size; the fleet's batches are batch_size wide and
        # wrapped round a smaller set (rows repeated within a batch): not fit's run.
        m, n = small[0]
        raise ConfigError(f"train_fleet: member {m} trains on {n} rows, fewer than batch_size "
                          f"{batch_size}; use batch_size <= {min(n for _, n in small)} (fit "
                          "caps its batch at the set's size, the fleet's are batch_size wide)")
    tx_for = _fleet_tx(weight_decay)
    lrs = jnp.asarray([r[0] for r in recipes], jnp.float32)
    state = jax.vmap(lambda k, lr: train.init_state(arch, tx_for(lr), k))(
        jnp.stack([jax.random.key(s) for s in seeds]), lrs)
    epoch = arch.program(("corpus_fleet_epoch", float(weight_decay)),
                         lambda: _fleet_epoch(arch, tx_for))
    for e in range(max(r[1] for r in recipes)):
        per = [ix[data.batch_indices(s, e, len(ix), batch_size)]
               for s, ix in zip(seeds, index_sets)]
        nb = max(len(b) for b in per)
        idx = np.zeros((nb, m_, batch_size), np.int32)
        active = np.zeros((nb, m_), bool)
        for m, (b, r) in enumerate(zip(per, recipes)):
            idx[:len(b), m] = b
            active[:len(b), m] = e < r[1]
        first = int(np.max(np.asarray(state.step)))
        state, finite = epoch(state, jnp.asarray(idx), jnp.asarray(active), lrs, x, y)
        train.raise_if_nonfinite(np.asarray(finite).T, first, e)
    # As fit / fit_fleet: the last update could leave finite but huge parameters whose
    # outputs are NaN/inf, returned as a network (the step guards check the loss before it).
    if check_outputs:
        refuse_nonfinite_outputs(arch, state.params, x, "train_fleet", stacked=True)
    return np.asarray(jax.vmap(P_.flatten)(state.params))


def train_originals(arch: Architecture, ccfg: CorpusConfig, x, y, seeds: list[int]
                    ) -> np.ndarray:
    """The fleet's originals, (S, P): :func:`train_fleet` with each seed's recipe."""
    # (the build checks the originals' losses itself, naming the seed and --lr-range)
    return train_fleet(arch, x, y, seeds, [ccfg.recipe(s) for s in seeds], None,
                       ccfg.batch_size, ccfg.weight_decay, check_outputs=False)


def checkpoint_steps(total: int, count: int) -> np.ndarray:
    """At most ``count`` distinct steps in [1, total], geometrically spaced, ending at
    ``total``: rounding merges the first steps (16 over the default corpus's 540 steps give
    15, so its 30 requests per original store 450 checkpoints)."""
    if count == 1:
        # The end's (np.geomspace(1, total, 1) is [1]: the first step was kept as the
        # trajectory's endpoint, the forgotten readout never zeroed).
        return np.array([total])
    return np.unique(np.round(np.geomspace(1, total, count)).astype(int))


def head_features(arch: Architecture, head: str):
    """``f(params, x) -> (inputs of the head module, logits)`` by Flax method interception, for
    an output layer that is a Dense (``kernel``, ``bias``): with every other tensor frozen, the
    head's inputs are fixed, so the masked self-distillation of the head is a softmax
    regression on them (thousands of times cheaper than a forward pass per step)."""
    _check_head_traceable(arch)

    def run(params, x):
        cap, logits = _intercept_head(arch, head, params, x)
        if "x" not in cap or set(params[head]) != {"kernel", "bias"}:
            raise ConfigError(f"{arch.name}'s output module {head!r} is not a Dense layer "
                              "called on one input; use unlearn_layers='all'")
        return cap["x"].reshape(x.shape[0], -1), logits

    return run


def _intercept_head(arch: Architecture, head: str, params: Any, x) -> tuple[dict, Any]:
    """``({"x": the head module's input, "y": its output}, logits)`` of one forward pass (keys
    missing where the head was not called)."""
    import flax.linen as nn

    cap = {}

    def grab(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name == head:
            cap["x"], cap["y"] = args[0], out
        return out

    with nn.intercept_methods(grab):
        logits = arch.module.apply({"params": params}, x)
    return cap, logits


def _head_name(arch: Architecture, tensors: list[int]) -> str:
    """The top-level module that holds ``tensors`` (the head's, :func:`trained_span`)."""
    path = jax.tree_util.tree_leaves_with_path(arch.param_shapes())[tensors[0]][0]
    return str(getattr(path[0], "key", path[0]))


def _check_head_is_output(arch: Architecture, x: np.ndarray) -> None:
    """ConfigError unless the model's softmax is its output layer's softmax
    (``unlearn_layers='head'`` distils ``inputs @ kernel + bias`` towards the whole model's
    softmax): a model that divided its head's output by a temperature, or scaled it, trained
    the head of another model (its endpoints' retain loss 3× the original's), without a word.
    The head's own output is compared with the logits of the same forward pass, up to a shift
    per row (a ``log_softmax`` after the head, or logits minus their maximum, leave the softmax
    as it is), so its precision (bfloat16, TF32 matmuls on a GPU) plays no part. The
    parameters are the initial ones plus noise: a zero-initialised head outputs 0 whatever
    follows it, and hid a temperature at the initial parameters alone."""
    _check_head_traceable(arch)
    head = _head_name(arch, trained_span(arch, "head"))
    leaves = arch.param_shapes()[head]
    if not (isinstance(leaves, Mapping) and set(leaves) == {"kernel", "bias"}
            and len(leaves["kernel"].shape) == 2 and len(leaves["bias"].shape) == 1):
        # A head without a bias, or a Dense wrapped in a submodule, was a KeyError traceback
        # in the distillation program, after the originals had trained.
        raise ConfigError(f"unlearn_layers='head' needs an output layer that is one nn.Dense "
                          f"with a bias ({arch.name}'s {head!r} holds "
                          f"{sorted(leaves) if isinstance(leaves, Mapping) else leaves}); use "
                          "unlearn_layers='all' (--unlearn-layers all)")
    params = P_.perturbed(arch.init(jax.random.key(0)))
    cap, logits = _intercept_head(arch, head, params, jnp.asarray(x))
    out = np.asarray(cap["y"], np.float32) if "y" in cap else None
    logits = np.asarray(logits, np.float32)
    if out is None or out.shape != logits.shape:
        same = False
    else:
        shift = logits - out                       # constant per row for the same softmax
        eps = float(jnp.finfo(cap["y"].dtype).eps) if jnp.issubdtype(
            cap["y"].dtype, jnp.floating) else 1e-7
        scale = max(1.0, float(np.abs(logits).max()), float(np.abs(out).max()))
        same = bool(np.all(np.ptp(shift, axis=-1) <= 16 * eps * scale))
    if not same:
        raise ConfigError(f"{arch.name}'s logits are not its output layer {head!r}'s output "
                          "(an operation follows it: a temperature, a scale or an offset), so "
                          "unlearn_layers='head' would distil another model; use "
                          "unlearn_layers='all' (--unlearn-layers all)")


def _check_head_traceable(arch: Architecture) -> None:
    """Raises ConfigError unless ``arch`` has a Flax Linen module, whose output layer's inputs
    :func:`head_features` captures (an NNX module or an apply_fn cannot be intercepted so)."""
    import flax.linen as nn

    if not isinstance(getattr(arch, "module", None), nn.Module):
        raise ConfigError(f"unlearn_layers='head' needs a Flax Linen module to find the output "
                          f"layer's inputs; {arch.name} is an NNX module or an apply_fn: use "
                          "unlearn_layers='all'")


def _unlearn_tx(ccfg: CorpusConfig) -> optax.GradientTransformation:
    return optax.adamw(ccfg.unlearn_lr, weight_decay=ccfg.weight_decay)


def _teacher_program(arch: Architecture, head: str | None) -> Callable:
    """``(originals (S, P), x) ->`` the head's inputs and the logits (``head`` named) or the
    logits, of every original on ``x``."""
    tmpl = arch.param_shapes()
    if head is not None:
        feats = head_features(arch, head)
        return xla.jit(jax.vmap(lambda f, x: feats(P_.unflatten(f, tmpl), x), (0, None)))
    return xla.jit(jax.vmap(lambda f, x: arch.apply(P_.unflatten(f, tmpl), x), (0, None)))


def _segment_program(arch: Architecture, ccfg: CorpusConfig, head: str | None) -> Callable:
    """A run of steps between two checkpoints of :func:`unlearn_trajectories`, every member
    vmapped; ``a`` holds the shard's arrays (starts, members' originals and requests, teacher
    logits, masks, data)."""
    tmpl = arch.param_shapes()
    tx = _unlearn_tx(ccfg)
    nb = int(np.prod(tmpl[head]["bias"].shape)) if head is not None else None

    def student(q, orig_i, bi, a):
        if head is not None:        # flat order of a Dense: bias, then kernel
            return a["inputs"][orig_i, bi] @ q[nb:].reshape(-1, nb) + q[:nb]
        return arch.apply(P_.unflatten(a["f0"][orig_i].at[a["idx"]].set(q), tmpl), a["x"][bi])

    def member_loss(q, orig_i, req_i, bi, a):
        target = jax.nn.softmax(a["teacher"][orig_i, bi] - 1e9 * a["masks"][req_i])
        return jnp.mean(optax.softmax_cross_entropy(student(q, orig_i, bi, a), target))

    def member(q, o, q0, orig_i, req_i, bi, shrink, a):
        m = a["keep_mask"][req_i]
        u, o = tx.update(jax.grad(member_loss)(q, orig_i, req_i, bi, a) * m, o, q)
        return optax.apply_updates(q, u) * m + (1.0 - m) * shrink * q0, o

    def segment(q, o, batches, shrinks, a):
        vm = jax.vmap(member, (0, 0, 0, 0, 0, 0, None, None))
        step = lambda c, bs_: (vm(*c, a["q0"], a["oi"], a["ri"], *bs_, a), None)
        return jax.lax.scan(step, (q, o), (batches, shrinks))[0]

    return xla.jit(segment)


def unlearn_trajectories(arch: Architecture, ccfg: CorpusConfig, x, originals: np.ndarray,
                         seeds: list[int], requests: list[tuple[int, ...]]
                         ) -> tuple[list[int], np.ndarray]:
    """Masked self-distillation (module docstring) for every (original, request), vmapped.

    Returns (steps, values): values (len(steps), S·R, Q) of the trained span at each step;
    member m is original m // R, request m % R."""
    k = arch.num_classes
    tensors = trained_span(arch, ccfg.unlearn_layers)
    idx = jnp.asarray(span_index(arch, tensors))
    s_, r_ = len(seeds), len(requests)
    f0 = jnp.asarray(originals)
    masks = jnp.asarray(np.stack([np.isin(np.arange(k), r) for r in requests]), jnp.float32)
    head = _head_name(arch, tensors) if ccfg.unlearn_layers == "head" else None
    # The programs are the model's own, their arrays arguments: every shard of a corpus runs
    # them (built per call with the arrays as constants, each shard compiled them again).
    key = (head, float(ccfg.unlearn_lr), float(ccfg.weight_decay))
    teacher_fn = arch.program(("corpus_teacher",) + key, lambda: _teacher_program(arch, head))
    segment = arch.program(("corpus_segment",) + key,
                           lambda: _segment_program(arch, ccfg, head))
    inputs, teacher = teacher_fn(f0, x) if head is not None else (None, teacher_fn(f0, x))
    # forget_readout="zero": the forgotten columns get no gradient; their value is set by the
    # schedule below (a mask of ones for "train").
    keep_mask = jnp.asarray(readout_keep_mask(arch, tensors, requests)
                            if ccfg.forget_readout == "zero"
                            else np.ones((r_, len(idx)), np.float32))

    oi = jnp.asarray(np.repeat(np.arange(s_), r_))
    ri = jnp.asarray(np.tile(np.arange(r_), s_))
    n, bs = len(x), ccfg.unlearn_batch_size
    per_epoch = data.batch_indices(0, 0, n, bs).shape[0]
    total = per_epoch * ccfg.unlearn_epochs
    keep = checkpoint_steps(total, ccfg.checkpoints)

    # The forgotten readout shrinks evenly in log-step, (1 - log(1+t)/log(1+T)) x its original
    # value, reaching exactly 0 at the last step T: the geometric checkpoints then span the
    # forget-loss range from the original's up to Retrain's order.
    shrink = 1.0 - np.log1p(np.arange(1, total + 1)) / np.log1p(total)

    q0 = f0[oi][:, idx]
    q = q0
    opt = jax.vmap(_unlearn_tx(ccfg).init)(q)
    arrays = {"q0": q0, "oi": oi, "ri": ri, "inputs": inputs, "teacher": teacher,
              "masks": masks, "keep_mask": keep_mask, "idx": idx, "f0": f0, "x": x}
    member_seeds = np.repeat(np.asarray(seeds), r_) + 7919 * (np.tile(np.arange(r_), s_) + 1)
    plan = np.concatenate([np.stack([data.batch_indices(int(ms), e, n, bs)
                                     for ms in member_seeds], 1)
                           for e in range(ccfg.unlearn_epochs)])     # (total, S·R, bs)
    out, done = [], 0
    for t in keep:
        q, opt = segment(q, opt, jnp.asarray(plan[done:t]),
                         jnp.asarray(shrink[done:t], jnp.float32), arrays)
        done = int(t)
        arr = np.asarray(q)
        if not np.isfinite(arr).all():
            raise NonFiniteError(f"corpus unlearning became non-finite by step {t}; lower "
                                 "unlearn_lr")
        out.append(arr)
    return [int(t) for t in keep], np.stack(out)


def build_shard(arch: Architecture, ccfg: CorpusConfig, splits: data.Splits, seeds: list[int],
                metrics_fn=None) -> dict[str, np.ndarray]:
    """All networks of one fleet of seeds: the arrays of one shard (module docstring)."""
    x, y = jnp.asarray(splits.train.x), jnp.asarray(splits.train.y)
    requests = ccfg.requests(arch.num_classes)
    originals = train_originals(arch, ccfg, x, y, seeds)
    metrics_fn = metrics_fn or make_metrics_fn(arch, splits)
    # Outputs, not only the parameters each step checks: an original whose last update left
    # NaN outputs was blamed on unlearn_lr, and a last distillation update that did was
    # written as a shard of NaN metrics (exit 0), refused only when a hypernetwork was trained.
    original_metrics = _finite_metrics(metrics_fn(originals), seeds, "the originals",
                                       "lower lr_range (--lr-range)")
    steps, values = unlearn_trajectories(arch, ccfg, x, originals, seeds, requests)
    r_ = len(requests)
    # rows: one per (step, member), members ordered (original, request).
    t_, m_ = values.shape[:2]
    rows = np.stack([np.tile(np.repeat(np.arange(len(seeds)), r_), t_),
                     np.tile(np.tile(np.arange(r_), len(seeds)), t_),
                     np.repeat(np.asarray(steps), m_)], 1).astype(np.int32)
    traj = values.reshape(t_ * m_, -1).astype(np.float32)
    idx = span_index(arch, trained_span(arch, ccfg.unlearn_layers))
    full = originals[rows[:, 0]].copy()
    full[:, idx] = traj
    return {"originals": originals.astype(np.float32),
            "original_metrics": original_metrics,
            "trajectory": traj, "rows": rows,
            "metrics": _finite_metrics(metrics_fn(full), seeds, "the unlearning trajectories",
                                       "lower unlearn_lr (--unlearn-lr)")}


def _finite_metrics(metrics: Any, seeds: list[int], what: str, fix: str) -> np.ndarray:
    """``metrics`` as float32, or NonFiniteError (nothing of the shard is written)."""
    metrics = np.asarray(metrics).astype(np.float32)
    if not np.isfinite(metrics).all():
        which = (f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}..{seeds[-1]}")
        raise NonFiniteError(f"corpus: {what} of {which} give NaN/inf losses on the data; "
                             f"{fix}. Nothing of this fleet was written")
    return metrics


# --- the resumable build -----------------------------------------------------------------------

def _new_index(arch: Architecture, ccfg: CorpusConfig, splits: data.Splits, dataset: str,
               split_seed: int) -> dict:
    k = arch.num_classes
    return {"format": FORMAT, "config": ccfg.to_json(), "architecture": arch.to_json(),
            "dataset": dataset, "split_seed": split_seed,
            "requests": [list(r) for r in ccfg.requests(k)],
            "trained_tensors": trained_span(arch, ccfg.unlearn_layers),
            "metric_columns": metric_columns(k),
            "class_counts": {s: np.bincount(ds.y, minlength=k).tolist()
                             for s, ds in zip(SPLITS, splits)},
            "test_seeds": ccfg.test_seeds,
            "data_fingerprint": rundir.data_fingerprint(splits),
            CHECKS.SETTINGS_KEY: CHECKS.jax_settings(), "shards": {}}


def _check_requests_have_images(requests: list[tuple[int, ...]], train_set: data.Dataset
                                ) -> None:
    """ConfigError for requests forgetting a class with no training image: the whole build
    ran, trajectories included, and only hypertraining failed, on "the conditions' statistics
    must be finite" (the request's forget loss is a mean over no image)."""
    counts = np.bincount(train_set.y, minlength=train_set.num_classes)
    absent = sorted({c for r in requests for c in r if counts[c] == 0})
    if absent:
        present = [c for c in range(len(counts)) if counts[c]]
        hit = [r for r in requests if set(r) & set(absent)]
        pairs = " and fewer --pairs (class_pairs)" if any(len(r) > 1 for r in hit) else ""
        raise ConfigError(f"class(es) {absent} have no training images in {train_set.name}, but "
                          f"the corpus's requests {hit} forget them; pass --forget-classes "
                          f"{' '.join(map(str, present))} (CorpusConfig.forget_classes){pairs}, "
                          "or data with those classes")


@xla.standard_promotion
def build_corpus(out_dir: str | os.PathLike, ccfg: CorpusConfig | None = None,
                 splits: data.Splits | None = None, dataset: str | None = None,
                 split_seed: int | None = None, progress: bool = True) -> dict:
    """Builds (or resumes) a corpus in ``out_dir``; returns build statistics.

    Args:
      out_dir: corpus directory (created).
      ccfg: :class:`CorpusConfig`; must equal the stored one when resuming.
      splits: the data (default: ``make_splits(load_dataset(dataset or "mnist5k"),
        seed=split_seed or 0)``; ``dataset="digits"`` without splits built on MNIST-5k and
        recorded it as digits).
      dataset, split_seed: recorded in the index (``dataset`` None: the name of ``splits``'
        training set, "mnist5k" for the default; a fixed "mnist5k" default had recorded
        digits splits as MNIST-5k, and ``hyperforget sample --dataset digits`` then refused
        the hypernetwork trained on them). ``split_seed`` None with ``splits`` given: not
        known, recorded as None (the data's fingerprint identifies them; a recorded 0 for
        splits of seed 3 had ``hyperforget sample --split-seed 3`` refused).
      progress: tqdm bar over shards.

    Returns:
      ``{"checkpoints", "seconds", "checkpoints_per_second", "shards_built", "shards_skipped"}``
      (this call only) and ``{"total_checkpoints", "total_build_seconds",
      "total_checkpoints_per_second"}`` (every completed shard, from the index).

    Raises:
      CheckpointError: ``out_dir`` holds a corpus built with another config or format.
      ConfigError: ``ccfg`` not a CorpusConfig, ``splits`` not Splits, ``dataset`` not a
        name, ``split_seed`` not a seed.
    """
    ccfg = CorpusConfig() if ccfg is None else ccfg
    if not isinstance(ccfg, CorpusConfig) or not (splits is None
                                                  or isinstance(splits, data.Splits)):
        raise ConfigError(f"build_corpus takes ccfg=a CorpusConfig and splits=hf.make_splits(ds)"
                          f" (or None: MNIST-5k), got a {type(ccfg).__name__} and a "
                          f"{type(splits).__name__}")
    if not (dataset is None or isinstance(dataset, str)):
        raise ConfigError(f"build_corpus: dataset is the data's name, recorded in the index, "
                          f"got {dataset!r}")
    # Recorded as given when splits are passed: None or 2.5 went into the index unchecked.
    if split_seed is not None or splits is None:
        split_seed = data._check_seed(0 if split_seed is None else split_seed,
                                      "build_corpus: split_seed", ConfigError)
    if splits is None:
        splits = data.make_splits(data.load_dataset(dataset or "mnist5k"), seed=split_seed)
    dataset = splits.train.name if dataset is None else dataset
    # A registered name or a user model's import path ("pkg.module:Net"), as `train --arch`.
    arch = as_model(ccfg.arch, splits.train.x.shape[1:], splits.train.num_classes)
    if ccfg.unlearn_layers == "head":
        _check_head_is_output(arch, splits.train.x[:64])   # before anything is written or trained
    _check_requests_have_images(ccfg.requests(arch.num_classes), splits.train)
    for name in ("batch_size", "unlearn_batch_size"):
        # Named here, before anything is trained: the fleet refused "batch_size" (not the
        # corpus's field or flag), and the unlearning trajectories wrapped their batches round
        # a smaller set, rows repeated within a batch.
        v, n = getattr(ccfg, name), len(splits.train)
        if v > n:
            raise ConfigError(f"CorpusConfig.{name} {v} is larger than the training set ({n} "
                              f"images): its batches would repeat rows; pass {name} <= {n} "
                              f"(--{name.replace('_', '-')})")
    out = report.prepare_dir(out_dir, flag="--out")    # `hyperforget corpus --out`
    index = _new_index(arch, ccfg, splits, dataset, split_seed)
    if CI.index_path(out).exists():
        old = CI.read_index(out)
        if old.get("data_fingerprint") == index["data_fingerprint"] \
                and old.get("dataset") != index["dataset"]:
            # The same arrays under another name: before 2026-12-06 any splits passed without
            # a name were recorded as "mnist5k" (a digits corpus too), and its resume was
            # refused as "a different dataset" though nothing differed. The fingerprint is the
            # data; the index takes this call's name (what hypertrain and sample check).
            old["dataset"] = index["dataset"]
        recorded_since = ("dataset", "split_seed", "data_fingerprint")   # older corpora lack
        # trained_tensors too: which tensors "head" names has changed (resnet18's), and new
        # shards of another span would be stored under the old index's span.
        for key in ("format", "config", "architecture", "requests", "class_counts",
                    "trained_tensors", *recorded_since):
            if key in recorded_since and key not in old:
                continue
            if key == "split_seed" and index[key] is None:      # not known: the fingerprint
                continue
            if old.get(key) != index[key]:
                raise CheckpointError(f"{out} holds a corpus built with a different {key}; "
                                      "use another --out directory or the same settings")
        index = old
    fleets = CI.fleet_seeds(ccfg.first_seed, ccfg.num_seeds, ccfg.fleet_size)
    # A shard marked done whose directory is gone is built again: deleting a damaged shard's
    # directory is how its refusal (corpus_index.load_shards) says to rebuild it.
    todo = [i for i in range(len(fleets)) if not index["shards"].get(f"{i:05d}", {}).get("done")
            or not (out / f"shard_{i:05d}").is_dir()]
    if todo:    # (older corpora recorded none: not compared)
        CHECKS.refuse_other_jax_settings(out, index.get(CHECKS.SETTINGS_KEY), "a corpus")
    report.write_json(CI.index_path(out), index)
    t0, count = time.perf_counter(), 0
    metrics_fn = make_metrics_fn(arch, splits)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(fleets), initial=len(fleets) - len(todo), desc="corpus shards",
                   unit="shard")
    # Closed however the loop ends: a bar left open by Ctrl-C or an error (a notebook keeps
    # the traceback, and the bar with it) pushed the next call's bar a line down.
    try:
        for i in todo:
            ts = time.perf_counter()
            arrays = build_shard(arch, ccfg, splits, fleets[i], metrics_fn)
            name = f"shard_{i:05d}"
            tmp = out / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir()
                for key, arr in arrays.items():
                    np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
            except OSError as e:        # a full disk: the finished shards stay, a rerun resumes
                shutil.rmtree(tmp, ignore_errors=True)
                raise CheckpointError(
                    f"could not write corpus shard {out / name} ({e.strerror or e}); check the "
                    "disk space and permissions of --out, then rerun to resume from the "
                    "finished shards") from e
            shutil.rmtree(out / name, ignore_errors=True)
            os.replace(tmp, out / name)
            n = len(arrays["rows"]) + len(arrays["originals"])
            count += n
            index["shards"][f"{i:05d}"] = {
                "dir": name, "seeds": fleets[i], "rows": len(arrays["rows"]), "done": True,
                "digest": CI.shard_digest({k: arrays[k] for k in CI.SHARD_ARRAYS}),
                "recipes": [list(ccfg.recipe(s)) for s in fleets[i]],
                "seconds": round(time.perf_counter() - ts, 2)}
            report.write_json(CI.index_path(out), index)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ckpt_per_s=f"{count / (time.perf_counter() - t0):.0f}")
    finally:
        if bar is not None:
            bar.close()
    secs = time.perf_counter() - t0
    done = [v for v in index["shards"].values() if v.get("done")]
    all_n = sum(v["rows"] + len(v["seeds"]) for v in done)
    all_s = sum(v["seconds"] for v in done)
    return {"checkpoints": count, "seconds": secs,
            "checkpoints_per_second": count / secs if count else 0.0,
            "shards_built": len(todo), "shards_skipped": len(fleets) - len(todo),
            "total_checkpoints": all_n, "total_build_seconds": all_s,
            "total_checkpoints_per_second": all_n / all_s if all_s else 0.0}


# --- reading -------------------------------------------------------------------------------------

class Corpus:
    """Read-only view of a built corpus.

    Attributes:
      index: the JSON index (validated against its schema).
      arch: the target :class:`Architecture`.
      originals: float32 (S, P) every original network; ``original_seeds`` (S,) their seeds;
        ``original_metrics`` (S, 6K).
      rows: int32 (N, 4): original (global row of ``originals``), request, step, seed.
      metrics: float32 (N, 6K) per-class metrics of every trajectory checkpoint.
      missing_seeds: seeds of the config whose shard is not built yet (empty when complete).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = expand_user(path).absolute()
        self.index = CI.read_index(self.path)
        self.arch = Architecture.from_json(self.index["architecture"])
        self.requests = [tuple(r) for r in self.index["requests"]]
        self.num_classes = self.arch.num_classes
        CI.validate_requests(self.index, self.num_classes, self.path)
        self.trained_index = span_index(self.arch, self.index["trained_tensors"])
        arrays = CI.load_shards(self.path, self.index, self.arch.param_count,
                                len(self.trained_index), len(self.requests))
        origs, omet, seeds, traj, rows, mets = [], [], [], [], [], []
        offset = 0
        for sh, a in arrays:
            origs.append(a["originals"])
            omet.append(a["original_metrics"])
            seeds.append(np.asarray(sh["seeds"], np.int64))
            r = a["rows"].astype(np.int64)
            rows.append(np.stack([r[:, 0] + offset, r[:, 1], r[:, 2],
                                  np.asarray(sh["seeds"])[r[:, 0]]], 1))
            traj.append(a["trajectory"])
            mets.append(a["metrics"])
            offset += len(a["originals"])
        self.originals = np.concatenate(origs)
        self.original_metrics = np.concatenate(omet)
        self.original_seeds = np.concatenate(seeds)
        self.trajectory = np.concatenate(traj)
        self.rows = np.concatenate(rows)
        self.metrics = np.concatenate(mets)
        # Seeds the config asks for that no completed shard holds (a build interrupted before
        # its last shard): such a corpus reads fine, but it lacks the held-out test runs (the
        # last seeds) and part of the training runs, so it must not train a hypernetwork.
        cfg = self.index["config"]
        want = range(cfg["first_seed"], cfg["first_seed"] + cfg["num_seeds"])
        self.missing_seeds = sorted(set(want) - set(self.original_seeds.tolist()))

    def data_record(self) -> dict:
        """The data it was built on, as run identities record it (``dataset``, ``split_seed``,
        ``identity.data``: the arrays' fingerprint; fields an older corpus lacks left out), for
        :func:`hyperforget_jax.commands.common.check_same_data`."""
        fp = self.index.get("data_fingerprint")
        record = {"dataset": self.index.get("dataset"), "split_seed": self.index.get("split_seed"),
                  "identity": {"data": fp} if fp else None}
        return {k: v for k, v in record.items() if v is not None}

    def __len__(self) -> int:
        return len(self.rows)

    def params(self, rows) -> np.ndarray:
        """Full flat parameters (len(rows), P) of trajectory checkpoints."""
        rows = np.asarray(rows)
        out = self.originals[self.rows[rows, 0]].copy()
        out[:, self.trained_index] = self.trajectory[rows]
        return out

    def original(self, seed: int) -> np.ndarray:
        hit = np.flatnonzero(self.original_seeds == seed)
        if not len(hit):
            seeds = np.sort(self.original_seeds)
            # A corpus cut short between shards holds some fleets only: say so when not a range.
            have = ("no originals yet" if not len(seeds) else
                    f"seeds {seeds[0]}..{seeds[-1]}" if seeds[-1] - seeds[0] + 1 == len(seeds)
                    else f"{len(seeds)} seeds in {seeds[0]}..{seeds[-1]}")
            raise CheckpointError(f"corpus {self.path} has no original for seed {seed}; pass "
                                  f"one of its {have} (held out of hypernetwork training: "
                                  f"{list(self.index['test_seeds'])})")
        return self.originals[hit[0]]

    def is_test_original(self) -> np.ndarray:
        return np.isin(self.original_seeds, self.index["test_seeds"])

    def trajectories(self, split: str = "train") -> list[tuple[int, int, np.ndarray]]:
        """[(original row, request id, checkpoint rows sorted by step)] of the train or test
        runs.

        Raises:
          ConfigError: ``split`` neither ``"train"`` nor ``"test"`` (any other word, a typo
            such as ``"Test"`` included, returned the training runs).
        """
        if split not in ("train", "test"):
            raise ConfigError(f"trajectories: split must be 'train' or 'test' (the held-out "
                              f"originals), got {split!r}")
        test = self.is_test_original()[self.rows[:, 0]]
        sel = np.flatnonzero(test if split == "test" else ~test)
        key = self.rows[sel, 0] * (len(self.requests) + 1) + self.rows[sel, 1]
        order = np.lexsort((self.rows[sel, 2], key))
        sel, key = sel[order], key[order]
        cuts = np.flatnonzero(np.diff(key)) + 1
        return [(int(self.rows[g[0], 0]), int(self.rows[g[0], 1]), g)
                for g in np.split(sel, cuts)] if len(sel) else []

    def _request_metrics(self, m: np.ndarray, classes, split: str) -> dict[str, np.ndarray]:
        k = self.num_classes
        counts = np.asarray(self.index["class_counts"][split], np.float64)
        mask = np.zeros(k, bool)
        mask[list(classes)] = True
        s = SPLITS.index(split)
        loss, acc = m[:, 2 * s * k:(2 * s + 1) * k], m[:, (2 * s + 1) * k:(2 * s + 2) * k]
        wf, wr = counts * mask / (counts * mask).sum(), counts * ~mask / (counts * ~mask).sum()
        return {"forget_loss": loss @ wf, "forget_acc": acc @ wf,
                "retain_loss": loss @ wr, "retain_acc": acc @ wr}

    def request_metrics(self, rows, classes, split: str = "train") -> dict[str, np.ndarray]:
        """Loss / accuracy on D_f (the ``classes``) and D_r (the others) of one split for
        trajectory checkpoints, from the per-class metrics weighted by class counts:
        ``forget_loss``, ``forget_acc``, ``retain_loss``, ``retain_acc`` arrays."""
        return self._request_metrics(self.metrics[np.asarray(rows)], classes, split)

    def original_request_metrics(self, originals, classes, split: str = "train"
                                 ) -> dict[str, np.ndarray]:
        """:meth:`request_metrics` of original networks (rows of ``originals``)."""
        return self._request_metrics(self.original_metrics[np.asarray(originals)], classes,
                                     split)
