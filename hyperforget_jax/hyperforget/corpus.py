"""The checkpoint corpus HyperForget learns from (METHODS.md §2, G.pt-style) [ours].

    hyperforget corpus --out runs/corpus --seeds 32          # ≈ 2–4 min on 2 CPU cores

For a fleet of target networks that differ only by seed (trained together with ``vmap``):

1. ``original``: the classifier trained on D (``TrainConfig`` recipe, member ``s`` is exactly
   ``train.fit(arch, splits.train, TrainConfig(seed=s))``), a checkpoint every few epochs;
2. ``gradtau``: for each forget request (every class; optionally class pairs) ∇τ from the
   original (``unlearn.gradtau.make_gradtau_step``, vmapped over seeds × requests), checkpoint 0
   being the original itself. τ: gradtau.py's ``"unseen_class"`` estimate of Retrain's forget
   loss (−log p_c on kept-class validation images, measured once per member on the original).
   ∇τ's class-removal default ``"chance"`` (τ = log K) does not forget on G.pt's 10-hidden-unit
   MLP: measured forget loss 0.1 → 3.9 and forget accuracy 98% → 12% (the momentum overshoot
   that carries the 256-unit MLP to FA 0 is absent), and a corpus whose trajectories never
   reach FA 0 cannot teach the hypernetwork FA 0. ``tau_mode`` is configurable.
   Then a *repair* phase continues the same trajectory [ours]: the same ∇τ step with a constant
   small α = 0.05 (the ReLU(τ − L_f)² term only guards the forget loss from falling below τ)
   and a constant lr 1e-3 for 20 forget-epochs. Why: on this MLP ∇τ (unseen_class) reaches
   FA 0 but costs ~6 points of retain accuracy (measured 96.7 → 90.6%); plain training on D_r
   restores it but lets the forget accuracy creep back to ~3%;
3. ``retrain``: the same recipe from the same initialisation on D_r, checkpoints every few epochs.

Every checkpoint stores flat(θ) and, per class, the mean loss and accuracy on the training,
validation and test sets; the loss/accuracy on D_f and D_r of any request follow from these and
the class counts (:meth:`Corpus.request_metrics`).

On-disk format (no pickle; ``np.load(..., allow_pickle=False, mmap_mode="r")`` reads any row
without loading the rest)::

    <out>/index.json                 config, architecture, requests, columns, shard status
    <out>/shard_00000/params.npy     float32 (N, P)   flat parameters
    <out>/shard_00000/rows.npy       int32   (N, 4)   seed, kind (0 original, 1 gradtau,
                                                      2 retrain), request id (−1: none), step
    <out>/shard_00000/metrics.npy    float32 (N, 6K)  {train,val,test}_{loss,acc}_{class}

A shard is one fleet of seeds; it is written to a temporary directory, renamed into place, and
only then marked done in ``index.json`` (itself replaced atomically), so a killed build resumes
at the first unfinished shard. The train/test split of the hypernetwork is *by run* (seed):
the last ``test_fraction`` of the seeds are held out (``index["test_seeds"]``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hyperforget_jax import data, report, train
from hyperforget_jax import params as P_
from hyperforget_jax.errors import CheckpointError, ConfigError, NonFiniteError
from hyperforget_jax.models import Architecture, make_architecture
from hyperforget_jax.unlearn import gradtau as GT

FORMAT = "hyperforget-corpus/1"
KINDS = ("original", "gradtau", "retrain")
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """What the corpus holds. Defaults: G.pt's MNIST MLP on MNIST-5k, 32 seeds (4 held out),
    every single-class request, ∇τ with the paper's schedule.

    Attributes:
      arch: target architecture name.
      num_seeds, first_seed: the runs (seeds first_seed .. first_seed + num_seeds − 1).
      fleet_size: seeds trained together (one vmapped fleet = one shard).
      test_fraction: share of the seeds held out from hypernetwork training.
      epochs, batch_size, lr, weight_decay: the original / Retrain recipe (``TrainConfig``).
      forget_classes: the classes of the single-class requests (None: every class).
      class_pairs: number of two-class requests added to the single-class ones
        ((0, 1), (2, 3), … then further pairs in lexicographic order).
      save_every_epochs: checkpoint interval of original and retrain trajectories.
      save_every_steps: checkpoint interval of ∇τ trajectories (in steps).
      gradtau_batch_size: batch of both ∇τ streams.
      tau_mode: ∇τ's τ (``"unseen_class"`` or ``"chance"``; see the module docstring).
      repair_epochs, repair_lr, repair_alpha: the repair phase appended to each ∇τ trajectory
        (module docstring): forget-epochs (0: none), constant AdamW lr, constant α.
      retrain: also store Retrain trajectories (not used by hypernetwork training; the
        evaluation uses them as the reference).
    """

    arch: str = "gpt_mlp"
    num_seeds: int = 32
    first_seed: int = 0
    fleet_size: int = 8
    test_fraction: float = 0.125
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    forget_classes: tuple[int, ...] | None = None
    class_pairs: int = 0
    save_every_epochs: int = 2
    save_every_steps: int = 2
    gradtau_batch_size: int = 256
    tau_mode: str = "unseen_class"
    repair_epochs: int = 20
    repair_lr: float = 1e-3
    repair_alpha: float = 0.05
    retrain: bool = True

    def __post_init__(self):
        if self.num_seeds < 2 or self.fleet_size < 1:
            raise ConfigError(f"a corpus needs >= 2 seeds and fleet_size >= 1, got "
                              f"{self.num_seeds}, {self.fleet_size}")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")
        if min(self.epochs, self.save_every_epochs, self.save_every_steps) < 1:
            raise ConfigError("epochs and checkpoint intervals must be >= 1")
        if not 0 <= self.class_pairs <= 45:
            raise ConfigError(f"class_pairs must lie in [0, 45], got {self.class_pairs}")
        if self.forget_classes is not None:
            fc = tuple(int(c) for c in self.forget_classes)
            if not fc or len(set(fc)) != len(fc) or min(fc) < 0:
                raise ConfigError(f"forget_classes must be distinct class ids >= 0, got "
                                  f"{self.forget_classes}")
            object.__setattr__(self, "forget_classes", fc)
        if self.tau_mode not in ("unseen_class", "chance"):
            raise ConfigError(f"corpus tau_mode must be 'unseen_class' or 'chance', got "
                              f"{self.tau_mode!r}")

    @property
    def train_config(self) -> train.TrainConfig:
        return train.TrainConfig(arch=self.arch, epochs=self.epochs, batch_size=self.batch_size,
                                 lr=self.lr, weight_decay=self.weight_decay)

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.num_seeds))

    @property
    def test_seeds(self) -> list[int]:
        n = max(1, int(round(self.test_fraction * self.num_seeds)))
        return self.seeds[-n:]

    def requests(self, num_classes: int) -> list[tuple[int, ...]]:
        if self.forget_classes is not None and max(self.forget_classes) >= num_classes:
            raise ConfigError(f"forget_classes {list(self.forget_classes)}: the data has "
                              f"classes 0..{num_classes - 1} only")
        singles = [(c,) for c in (range(num_classes) if self.forget_classes is None
                                  else self.forget_classes)]
        disjoint = [(c, c + 1) for c in range(0, num_classes - 1, 2)]
        rest = [(a, b) for a in range(num_classes) for b in range(a + 1, num_classes)
                if (a, b) not in disjoint]
        return singles + (disjoint + rest)[: self.class_pairs]

    def to_json(self) -> dict:
        # Through JSON, so that tuples compare equal to the lists read back from index.json.
        return json.loads(json.dumps(dataclasses.asdict(self)))


def metric_columns(num_classes: int) -> list[str]:
    return [f"{s}_{m}_{c}" for s in SPLITS for m in ("loss", "acc") for c in range(num_classes)]


# --- per-checkpoint metrics ------------------------------------------------------------------

def make_metrics_fn(arch: Architecture, splits: data.Splits):
    """Jitted ``flat (M, P) -> (M, 6K)``: per-class mean loss and accuracy on train/val/test."""
    template = arch.param_shapes()
    k = arch.num_classes
    sets = [(jnp.asarray(ds.x), jnp.asarray(ds.y)) for ds in splits]
    onehots = [jax.nn.one_hot(y, k) / jnp.maximum(jax.nn.one_hot(y, k).sum(0), 1.0)
               for _, y in sets]

    def one(flat):
        p = P_.unflatten(flat, template)
        out = []
        for (x, y), w in zip(sets, onehots):
            logits = arch.apply(p, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            acc = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
            out += [loss @ w, acc @ w]
        return jnp.concatenate(out)

    fn = jax.jit(jax.vmap(one))

    def run(flat: np.ndarray, chunk: int = 64) -> np.ndarray:
        # Every call has shape (chunk, P) (the last one zero-padded): one compilation.
        out = []
        for i in range(0, len(flat), chunk):
            part = np.asarray(flat[i:i + chunk], np.float32)
            pad = np.zeros((chunk - len(part), part.shape[1]), np.float32)
            out.append(np.asarray(fn(jnp.asarray(np.concatenate([part, pad]))))[:len(part)])
        return np.concatenate(out)

    return run


# --- building one shard ----------------------------------------------------------------------

def _flat(params) -> np.ndarray:
    return np.asarray(jax.vmap(P_.flatten)(params))


def _train_trajectories(arch, cfg, x, y, init_params, member_seeds, member_idx_sets, every):
    """Vmapped training of members (seed, index set into x): returns [(epoch, flat (M, P))]."""
    tx = train.make_optimizer(cfg)
    # A copy: the compiled fleet epoch (train.fit_fleet's, shared by every shard) donates it.
    state = jax.vmap(lambda p: train.init_state(arch, tx, None, p))(
        jax.tree.map(jnp.copy, init_params))
    run = train.compiled_epoch(arch, (cfg.lr, cfg.weight_decay), True)
    saved = [(0, _flat(state.params))]
    for epoch in range(cfg.epochs):
        idx = np.stack([s_idx[data.batch_indices(s, epoch, len(s_idx), cfg.batch_size)]
                        for s, s_idx in zip(member_seeds, member_idx_sets)])
        first = int(state.step[0])
        state, m = run(state, x, y, jnp.asarray(idx))
        train.raise_if_nonfinite(m["finite"], first, epoch)
        if (epoch + 1) % every == 0 or epoch + 1 == cfg.epochs:
            saved.append((epoch + 1, _flat(state.params)))
    return saved


@functools.lru_cache(maxsize=64)
def _gradtau_chunk_fn(arch: Architecture, total_steps: int, lr: float, weight_decay: float,
                      final_lr_fraction: float, repair_lr: float | None):
    """(optimiser, jitted ``chunk(state, x, y, f_idx, r_idx, alphas, taus)``): a few ∇τ steps
    of every member under ``lax.scan`` (members vmapped). Cached, so that every shard reuses
    the compilation; ``repair_lr`` set: the repair phase's constant-lr AdamW."""
    if repair_lr is not None:
        tx = optax.adamw(repair_lr, weight_decay=weight_decay)
    else:
        tx = GT.make_gradtau_optimizer(total_steps, lr, weight_decay, final_lr_fraction)
    step = GT.make_gradtau_step(arch.apply, tx)

    def member(s, x, y, fi, ri, tau, a):
        return step(s, (x[fi], y[fi]), (x[ri], y[ri]), tau, a)

    @jax.jit
    def chunk(state, x, y, fi, ri, a, taus):
        return jax.lax.scan(lambda s, inp: jax.vmap(
            member, in_axes=(0, None, None, 0, 0, 0, None))(s, x, y, inp[0], inp[1], taus,
                                                             inp[2]), state, (fi, ri, a))

    return tx, chunk


