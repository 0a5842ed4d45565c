"""Argument groups and helpers shared by the CLI subcommands.

Flags of config fields are generated from the config dataclasses (:mod:`..configflags`); every
directory a command writes is claimed with :func:`hyperforget_jax.rundir.open_run` (identity,
lock, never over an input); every run a command reads is checked with :func:`load_run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax

from hyperforget_jax import configflags, data, report, rundir
from hyperforget_jax.checkpoint import (Checkpointer, NoCheckpointError, default_device,
                                        load_params, load_params_meta)
from hyperforget_jax.cli import ListInOne
from hyperforget_jax.config import expand_user
from hyperforget_jax.configflags import finite_float, seed_int
from hyperforget_jax.errors import (CheckpointError, ConfigError, DataError, ForgetRequestError,
                                    RunDirError, shell_quote)
from hyperforget_jax.models import Architecture, is_import_path, load_model, make_architecture
from hyperforget_jax.train import TrainConfig, fit, init_state, make_optimizer


# --------------------------------------------------------------------------- argument groups


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist5k", choices=data.DATASETS,
                   help="mnist5k (embedded, default), digits (sklearn) or a prepared "
                        "tensorflow-datasets set")
    g.add_argument("--data-dir", type=path_arg, default=None,
                   help="tensorflow-datasets data_dir (default: $TFDS_DATA_DIR or "
                        "~/tensorflow_datasets)")
    g.add_argument("--split-seed", type=seed_int, default=0,
                   help="seed of the train/val/test split (default 0)")


def path_arg(text: str) -> str:
    """argparse type of every path flag: a blank value (``--out "$OUT"`` with ``OUT`` unset) is
    refused. As a path, "" is the current directory (``train --run-dir ""`` wrote its run
    there), and where a missing value means "not given" (``--out``, ``--retrain-dir``) the
    command went on without it, exit code 0."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r} (an unset shell "
                                         "variable?)")
    try:
        # `~nosuchuser/run`: pathlib's expanduser raised a RuntimeError traceback in most
        # commands, while `train` wrote into a literal ./~nosuchuser (stop 63).
        expand_user(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def class_id(text: str) -> int:
    """argparse type of ``--forget-class``: one non-negative class id per value."""
    if "," in text:
        raise argparse.ArgumentTypeError(
            f"classes are space-separated, got {text!r}: write --forget-class "
            f"{' '.join(s.strip() for s in text.split(',') if s.strip())}")
    try:
        return configflags.integer(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a class id (an integer), got {text!r}") \
            from None


def add_request_args(p: argparse.ArgumentParser, required: bool = True,
                     title: str | None = None) -> None:
    g = p.add_argument_group(title or ("forget request (exactly one)" if required else
                                       "forget request (optional, at most one)"))
    m = g.add_mutually_exclusive_group(required=required)
    m.add_argument("--forget-class", type=class_id, nargs="+", metavar="C",
                   help="forget every training sample of these classes (space-separated)")
    m.add_argument("--forget-fraction", type=finite_float, metavar="F",
                   help="forget a random fraction F in (0, 1) of the training set")
    m.add_argument("--forget-indices", metavar="I,J,...", action=ListInOne,
                   help="comma-separated training-set indices to forget")
    g.add_argument("--forget-seed", type=seed_int, default=None,
                   help="seed of --forget-fraction's random subset (default 0)")


def add_output_args(p: argparse.ArgumentParser, quiet: bool = True) -> None:
    """``--json`` (machine-readable stdout) and ``--quiet``. Every command takes ``--quiet``, so
    a script can pass it to all of them; ``quiet=False`` marks a command without progress
    output, where it changes nothing."""
    p.add_argument("--json", action="store_true",
                   help="print the results as one JSON object on stdout instead of the "
                        "markdown report (progress and errors stay on stderr)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output" if quiet else
                        "accepted for scripts; this command prints no progress")


def add_train_args(p: argparse.ArgumentParser, title: str = "training recipe",
                   rename: dict | None = None) -> configflags.ConfigFlags:
    """One flag per :class:`TrainConfig` field (``--arch``, ``--epochs``, ``--lr``, ...)."""
    flags = configflags.add_config_flags(
        p, TrainConfig, title=title, rename=rename,
        help_extra={"arch": "(registered: see hyperforget_jax.models.ARCHITECTURES)"})
    p.set_defaults(_train_flags=flags)
    return flags


def train_config_from_args(args) -> TrainConfig:
    cfg = args._train_flags.build(args)
    refuse_zero_epochs(cfg.epochs)
    return cfg


def refuse_zero_epochs(epochs: int) -> None:
    """A command-line training run of 0 epochs would write a run with no checkpoint, which
    every reader refuses with "train first" (the API's ``epochs=0`` returns the initialisation
    on purpose)."""
    if epochs < 1:
        raise ConfigError(f"--epochs {epochs} trains nothing (the run would hold no model); "
                          "pass --epochs 1 or more")


def progress(args) -> bool:
    """Progress bars on stderr: off with ``--quiet``, and off when stderr is not a terminal (a
    batch job, ``nohup``, CI: stderr redirected to a file), as ``unlearn``'s stage line is.
    There tqdm's carriage-return frames would pile up on one line of the log, about ten a
    second (≈ 3 MB an hour of ``hypertrain``), unreadable by ``less`` or ``tail``; the results
    (stdout) and warnings and errors (stderr) are written as before."""
    isatty = getattr(sys.stderr, "isatty", None)
    return not getattr(args, "quiet", False) and callable(isatty) and bool(isatty())


# --------------------------------------------------------------------------- data and requests


def load_splits(args) -> data.Splits:
    return data.make_splits(data.load_dataset(args.dataset, args.data_dir), seed=args.split_seed)


def request_from_args(args) -> data.ForgetRequest | None:
    seed = getattr(args, "forget_seed", None)
    if seed is not None and getattr(args, "forget_fraction", None) is None:
        # It draws a fraction's random subset: with a class or index request (or a request
        # read from the run) it was dropped without a word.
        raise ConfigError(f"--forget-seed {seed} would be ignored: it draws the random subset "
                          "of --forget-fraction, and this command has none; drop --forget-seed")
    if getattr(args, "forget_class", None) is not None:
        return data.ForgetRequest(classes=tuple(args.forget_class))
    if getattr(args, "forget_fraction", None) is not None:
        return data.ForgetRequest(fraction=args.forget_fraction, seed=seed or 0)
    if getattr(args, "forget_indices", None) is not None:
        parts = [s.strip() for s in args.forget_indices.split(",")]
        if any(parts) and not all(parts):       # "1,,2" or "5,": a typo, not fewer items
            raise ConfigError(f"--forget-indices {args.forget_indices!r} has an empty item; "
                              "pass comma-separated integers such as 1,2,3")
        try:    # ("1_0,2_5" read as rows 10 and 25, stop 64)
            idx = tuple(configflags.integer(s) for s in parts if s)
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"--forget-indices must be comma-separated integers, got "
                              f"{args.forget_indices!r}") from e
        return data.ForgetRequest(indices=idx)
    return None


def same_request(a: data.ForgetRequest, b: data.ForgetRequest) -> bool:
    """Whether two requests are one (classes 4 3 and 3 4 are one forget set, and so are
    ``--forget-indices 3,5`` and ``5,3``: an index request in another order was refused as
    "a run for another request")."""
    def canonical(req: data.ForgetRequest) -> dict:
        j = req.to_json()
        return {**j, **{k: sorted(j[k]) for k in ("classes", "indices") if j.get(k)}}

    return canonical(a) == canonical(b)


def refuse_other_request(got: dict | None, request: data.ForgetRequest, what: str,
                         fix: str) -> None:
    """ForgetRequestError ``"<what> for <got>, not for <request>; <fix>"`` when a run's recorded
    request (its JSON ``got``; None: a run of no request) is another one. The requests are named
    by ``describe()``, or by their JSON where that is the same text ("random 10%" for any
    --forget-seed, "5 items" for any 5 indices: "for random 10%, not for random 10%")."""
    if not got:
        return
    was = data.ForgetRequest.from_json(got)
    if same_request(was, request):
        return
    a, b = was.describe(), request.describe()
    if a == b:
        a, b = json.dumps(was.to_json()), json.dumps(request.to_json())
    raise ForgetRequestError(f"{what} for {a}, not for {b}; {fix}")


def architecture_for(arch_name: str, splits: data.Splits) -> Architecture:
    """A registered architecture (``mlp``), or a user's model by import path
    (``--arch mypkg.models:Net``, loaded by ``models.load_model``)."""
    shape, k = splits.train.x.shape[1:], splits.train.num_classes
    if ":" in arch_name:
        return load_model(arch_name, shape, k)
    return make_architecture(arch_name, shape, k)


def data_identity(args, splits: data.Splits) -> dict:
    """The data part of a run identity: dataset name, split seed and a fingerprint of the
    arrays (so a changed dataset under the same name is noticed)."""
    return {"dataset": args.dataset, "split_seed": args.split_seed,
            "data": rundir.data_fingerprint(splits)}


def run_meta(args, arch: Architecture, cfg: TrainConfig, request=None, role="original") -> dict:
    return {"role": role, "architecture": arch.to_json(), "train_config": cfg.to_json(),
            "dataset": args.dataset, "split_seed": args.split_seed,
            "request": request.to_json() if request is not None else None}


def train_identity(args, splits, arch: Architecture, cfg: TrainConfig, request, role) -> dict:
    """Identity of a ``train`` / ``retrain`` run: role, architecture, the whole recipe, the
    data and the forget request."""
    return {"role": role, "architecture": arch.to_json(), "train_config": cfg.to_json(),
            **data_identity(args, splits),
            "request": request.to_json() if request is not None else None}


# --------------------------------------------------------------------------- training


def train_run(run_dir: Path, arch: Architecture, train_ds: data.Dataset, cfg: TrainConfig,
              meta: dict, progress: bool = True) -> tuple[Any, float, int, float]:
    """Trains (resuming from ``run_dir/checkpoints`` if present) and returns ``(params,
    seconds, start, train_seconds)``: this call's time, the epochs already done when it
    started (0: a fresh run; ``cfg.epochs``: a finished run, reloaded), and the whole run's
    training time as its last checkpoint records it (``fit``'s epochs summed over every
    resume; for checkpoints written before that record existed, this call's time). The caller
    has claimed ``run_dir`` with :func:`rundir.open_run`, which compared its run.json; the
    checkpoints' own record is compared with ``meta`` here (a folder copied in)."""
    t0 = time.perf_counter()
    with Checkpointer(run_dir / "checkpoints", max_to_keep=2) as ckpt:
        start = int(ckpt.latest_step() or 0)
        if ckpt.latest_step() is not None:
            # An unlearn run's checkpoints copied in (the same TrainState, the original's
            # recipe) were resumed as this run's, and were its "original" from then on.
            _refuse_checkpoints_of_another_run(run_dir, meta, ckpt.restore_meta())
        state, _ = fit(arch, train_ds, cfg, checkpointer=ckpt, meta=meta, progress=progress)
        ckpt.wait_until_finished()
        total = ckpt.restore_meta().get("train_seconds")
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - t0
    return state.params, seconds, start, (seconds if total is None else float(total))


# --------------------------------------------------------------------------- reading runs


def _legacy_train_identity(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("role", "architecture", "train_config", "dataset",
                                     "split_seed", "request")}


def legacy_train_identity(path: Path) -> dict | None:
    """For run directories written before ``run.json`` existed: the identity fields their
    checkpoint metadata holds (so they can still be resumed), or None."""
    if not (path / "checkpoints").is_dir():
        return None
    with Checkpointer(path / "checkpoints", read_only=True) as ckpt:
        if ckpt.latest_step() is None:
            return None
        meta = ckpt.restore_meta()
    return _legacy_train_identity(meta) if "train_config" in meta else None


def data_flags(args) -> str:
    """The data flags of ``args`` that differ from their defaults, as a command line's tail:
    a command advised in a refusal must train on the data the refused command reads."""
    out = "" if args.dataset == "mnist5k" else f" --dataset {args.dataset}"
    if getattr(args, "data_dir", None) is not None:
        out += f" --data-dir {shell_quote(args.data_dir)}"
    return out + ("" if args.split_seed == 0 else f" --split-seed {args.split_seed}")


def recipe_flags(train_config: dict | None) -> str:
    """The fields of a stored ``TrainConfig`` other than their defaults, as the flags of
    ``train`` / ``retrain`` (a Retrain is the original's recipe on D_r)."""
    defaults = TrainConfig()
    out = ""
    for f in dataclasses.fields(TrainConfig):
        v = (train_config or {}).get(f.name)
        if v is not None and v != getattr(defaults, f.name):
            out += f" --{f.name.replace('_', '-')} {shell_quote(str(v))}"
    return out


def request_flags(request: data.ForgetRequest) -> str:
    """``request`` as the flags that ask for it (the tail of an advised command line)."""
    j = request.to_json()
    if j.get("classes"):
        return " --forget-class " + " ".join(map(str, j["classes"]))
    if j.get("indices"):
        return " --forget-indices " + ",".join(map(str, j["indices"]))
    return f" --forget-fraction {j['fraction']} --forget-seed {j['seed']}"


def load_run(run_dir: str | Path, flag: str = "--run-dir", first: str | None = None
             ) -> tuple[Architecture, Any, dict]:
    """Loads the final parameters of a classifier run (``train``, ``retrain``, ``unlearn`` or
    ``sample`` output). Returns (architecture, params, meta); ``meta["identity"]`` is the run's
    identity (``run.json``, or what older runs' metadata records). ``first``: the command that
    would write the missing run (default ``hyperforget train --run-dir <run_dir>``), advised
    when ``run_dir`` holds none.

    Raises:
      CheckpointError: nothing loadable there, or an unfinished training run.
      RunDirError: another process is writing it right now.
    """
    run_dir = Path(run_dir).expanduser().absolute()
    rundir.check_readable(run_dir)
    ident = rundir.read_identity(run_dir)
    role = (ident or {}).get("role")
    if isinstance(role, str) and role.startswith("gan-"):
        # Its checkpoint would be refused as one "with no hyperforget run metadata".
        raise CheckpointError(f"{flag} {run_dir} holds {rundir._a(role)} run, not a classifier; "
                              "GAN runs are read by `hyperforget gan evaluate` and `gan "
                              "unlearn`, this command takes a run written by `hyperforget "
                              "train`, `retrain`, `unlearn` or `sample`")
    first = first or f"hyperforget train --run-dir {shell_quote(run_dir)}"
    if (run_dir / "checkpoints").is_dir():
        try:
            arch, params, meta = _load_checkpointed(run_dir)
            _refuse_checkpoints_of_another_run(run_dir, ident, meta)
        except NoCheckpointError as e:
            # A run stopped before its first save. The Checkpointer's own advice ("train
            # first", --run-dir) was wrong for a --retrain-dir.
            raise NoCheckpointError(f"{flag} {run_dir} holds no saved model yet (its run "
                                    "stopped before its first checkpoint); rerun the command "
                                    f"that started it with the same flags, or run `{first}`"
                                    ) from e
    elif (run_dir / "params").is_dir():
        arch, params, meta = _load_params_dir(run_dir)
    else:
        if role:
            raise CheckpointError(f"{flag} {run_dir} holds {rundir._a(role)} output, not a "
                                  "classifier; pass a run written by `hyperforget train`, "
                                  "`retrain`, `unlearn` or `sample`")
        raise CheckpointError(f"no trained model in {run_dir}; run `{first}` first, or pass a "
                              "run written by `retrain`, `unlearn` or `sample`")
    meta["identity"] = ident if ident is not None else _legacy_train_identity(meta)
    return arch, params, meta


def _refuse_checkpoints_of_another_run(run_dir: Path, ident: dict | None, meta: dict) -> None:
    """CheckpointError when ``checkpoints/`` records another run than ``run.json`` names (a
    folder copied in from another run): the writers refuse it, the readers took its model as
    this run's (evaluate reported run A's model under B's name; unlearn wrote B's identity
    beside A's recipe). Compared on the fields both record: for `train` / `retrain` runs their
    identity's; for `unlearn` runs the method (the checkpoints' role ``unlearned:METHOD``), the
    request and data, and the original's architecture and recipe (the copied-in model of
    another method or request was evaluated under this run's name)."""
    role = (ident or {}).get("role")
    if role in ("original", "retrain"):
        pairs = [(k, meta[k], ident[k]) for k in _legacy_train_identity(meta)
                 if k in meta and k in ident]
    elif role == "unlearned":
        original = ident.get("original") or {}
        pairs = [("role", meta.get("role"), f"unlearned:{ident.get('method')}"),
                 *((k, meta[k], ident[k]) for k in ("request", "dataset", "split_seed")
                   if k in meta and k in ident),
                 *((k, meta[k], original[k]) for k in ("architecture", "train_config")
                   if k in meta and k in original)]
    else:
        return
    refuse_recorded_differences(run_dir, pairs)


def refuse_recorded_differences(run_dir: Path, pairs: list[tuple[str, Any, Any]]) -> None:
    """CheckpointError naming the first field whose value in a run's checkpoints differs from
    its run.json's (``pairs``: (field, checkpoints' value, run.json's value)): the checkpoints
    are another run's, copied in."""
    for key, was, now in pairs:
        diff = rundir.first_difference(was, now, key)
        if diff is not None:
            path, a, b = diff
            raise CheckpointError(
                f"{run_dir}: its checkpoints record {path} = {json.dumps(a)}, its run.json "
                f"{json.dumps(b)}: the checkpoints are another run's (copied in?); restore the "
                "run's own checkpoints, or rerun the command that wrote it into a new "
                "directory")


def unfinished_training(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a training run that stopped before its last epoch (killed, or
    before its first checkpoint): rerunning the command that started it resumes it. Refuses
    (``RunDirError``) while another process is writing it."""
    run_dir = Path(run_dir).expanduser().absolute()
    if not (run_dir / "checkpoints").is_dir():
        return False
    rundir.check_readable(run_dir)
    with Checkpointer(run_dir / "checkpoints", read_only=True) as ckpt:
        if ckpt.latest_step() is None:
            return True
        meta = ckpt.restore_meta()
    epochs = (meta.get("train_config") or {}).get("epochs")
    return isinstance(meta.get("epoch"), int) and isinstance(epochs, int) and meta["epoch"] < epochs


def _load_checkpointed(run_dir: Path):
    with Checkpointer(run_dir / "checkpoints", read_only=True) as ckpt:
        meta = ckpt.restore_meta()
        cfg = None
        try:
            record = meta["architecture"]
            cfg = TrainConfig(**meta["train_config"])
            arch = Architecture.from_json(record)
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint in {run_dir} has no hyperforget run metadata; "
                                  "was it written by `hyperforget train`?") from e
        except ConfigError as e:        # a stored field of the wrong type: not the user's flag
            if cfg is not None and isinstance(record, dict) and is_import_path(
                    record.get("source")):
                raise   # load_model's: the model's package not importable here, a renamed class
            raise CheckpointError(f"the training recipe stored in {run_dir} is damaged ({e}); "
                                  "restore the run from a copy, or retrain it") from e
        if "epoch" in meta and meta["epoch"] < cfg.epochs:
            # A Retrain is resumed by `retrain`: `train` on its directory refuses the role.
            command = "retrain" if meta.get("role") == "retrain" else "train"
            raise CheckpointError(
                f"{run_dir} holds an unfinished {meta.get('role', 'training')} run (epoch "
                f"{meta['epoch']} of {cfg.epochs}); finish it first by rerunning the command "
                f"that wrote it (`hyperforget {command} --run-dir {shell_quote(run_dir)}` with "
                "the same flags)")
        # Shapes and dtypes only: a template of real arrays ran (and compiled) the model's
        # initialisation just to be overwritten, a third of `hyperforget evaluate`'s time.
        template = jax.eval_shape(lambda p: init_state(arch, make_optimizer(cfg), None, p),
                                  arch.param_shapes())
        state, meta = ckpt.restore(template)
    return arch, state.params, meta


def _load_params_dir(run_dir: Path):
    meta = load_params_meta(run_dir / "params")
    if "architecture" not in meta:
        raise CheckpointError(f"params in {run_dir} carry no architecture; pass a run written "
                              "by `hyperforget train`, `unlearn` or `sample`")
    try:
        arch = Architecture.from_json(meta["architecture"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"the architecture stored with the params in {run_dir} is "
                              "damaged; restore the run from a copy, or rerun the command "
                              "that wrote it") from e
    params, meta = load_params(run_dir / "params", arch.param_shapes())
    return arch, params, meta


def check_same_data(meta: dict, args, splits: data.Splits, run_dir, what: str = "model"
                    ) -> None:
    """Refuses data other than the run's own: another dataset, split seed, or changed data
    under the same name would make RA/FA/TA and the forget set refer to other samples. Where
    the run recorded its data's fingerprint and the arrays are equal, the name they were
    recorded under is not compared: a corpus built before 2026-12-06 from splits passed without
    a name recorded digits as "mnist5k", and its hypernetwork was refused for --dataset digits
    (and for mnist5k, by the fingerprint)."""
    ident = meta.get("identity") or {}
    fp = ident.get("data")
    same_arrays = fp is not None and fp == rundir.data_fingerprint(splits)
    want = {"split_seed": args.split_seed} if same_arrays else {
        "dataset": args.dataset, "split_seed": args.split_seed}
    for key, now in want.items():
        was = ident.get(key, meta.get(key))
        if was is not None and was != now:
            raise DataError(f"the {what} in {run_dir} was trained with --{key.replace('_', '-')} "
                            f"{was}, this command uses {now}; pass the --dataset the model was "
                            "trained on and the same --split-seed")
    if fp is not None and not same_arrays:
        raise DataError(f"the data of --dataset {args.dataset} differs from what the {what} in "
                        f"{run_dir} was trained on (fingerprint {fp}); pass the --dataset "
                        "and --split-seed the model was trained on (same files, same "
                        "--data-dir)")


# --------------------------------------------------------------------------- writing


def open_run(path, identity: dict, args, *, reads=(), flag: str = "--run-dir",
             replace_role: bool = False, legacy=None, outputs=(), caches=()):
    """:func:`rundir.open_run` with this command's name in the lock."""
    return rundir.open_run(path, identity, reads=reads, flag=flag, replace_role=replace_role,
                           command=command_line(args)[:200],
                           legacy=legacy, outputs=outputs, caches=caches)


def command_line(args) -> str:
    """The command as run: ``main``'s argv (not the calling process's ``sys.argv`` when
    :func:`hyperforget_jax.cli.main` is called from Python)."""
    return " ".join(["hyperforget", *getattr(args, "_argv", sys.argv[1:])])


def environment() -> dict:
    """What ran a command, for its results: library and JAX versions, the backend and the
    device kind and count (every command runs on one device, however many are visible). Not
    part of a run's identity (another JAX version may resume a run); the command line is not
    recorded, so two runs of one recipe in two directories keep identical results."""
    import hyperforget_jax
    import jaxlib

    device = default_device()
    return {"hyperforget_jax": hyperforget_jax.__version__, "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
            "devices": 1, "device_kind": device.device_kind}


def write_results(run_dir: Path, results: dict, markdown: str,
                  names: tuple[str, str] = ("results.json", "report.md")) -> None:
    """Writes ``results`` (with :func:`environment` added, so ``--json`` prints the same) and
    the markdown report, as ``names``."""
    results.setdefault("environment", environment())
    report.write_json(run_dir / names[0], results)
    report.atomic_write(run_dir / names[1], markdown)


def emit(args, results: dict, markdown: str) -> None:
    """Prints the markdown report, or with ``--json`` the results as one JSON object."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(report.jsonable(results)) + "\n")
    else:
        print(markdown)
    sys.stdout.flush()


def unique_labels(paths: list[str | Path], reserved: tuple[str, ...] = ()) -> list[str]:
    """Row labels for runs named by their directories, made unique (``a/run`` and ``b/run``
    become ``a/run`` and ``b/run``, not two rows called ``run``)."""
    parts = [Path(p).expanduser().absolute().parts for p in paths]
    labels = []
    for i, pp in enumerate(parts):
        for depth in range(1, len(pp) + 1):
            label = "/".join(pp[-depth:])
            clash = any(label == "/".join(q[-depth:]) for j, q in enumerate(parts) if j != i)
            if not clash and label not in reserved:
                break
        labels.append(label)
    return labels


__all__ = ["add_data_args", "add_request_args", "add_output_args", "add_train_args",
           "train_config_from_args", "load_splits", "request_from_args", "architecture_for",
           "data_identity", "run_meta", "train_identity", "train_run", "load_run",
           "unfinished_training",
           "check_same_data", "open_run", "write_results", "emit", "unique_labels",
           "RunDirError"]
