"""The corpus's ``index.json`` and shard arrays: the request list, and validation on load.

A corpus is read back by code that indexes into it, so a file that is valid JSON with the wrong
contents (``[]``, no ``"shards"``, ``"requests": [[42]]``, a ``metrics.npy`` of the wrong shape)
must fail with a :class:`~hyperforget_jax.errors.CheckpointError` naming the file and the field,
not with a KeyError deep inside the hypernetwork's training (issue 16, item 4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hyperforget_jax.config import SEED_LIMIT
from hyperforget_jax.errors import CheckpointError, shell_quote
from hyperforget_jax.rundir import array_fingerprint

FORMAT = "hyperforget-corpus/2"
SPLITS = ("train", "val", "test")
# Shard arrays: name -> (dtype kind, columns: None = P, "Q", "6K", or an int).
SHARD_ARRAYS = {"originals": ("f", "P"), "original_metrics": ("f", "6K"),
                "trajectory": ("f", "Q"), "rows": ("i", 3), "metrics": ("f", "6K")}


def metric_columns(num_classes: int) -> list[str]:
    return [f"{s}_{m}_{c}" for s in SPLITS for m in ("loss", "acc") for c in range(num_classes)]


def requests(forget_classes, class_pairs: int, num_classes: int) -> list[tuple[int, ...]]:
    """Single-class requests (every class, or ``forget_classes``) then ``class_pairs``
    two-class requests: the disjoint pairs (0, 1), (2, 3), … first (every class occurs in a
    pair), then the other pairs in a fixed shuffled order (so the pairs a corpus leaves out are
    spread over the classes, not all among the high class ids)."""
    from hyperforget_jax.errors import ConfigError

    if forget_classes is not None and max(forget_classes) >= num_classes:
        raise ConfigError(f"forget_classes {list(forget_classes)}: the data has classes "
                          f"0..{num_classes - 1} only")
    if class_pairs and num_classes < 3:
        # The pair would forget every class: no retained images, NaN retain losses, and a
        # hypernetwork that cannot be trained on the corpus.
        raise ConfigError(f"class_pairs {class_pairs}: with {num_classes} classes a two-class "
                          "request forgets every class and leaves nothing to retain; pass "
                          "--pairs 0 (class_pairs=0)")
    singles = [(c,) for c in (range(num_classes) if forget_classes is None
                              else forget_classes)]
    disjoint = [(c, c + 1) for c in range(0, num_classes - 1, 2)]
    rest = [(a, b) for a in range(num_classes) for b in range(a + 1, num_classes)
            if (a, b) not in disjoint]
    order = np.random.default_rng(0).permutation(len(rest))
    return singles + (disjoint + [rest[i] for i in order])[:class_pairs]


def index_path(out: Path) -> Path:
    return Path(out) / "index.json"


def _bad(path: Path, field: str, why: str) -> CheckpointError:
    return CheckpointError(f"{index_path(path)}: field {field!r} {why}; the corpus is damaged "
                           f"or not a {FORMAT} corpus: rebuild it with `hyperforget corpus "
                           f"--out {shell_quote(path)}`")


def _int_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                       for x in v)


def fleet_seeds(first_seed: int, num_seeds: int, fleet_size: int) -> list[list[int]]:
    """The seeds of each shard, in shard order: ``fleet_size`` consecutive seeds each (the
    last may hold fewer)."""
    return [shard_seeds(first_seed, num_seeds, fleet_size, i)
            for i in range(shard_count(num_seeds, fleet_size))]


def shard_count(num_seeds: int, fleet_size: int) -> int:
    return -(-max(num_seeds, 0) // fleet_size)


def shard_seeds(first_seed: int, num_seeds: int, fleet_size: int, i: int) -> list[int]:
    """The seeds of shard ``i`` alone (:func:`fleet_seeds`' ``i``-th list)."""
    start = first_seed + i * fleet_size
    return list(range(start, min(start + fleet_size, first_seed + num_seeds)))


def read_index(path: Path) -> dict:
    """Reads and validates ``index.json`` (structure and types; the requests against the
    architecture are checked by :func:`validate_requests`)."""
    path = Path(path)
    try:
        index = json.loads(index_path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise CheckpointError(f"no corpus in {path} (index.json missing); build one with "
                              f"`hyperforget corpus --out {shell_quote(path)}`") from e
    except NotADirectoryError as e:     # a file given as the corpus (or a folder under one)
        raise CheckpointError(f"no corpus in {path} (not a directory); pass the directory "
                              "that `hyperforget corpus --out` wrote") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}/index.json is corrupt ({e}); rebuild the corpus") from e
    if not isinstance(index, dict):
        raise CheckpointError(f"{index_path(path)} holds a JSON {type(index).__name__}, not "
                              f"a {FORMAT} corpus index; rebuild it with `hyperforget corpus "
                              f"--out {shell_quote(path)}`")
    if index.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} corpus (format "
                              f"{index.get('format')!r}); rebuild it with this version's "
                              f"`hyperforget corpus --out DIR`")
    for key, kind in (("config", dict), ("architecture", dict), ("requests", list),
                      ("trained_tensors", list), ("class_counts", dict),
                      ("test_seeds", list), ("shards", dict)):
        if key not in index:
            raise _bad(path, key, "is missing")
        if not isinstance(index[key], kind):
            raise _bad(path, key, f"must be a JSON {'object' if kind is dict else 'array'}")
    if not index["requests"] or not all(_int_list(r) and r for r in index["requests"]):
        raise _bad(path, "requests", "must be a non-empty list of lists of class ids")
    cfg = index["config"]
    if not _int_list([cfg.get("first_seed"), cfg.get("num_seeds"), cfg.get("fleet_size")]) \
            or cfg["fleet_size"] < 1 or min(cfg["first_seed"], cfg["num_seeds"]) < 0 \
            or cfg["first_seed"] + cfg["num_seeds"] > SEED_LIMIT:
        # (as CorpusConfig refuses them: a damaged num_seeds of 10**12 listed every seed, a
        # MemoryError)
        raise _bad(path, "config.first_seed/num_seeds/fleet_size", "must be integers "
                   "(first_seed, num_seeds >= 0, first_seed + num_seeds <= 2**32, "
                   "fleet_size >= 1)")
    # Each listed shard's seeds alone, not the whole list.
    n_shards = shard_count(cfg["num_seeds"], cfg["fleet_size"])

    def fleet(sid: str) -> list[int] | None:
        i = int(sid) if sid.isascii() and sid.isdigit() else -1
        return (shard_seeds(cfg["first_seed"], cfg["num_seeds"], cfg["fleet_size"], i)
                if 0 <= i < n_shards and sid == f"{i:05d}" else None)
    if not _int_list(index["test_seeds"]) or not _int_list(index["trained_tensors"]):
        raise _bad(path, "test_seeds/trained_tensors", "must be lists of integers")
    for s in SPLITS:
        if not _int_list(index["class_counts"].get(s)):
            raise _bad(path, f"class_counts.{s}", "must be a list of per-class counts")
    for sid, sh in index["shards"].items():
        if not isinstance(sh, dict):
            raise _bad(path, f"shards.{sid}", "must be an object")
        if sh.get("done"):
            if not isinstance(sh.get("dir"), str) or "/" in sh["dir"] or sh["dir"] in ("", ".",
                                                                                     ".."):
                raise _bad(path, f"shards.{sid}.dir", "must name a shard directory")
            if not _int_list(sh.get("seeds")) or not sh["seeds"]:
                raise _bad(path, f"shards.{sid}.seeds", "must be a non-empty list of seeds")
            if not isinstance(sh.get("rows"), int) or sh["rows"] < 0:
                raise _bad(path, f"shards.{sid}.rows", "must be a row count")
            if fleet(sid) != sh["seeds"] or sh["dir"] != f"shard_{sid}":
                # An entry merged in by hand (another corpus's shard, or one listed twice)
                # was read as part of this corpus: its held-out test network a training one,
                # two networks counted twice.
                raise CheckpointError(
                    f"{index_path(path)}: shard {sid} (seeds {sh['seeds']}, directory "
                    f"{sh['dir']!r}) is not one of this corpus's fleets ("
                    + (f"its config puts seeds {fleet(sid)} in shard_{sid}" if fleet(sid)
                       else f"its config has {n_shards} shards") +
                    f"): merged in from another corpus? Delete the entry "
                    f"and its directory, then resume the build with `hyperforget corpus "
                    f"--out {shell_quote(path)}`")
    return index