def _gradtau_trajectories(arch, ccfg, x, y, init_flat, member_seeds, forget_sets, retain_sets,
                          taus, repair=False):
    """Vmapped ∇τ over members of equal |D_f|, |D_r|: returns [(step, flat (M, P))].

    ``repair``: the second phase (constant α = ``repair_alpha``, constant lr ``repair_lr``,
    ``repair_epochs`` forget-epochs) instead of the paper's schedule."""
    cfg = GT.GradTauConfig(batch_size=ccfg.gradtau_batch_size)
    nf, nr = len(forget_sets[0]), len(retain_sets[0])
    plans = [GT.plan_batches(nf, nr, cfg.batch_size, ccfg.repair_epochs if repair else None, s)
             for s in member_seeds]
    E, nb = plans[0][2], plans[0][0].shape[1]
    T = E * nb
    f_idx = np.stack([fs[p[0].reshape(T, -1)] for fs, p in zip(forget_sets, plans)], 1)
    r_idx = np.stack([rs[p[1].reshape(T, -1)] for rs, p in zip(retain_sets, plans)], 1)
    if repair:
        alphas = np.full(T, ccfg.repair_alpha, np.float32)
    else:
        alpha0, _ = GT.initial_alpha(nf, nf + nr, cfg.alpha_scale, cfg.alpha_max)
        alphas = GT.alpha_schedule(alpha0, T)
    tx, chunk = _gradtau_chunk_fn(arch, T, cfg.lr, cfg.weight_decay, cfg.final_lr_fraction,
                                  ccfg.repair_lr if repair else None)
    template = arch.param_shapes()
    state = jax.vmap(lambda f: train.init_state(arch, tx, None, P_.unflatten(f, template)))(
        jnp.asarray(init_flat))

    saved = [(0, np.asarray(init_flat))]
    for lo in range(0, T, ccfg.save_every_steps):
        hi = min(T, lo + ccfg.save_every_steps)
        state, m = chunk(state, x, y, jnp.asarray(f_idx[lo:hi]), jnp.asarray(r_idx[lo:hi]),
                         jnp.asarray(alphas[lo:hi]), jnp.asarray(taus, jnp.float32))
        if not np.asarray(m["finite"]).all():
            raise NonFiniteError(f"∇τ produced non-finite parameters in steps {lo}..{hi}; "
                                 "lower the ∇τ learning rate")
        saved.append((hi, _flat(state.params)))
    return saved


def build_shard(arch: Architecture, ccfg: CorpusConfig, splits: data.Splits, seeds: list[int],
                metrics_fn=None) -> dict[str, np.ndarray]:
    """All trajectories of one fleet of seeds: ``{"params", "rows", "metrics"}`` arrays."""
    cfg = ccfg.train_config
    k = arch.num_classes
    x, y = jnp.asarray(splits.train.x), jnp.asarray(splits.train.y)
    n = len(splits.train)
    requests = ccfg.requests(k)
    fsplits = [data.resolve_forget(splits.train, data.ForgetRequest(classes=r))
               for r in requests]
    inits = jax.vmap(arch.init)(jnp.stack([jax.random.key(s) for s in seeds]))
    rows, flats = [], []

    def add(kind, req, saved, member_seeds):
        for step_, flat in saved:
            flats.append(flat)
            rows.append(np.stack([np.asarray(member_seeds), np.full(len(member_seeds), kind),
                                  np.asarray(req), np.full(len(member_seeds), step_)], 1))

    orig = _train_trajectories(arch, cfg, x, y, inits, seeds, [np.arange(n)] * len(seeds),
                               ccfg.save_every_epochs)
    add(0, [-1] * len(seeds), orig, seeds)
    final = orig[-1][1]
    # Members of one vmapped group share |D_f| and |D_r| (equal shapes).
    groups: dict[tuple[int, int], list[int]] = {}
    for r, fs in enumerate(fsplits):
        groups.setdefault((len(fs.forget_idx), len(fs.retain_idx)), []).append(r)
    for reqs in groups.values():
        m_seed = [s for r in reqs for s in seeds]
        m_req = [r for r in reqs for _ in seeds]
        m_pos = [i for _ in reqs for i in range(len(seeds))]
        template = arch.param_shapes()
        taus = [GT.compute_tau(ccfg.tau_mode, arch.apply, P_.unflatten(jnp.asarray(final[i]),
                                                                        template),
                               splits.val, requests[r]) for i, r in zip(m_pos, m_req)]
        gt = _gradtau_trajectories(arch, ccfg, x, y, final[m_pos], m_seed,
                                   [fsplits[r].forget_idx for r in m_req],
                                   [fsplits[r].retain_idx for r in m_req], taus)
        if ccfg.repair_epochs:
            T = gt[-1][0]
            rep = _gradtau_trajectories(arch, ccfg, x, y, gt[-1][1],
                                        [s_ + 100_003 for s_ in m_seed],
                                        [fsplits[r].forget_idx for r in m_req],
                                        [fsplits[r].retain_idx for r in m_req], taus,
                                        repair=True)
            gt += [(T + st, f) for st, f in rep[1:]]
        add(1, m_req, gt, m_seed)
        if not ccfg.retrain:
            continue
        init_m = jax.tree.map(lambda a: a[np.asarray(m_pos)], inits)
        rt = _train_trajectories(arch, cfg, x, y, init_m, m_seed,
                                 [fsplits[r].retain_idx for r in m_req], ccfg.save_every_epochs)
        add(2, m_req, rt, m_seed)
    params = np.concatenate(flats).astype(np.float32)
    metrics_fn = metrics_fn or make_metrics_fn(arch, splits)
    return {"params": params, "rows": np.concatenate(rows).astype(np.int32),
            "metrics": metrics_fn(params).astype(np.float32)}