def validate_requests(index: dict, num_classes: int, path: Path) -> None:
    for r in index["requests"]:
        if min(r) < 0 or max(r) >= num_classes or len(set(r)) != len(r):
            raise _bad(path, "requests", f"holds {r}: class ids must be distinct and lie in "
                                         f"0..{num_classes - 1}")
    counts = index["class_counts"]
    if any(len(counts[s]) != num_classes for s in SPLITS):
        raise _bad(path, "class_counts", f"must have {num_classes} entries per split")
    if not 0 <= min(index["trained_tensors"], default=-1):
        raise _bad(path, "trained_tensors", "must list tensor ids")


def shard_digest(arrays: dict) -> str:
    """A fingerprint of a shard's arrays (in :data:`SHARD_ARRAYS` order), kept in its index
    entry: a shard is tied to the seeds and rows the index records for it."""
    return array_fingerprint(*(np.asarray(arrays[k]) for k in SHARD_ARRAYS))


def load_shards(path: Path, index: dict, num_params: int, num_trained: int,
                num_requests: int) -> list[tuple[dict, dict]]:
    """[(shard entry, {array name: array})] of every completed shard, each array checked
    against its expected dtype and shape."""
    k6 = len(SPLITS) * 2 * len(index["class_counts"]["train"])
    cols = {"P": num_params, "Q": num_trained, "6K": k6}
    done = [v for _, v in sorted(index["shards"].items()) if v.get("done")]
    if not done:
        raise CheckpointError(f"corpus {path} has no completed shard; run "
                              f"`hyperforget corpus --out {shell_quote(path)}` to (re)build it")
    out = []
    for sh in done:
        d = path / sh["dir"]
        arrays = {}
        for name, (kind, c) in SHARD_ARRAYS.items():
            f = d / f"{name}.npy"
            try:
                # Mapped, not read: the shape and dtype are checked before anything is
                # allocated. A header claiming more rows than the file holds (a bit flip, a
                # crafted shard) made np.load allocate from it: a MemoryError traceback.
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CheckpointError(f"corpus shard file {f} is unreadable ({e}); delete "
                                      f"{d} and resume the build") from e
            n = len(sh["seeds"]) if name.startswith("original") else sh["rows"]
            want = (n, cols.get(c, c))
            if a.dtype.kind != kind or a.shape != want:
                raise CheckpointError(f"corpus shard file {f} has {a.dtype} {a.shape}, "
                                      f"expected {'float' if kind == 'f' else 'int'} {want} "
                                      f"(index.json: {n} rows); the shard is truncated or "
                                      f"foreign: delete {d} and resume the build")
            arrays[name] = np.array(a)
            if kind == "f" and not np.isfinite(arrays[name]).all():
                # A build refuses NaN networks and metrics, so this is damage. One NaN in
                # trajectory.npy made its tensor's change scale NaN, which the weight space
                # read as "not diffused": every sample kept the start's values there.
                raise CheckpointError(f"corpus shard file {f} holds NaN/inf values (a build "
                                      f"never writes them); the shard is damaged: delete {d} "
                                      "and resume the build")
        r = arrays["rows"]
        if len(r) and (r[:, 0].min() < 0 or r[:, 0].max() >= len(sh["seeds"])
                       or r[:, 1].min() < 0 or r[:, 1].max() >= num_requests
                       or r[:, 2].min() < 1):
            raise CheckpointError(f"corpus shard file {d / 'rows.npy'} refers to originals, "
                                  f"requests or steps that do not exist; delete {d} and "
                                  "resume the build")
        if "digest" in sh and shard_digest(arrays) != sh["digest"]:
            # (shards written before the digest have none) Two shards swapped, or one copied
            # in from another corpus, loaded under the index's seeds: another seed's network
            # as "seed S", a held-out test network among the training ones.
            raise CheckpointError(f"corpus shard {d} is not the shard index.json records "
                                  "(swapped, copied in from another corpus, or edited); "
                                  f"delete {d} and resume the build")
        out.append((sh, arrays))
    return out