# --- the resumable build -----------------------------------------------------------------------

def _index_path(out: Path) -> Path:
    return out / "index.json"


def _new_index(arch: Architecture, ccfg: CorpusConfig, splits: data.Splits, dataset: str,
               split_seed: int) -> dict:
    k = arch.num_classes
    return {"format": FORMAT, "config": ccfg.to_json(), "architecture": arch.to_json(),
            "dataset": dataset, "split_seed": split_seed,
            "requests": [list(r) for r in ccfg.requests(k)],
            "kinds": list(KINDS), "row_columns": ["seed", "kind", "request", "step"],
            "metric_columns": metric_columns(k),
            "class_counts": {s: np.bincount(ds.y, minlength=k).tolist()
                             for s, ds in zip(SPLITS, splits)},
            "test_seeds": ccfg.test_seeds, "shards": {}}


def build_corpus(out_dir: str | os.PathLike, ccfg: CorpusConfig | None = None,
                 splits: data.Splits | None = None, dataset: str = "mnist5k",
                 split_seed: int = 0, progress: bool = True) -> dict:
    """Builds (or resumes) a corpus in ``out_dir``; returns build statistics.

    Args:
      out_dir: corpus directory (created).
      ccfg: :class:`CorpusConfig`; must equal the stored one when resuming.
      splits: the data (default: MNIST-5k, ``make_splits(seed=split_seed)``).
      dataset, split_seed: recorded in the index.
      progress: tqdm bar over shards.

    Returns:
      ``{"checkpoints", "seconds", "checkpoints_per_second", "shards_built", "shards_skipped"}``
      (this call only) and ``{"total_checkpoints", "total_build_seconds",
      "total_checkpoints_per_second"}`` (every completed shard, from the index).

    Raises:
      CheckpointError: ``out_dir`` holds a corpus built with another config or format.
    """
    ccfg = ccfg or CorpusConfig()
    splits = splits or data.make_splits(data.load_mnist5k(), seed=split_seed)
    arch = make_architecture(ccfg.arch, splits.train.x.shape[1:], splits.train.num_classes)
    out = report.prepare_dir(out_dir)
    index = _new_index(arch, ccfg, splits, dataset, split_seed)
    if _index_path(out).exists():
        old = _read_index(out)
        for key in ("format", "config", "architecture", "requests", "class_counts"):
            if old.get(key) != index[key]:
                raise CheckpointError(f"{out} holds a corpus built with a different {key}; "
                                      "use another --out directory or the same settings")
        index = old
    seeds = ccfg.seeds
    fleets = [seeds[i:i + ccfg.fleet_size] for i in range(0, len(seeds), ccfg.fleet_size)]
    todo = [i for i in range(len(fleets)) if not index["shards"].get(f"{i:05d}", {}).get("done")]
    report.write_json(_index_path(out), index)
    t0, count = time.perf_counter(), 0
    metrics_fn = make_metrics_fn(arch, splits)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(fleets), initial=len(fleets) - len(todo), desc="corpus shards",
                   unit="shard")
    for i in todo:
        ts = time.perf_counter()
        arrays = build_shard(arch, ccfg, splits, fleets[i], metrics_fn)
        name = f"shard_{i:05d}"
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for key, arr in arrays.items():
            np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
        shutil.rmtree(out / name, ignore_errors=True)
        os.replace(tmp, out / name)
        n = len(arrays["rows"])
        count += n
        index["shards"][f"{i:05d}"] = {"dir": name, "seeds": fleets[i], "rows": n, "done": True,
                                       "seconds": round(time.perf_counter() - ts, 2)}
        report.write_json(_index_path(out), index)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ckpt_per_s=f"{count / (time.perf_counter() - t0):.0f}")
    if bar is not None:
        bar.close()
    secs = time.perf_counter() - t0
    done = [v for v in index["shards"].values() if v.get("done")]
    all_n, all_s = sum(v["rows"] for v in done), sum(v["seconds"] for v in done)
    return {"checkpoints": count, "seconds": secs,
            "checkpoints_per_second": count / secs if count else 0.0,
            "shards_built": len(todo), "shards_skipped": len(fleets) - len(todo),
            # The whole corpus, from the per-shard build times in the index (also meaningful
            # when this call resumed or found every shard done).
            "total_checkpoints": all_n, "total_build_seconds": all_s,
            "total_checkpoints_per_second": all_n / all_s if all_s else 0.0}


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(_index_path(path).read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"no corpus in {path} (index.json missing); build one with "
                              f"`hyperforget corpus --out {path}`") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}/index.json is corrupt ({e}); rebuild the corpus") from e
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} corpus (format "
                              f"{index.get('format')!r})")
    return index


# --- reading -------------------------------------------------------------------------------------

class Corpus:
    """Read-only view of a built corpus; parameters stay memory-mapped.

    Attributes:
      index: the JSON index.
      arch: the target :class:`Architecture`.
      rows: int32 (N, 5): seed, kind, request, step, shard (all completed shards).
      metrics: float32 (N, 6K) per-class metrics (small, loaded).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().absolute()
        self.index = _read_index(self.path)
        self.arch = Architecture.from_json(self.index["architecture"])
        self._params, rows, metrics = [], [], []
        done = [v for _, v in sorted(self.index["shards"].items()) if v.get("done")]
        if not done:
            raise CheckpointError(f"corpus {self.path} has no completed shard; run "
                                  f"`hyperforget corpus --out {self.path}` to (re)build it")
        for sid, sh in enumerate(done):
            d = self.path / sh["dir"]
            try:
                p = np.load(d / "params.npy", mmap_mode="r", allow_pickle=False)
                r = np.load(d / "rows.npy", allow_pickle=False)
                m = np.load(d / "metrics.npy", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"corpus shard {d} is unreadable ({e}); delete it and its "
                                      "entry in index.json, then resume the build") from e
            if p.shape != (len(r), self.arch.param_count) or len(m) != len(r):
                raise CheckpointError(f"corpus shard {d} is truncated: params {p.shape}, rows "
                                      f"{r.shape}, metrics {m.shape}; rebuild it")
            self._params.append(p)
            rows.append(np.concatenate([r, np.full((len(r), 1), sid, np.int32)], 1))
            metrics.append(m)
        self.rows = np.concatenate(rows)
        self.metrics = np.concatenate(metrics)
        self._offsets = np.cumsum([0] + [len(p) for p in self._params])
        self.requests = [tuple(r) for r in self.index["requests"]]
        self.num_classes = self.arch.num_classes

    def __len__(self) -> int:
        return len(self.rows)

    def params(self, rows: np.ndarray) -> np.ndarray:
        """Flat parameters (len(rows), P) of global row ids (reads only those rows)."""
        rows = np.asarray(rows)
        out = np.empty((len(rows), self.arch.param_count), np.float32)
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        for s in np.unique(shard):
            m = shard == s
            out[m] = self._params[s][rows[m] - self._offsets[s]]
        return out

    def is_test(self, rows: np.ndarray | None = None) -> np.ndarray:
        seeds = self.rows[:, 0] if rows is None else self.rows[np.asarray(rows), 0]
        return np.isin(seeds, self.index["test_seeds"])

    def trajectories(self, kind: str = "gradtau", split: str = "train"
                     ) -> list[tuple[int, int, np.ndarray]]:
        """[(seed, request id, row ids sorted by step)] of one kind, for the train or test runs."""
        k = KINDS.index(kind)
        sel = self.rows[:, 1] == k
        sel &= self.is_test() if split == "test" else ~self.is_test()
        out = {}
        for i in np.flatnonzero(sel):
            out.setdefault((int(self.rows[i, 0]), int(self.rows[i, 2])), []).append(i)
        return [(s, r, np.asarray(sorted(v, key=lambda i: self.rows[i, 3])))
                for (s, r), v in sorted(out.items())]

    def request_metrics(self, rows: np.ndarray, classes: tuple[int, ...] | np.ndarray,
                        split: str = "train") -> dict[str, np.ndarray]:
        """Loss / accuracy on D_f (the ``classes``) and D_r (the others) of one split, from the
        per-class metrics weighted by class counts: ``forget_loss``, ``forget_acc``,
        ``retain_loss``, ``retain_acc`` arrays of len(rows)."""
        k = self.num_classes
        counts = np.asarray(self.index["class_counts"][split], np.float64)
        mask = np.zeros(k, bool)
        mask[list(classes)] = True
        s = SPLITS.index(split)
        m = self.metrics[np.asarray(rows)]
        loss, acc = m[:, 2 * s * k:(2 * s + 1) * k], m[:, (2 * s + 1) * k:(2 * s + 2) * k]
        wf, wr = counts * mask / (counts * mask).sum(), counts * ~mask / (counts * ~mask).sum()
        return {"forget_loss": loss @ wf, "forget_acc": acc @ wf,
                "retain_loss": loss @ wr, "retain_acc": acc @ wr}

    def find(self, seed: int, kind: str, request: int = -1, step: int | None = None) -> int:
        """Row id of one checkpoint (the last step when ``step`` is None)."""
        sel = np.flatnonzero((self.rows[:, 0] == seed) & (self.rows[:, 1] == KINDS.index(kind))
                             & (self.rows[:, 2] == request))
        if not len(sel):
            raise CheckpointError(f"corpus has no {kind} checkpoint for seed {seed}, request "
                                  f"{request}")
        if step is None:
            return int(sel[np.argmax(self.rows[sel, 3])])
        hit = sel[self.rows[sel, 3] == step]
        if not len(hit):
            raise CheckpointError(f"no {kind} checkpoint at step {step} for seed {seed}")
        return int(hit[0])
