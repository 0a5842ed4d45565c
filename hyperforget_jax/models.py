"""Flax Linen classifiers, and :class:`Architecture`: the one adapter through which every
function of the package takes a model (:func:`as_model`: a registered name, an import path, any
``flax.linen.Module``, any ``flax.nnx.Module`` or any ``apply_fn(params, x) -> logits``).

Every model is described by its ``params`` pytree alone (no mutable collections): ResNet-18 uses
GroupNorm instead of BatchNorm, which has the same learnable scale and bias per channel (so the
same 11,173,962 parameters as the usual CIFAR ResNet-18) but no running statistics. This is what
lets parameters flow freely between vmapped fleets, the hypernetwork and the unlearning methods.

Convolutions are :func:`hyperforget_jax.layers.Conv` (``flax.linen.Conv`` with the same
parameters and outputs, whose gradients stay fast inside XLA:CPU loops).
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import inspect
import re
import weakref
from collections.abc import Mapping
from typing import Any, Callable, Sequence

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hyperforget_jax import data, layers
from hyperforget_jax.config import whole_number
from hyperforget_jax.errors import ArchitectureError, CheckpointError, ConfigError, DataError

Params = Any


class MLP(nn.Module):
    """Fully connected ReLU network on flattened images.

    ``MLP(hidden=(10,))`` on 28×28 inputs is G.pt's MNIST MLP 784→10→10 with 7,960 parameters.
    """

    hidden: Sequence[int] = (10,)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


class SmallCNN(nn.Module):
    """Two 3×3 conv layers (32, 64 channels) with 2×2 average pooling, then a 128-unit layer."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        for ch in (32, 64):
            x = nn.relu(layers.Conv(ch, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), (2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(self.num_classes)(x)


class _BasicBlock(nn.Module):
    channels: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        norm = lambda: nn.GroupNorm(num_groups=min(32, self.channels))
        y = layers.Conv(self.channels, (3, 3), self.stride, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = layers.Conv(self.channels, (3, 3), use_bias=False)(y)
        y = norm()(y)
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = layers.Conv(self.channels, (1, 1), self.stride, use_bias=False)(x)
            x = norm()(x)
        return nn.relu(x + y)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool) for 32×32 inputs, GroupNorm throughout."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = layers.Conv(64, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.GroupNorm(num_groups=32)(x))
        for i, ch in enumerate((64, 128, 256, 512)):
            for j in range(2):
                x = _BasicBlock(ch, 2 if (i > 0 and j == 0) else 1)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "gpt_mlp": lambda k: MLP(hidden=(10,), num_classes=k),
    "mlp": lambda k: MLP(hidden=(256, 256), num_classes=k),
    "cnn": lambda k: SmallCNN(num_classes=k),
    "resnet18": lambda k: ResNet18(num_classes=k),
}
ARCHITECTURES = tuple(_FACTORIES)

# --- the model adapter ------------------------------------------------------------------------

#: How many compiled programs one model keeps (oldest dropped first). A program is keyed by its
#: static structure (method, fleet or not, mesh), never by hyperparameter values, so a handful
#: per model is the norm.
MAX_PROGRAMS = 64

# Programs of the registered models, shared by every Architecture of the same (name, shape, K):
# they close over library modules only, never over a user's object.
_REGISTERED_PROGRAMS: dict[tuple, "_Programs"] = {}


class _Programs:
    """A small LRU of compiled callables owned by one model (see :meth:`Architecture.program`)."""

    def __init__(self):
        self._d: collections.OrderedDict[Any, Any] = collections.OrderedDict()

    def get(self, key, build: Callable[[], Any]):
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        value = self._d[key] = build()
        while len(self._d) > MAX_PROGRAMS:
            self._d.popitem(last=False)
        return value

    def __len__(self):
        return len(self._d)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Any classifier, as one adapter: ``apply(params, x) -> logits`` and, when known,
    ``init(key) -> params`` and the input shape.

    Built by :func:`as_model` from a registered name (``"mlp"``), an import path
    (``"pkg.module:Net"``), a ``flax.linen.Module`` (applied as ``module.apply({"params": p}, x)``),
    a ``flax.nnx.Module`` (its ``nnx.Param`` values as the params, :func:`nnx_params`) or any
    ``apply_fn(params, x) -> logits``; ``Architecture(name, input_shape, num_classes)``
    is a registered model. Hashable and immutable, so jitted functions can close over it.

    Compiled programs (the scanned epochs of ``fit`` and the unlearning methods, the batched
    evaluation) are owned by the model (:meth:`program`): dropping a user's model frees them and
    everything they close over; the registered models share theirs per (name, shape, K).

    Attributes:
      name: a registered name, the import path, or the user model's class/function name.
      input_shape: one input's shape, e.g. (28, 28, 1); None when unknown (no shape checks,
        no ``init`` for a Module).
      num_classes: number of output logits; None when unknown.
      flax_module: a user's Flax Linen module (None for registered models and bare functions).
      nnx_model: a user's Flax NNX module as the library runs it (:class:`NnxModel`).
      apply_fn: a user's ``apply_fn(params, x) -> logits`` (None unless given).
      init_fn: a user's ``init_fn(key) -> params`` for a bare ``apply_fn`` (Retrain and the
        shadow models of U-LiRA need one).
      source: the import path the model was loaded from (``load_model``), so ``to_json`` /
        ``from_json`` can reload it.
    """

    name: str
    input_shape: tuple[int, ...] | None = (28, 28, 1)
    num_classes: int | None = 10
    flax_module: nn.Module | None = dataclasses.field(default=None, repr=False)
    apply_fn: Callable | None = dataclasses.field(default=None, repr=False)
    init_fn: Callable | None = dataclasses.field(default=None, repr=False)
    source: str | None = None
    nnx_model: "NnxModel | None" = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "_own_programs", None)

    # --- identity of the model ----------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """True for the library's own named models (no user module or function)."""
        return (self.flax_module is None and self.apply_fn is None and self.nnx_model is None
                and self.name in _FACTORIES)

    @property
    def label(self) -> str:
        """A short display name for progress bars: ``Name`` for an import path
        ``"pkg.module:Name"``, else ``name``.

        >>> Architecture("hyperforget_jax.gan.metrics:JudgeCNN").label
        'JudgeCNN'
        """
        return self.name.rpartition(":")[2] if is_import_path(self.name) else self.name

    @property
    def module(self) -> nn.Module | None:
        """The Flax Linen module (a registered model's, or the user's); None for a bare apply_fn
        or an NNX module."""
        if self.flax_module is not None:
            return self.flax_module
        if self.apply_fn is not None or self.nnx_model is not None:
            return None
        if self.name not in _FACTORIES:
            raise ConfigError(f"unknown architecture {self.name!r}; choose one of "
                              f"{', '.join(ARCHITECTURES)} or pass your own model "
                              "(hf.as_model(module_or_apply_fn))")
        return _FACTORIES[self.name](self.num_classes)

    @property
    def has_init(self) -> bool:
        """Whether fresh parameters can be drawn (Retrain, U-LiRA shadows, Bad Teacher)."""
        if self.init_fn is not None:
            return True
        if self.nnx_model is not None:
            return self.nnx_model.construct is not None
        return self.apply_fn is None and self.input_shape is not None

    @property
    def init_fix(self) -> str:
        """How to give this model an init, for the messages of what needs one (fit from scratch,
        Retrain, U-LiRA shadows, fit_fleet)."""
        if self.nnx_model is not None and self.nnx_model.no_init:
            return self.nnx_model.no_init
        if self.apply_fn is None and self.nnx_model is None and self.input_shape is None:
            return "pass hf.as_model(module, input_shape=(H, W, C))"
        return "pass a flax Module or hf.as_model(apply_fn, init_fn=...)"

    def program(self, key: Any, build: Callable[[], Any]) -> Any:
        """The compiled callable ``key`` of this model, built once by ``build()``.

        The cache lives on the model (shared per (name, shape, K) for registered models), so no
        module-level cache keeps a user's model alive.
        """
        if self.registered:
            store = _REGISTERED_PROGRAMS.setdefault(
                (self.name, self.input_shape, self.num_classes), _Programs())
            return store.get(key, build)
        store = self._own_programs
        if store is None:
            store = _Programs()
            object.__setattr__(self, "_own_programs", store)
        # One store serves every shape of the same module (as_model shares it), and programs
        # such as init close over the input shape: key them by it, or a module held and used
        # on 8×8 and 28×28 images initialised the second with the first's parameters.
        return store.get((self.input_shape, self.num_classes, key), build)

    # --- init / apply ---------------------------------------------------------------------------

    def init(self, key: jax.Array) -> Params:
        if self.init_fn is not None:
            return self.init_fn(key)
        if key is None or isinstance(key, (bool, int, np.integer)) or (
                not data.is_prng_key(key) and np.ndim(key) == 0
                and np.issubdtype(getattr(key, "dtype", np.float64), np.integer)):
            # Flax's InvalidRngError, where the library's other entry points take the seed.
            raise ConfigError(f"model {self.name!r}: init takes a PRNG key, "
                              f"jax.random.key(seed); got {key!r}")
        if self.nnx_model is not None:
            if self.nnx_model.construct is None:
                raise ConfigError(f"model {self.name!r} cannot draw fresh parameters (Retrain, "
                                  f"fit from scratch, U-LiRA shadows): {self.init_fix}")
            return self.program("init", self.nnx_model.compiled_init)(key)
        if self.apply_fn is not None:
            raise ConfigError(f"model {self.name!r} is a bare apply_fn with no init; pass "
                              "hf.as_model(apply_fn, init_fn=...) or a flax Module to draw "
                              "fresh parameters (Retrain, U-LiRA shadows, Bad Teacher)")
        if self.input_shape is None:
            raise ConfigError(f"model {self.name!r} needs its input_shape to initialise; pass "
                              "hf.as_model(module, input_shape=(H, W, C))")
        variables = self.program("init", self._compiled_init)(key)
        extra = sorted(set(variables) - {"params"})
        if extra:
            raise ArchitectureError(
                f"model {self.name!r} has mutable collections {extra} besides 'params'; the "
                "methods here treat a model as its params pytree alone: use a params-only "
                "model (GroupNorm/LayerNorm instead of BatchNorm) or pass an apply_fn that "
                "closes over the other collections")
        return variables["params"]

    def _compiled_init(self) -> Callable[[jax.Array], dict]:
        # One compiled program per model. Run op by op, ``Module.init`` compiles every
        # initialiser once per parameter shape (0.5-1 s apiece on XLA:CPU); compiled whole, the
        # forward pass it traces is dropped and the same bits come out (tests/test_models_params.py).
        # A user's module whose init cannot be traced runs op by op. Plain jax.jit: XLA drops
        # the forward pass (only the random draws are left), and it may run nested (eval_shape).
        module, shape = self.module, (1, *self.input_shape)
        compiled = jax.jit(lambda key: module.init(key, jnp.zeros(shape, jnp.float32)))
        traceable = [True]

        def init(key):
            if traceable[0]:
                try:
                    return compiled(key)
                except (jax.errors.ConcretizationTypeError,
                        jax.errors.TracerArrayConversionError,
                        jax.errors.TracerIntegerConversionError):
                    traceable[0] = False
            return module.init(key, jnp.zeros(shape, jnp.float32))
        return init

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        if self.nnx_model is not None:
            return _checked_logits(self.name, self.nnx_model.apply(self.name, params, x), x)
        if self.apply_fn is not None:
            return _checked_logits(self.name, self.apply_fn(params, x), x)
        try:
            return _checked_logits(self.name, self.module.apply({"params": params}, x), x)
        except flax.errors.InvalidRngError as e:
            # Init gets a key for every stream; the methods' forward passes get none.
            raise ArchitectureError(
                f"model {self.name!r} draws random numbers in its forward pass ({e.args[0]}), "
                "but the methods here call it as apply(params, x) without PRNG keys: make it "
                "deterministic by default (e.g. nn.Dropout(deterministic=True), or a `train` "
                "argument that defaults to False), or pass an apply_fn") from None

    def param_shapes(self) -> Params | None:
        """``jax.ShapeDtypeStruct`` pytree of :meth:`init`'s parameters (traced once per model);
        None for a model without init (an NNX module's: its own, init or not)."""
        if self.nnx_model is not None:
            return jax.tree.map(lambda s: s, self.nnx_model.shapes)
        if not self.has_init:
            return None
        # jax.eval_shape of init costs 0.1-1 s and is asked for on every check.
        shapes = self.program("param_shapes", lambda: jax.eval_shape(self.init,
                                                                     jax.random.key(0)))
        return jax.tree.map(lambda s: s, shapes)

    @property
    def param_count(self) -> int:
        shapes = self.param_shapes()
        if shapes is None:
            raise ConfigError(f"model {self.name!r} has no init, so no known parameter count; "
                              "count the parameters you pass with hf.param_count(params)")
        return sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes))

    # --- checks ---------------------------------------------------------------------------------

    def check_params(self, params: Params, reference: Params | None = None,
                     shapes_only: bool = False) -> None:
        """Raises :class:`ArchitectureError` unless ``params`` fit this model.

        Compared leaf by leaf (paths, shapes and dtypes) with the model's init when it has one,
        else with ``reference`` (e.g. the parameters a method started from) when given, else
        only checked to be a pytree of floating-point arrays. ``shapes_only``: paths and shapes
        (an evaluation: other dtypes run, and nothing is checkpointed, so an NNX state's
        integer list keys are fine).
        """
        if self.nnx_model is not None and _has_int_keys(params):
            if shapes_only:     # its own paths ([0], not ['0']): the model's apply takes them
                return
            raise ArchitectureError(
                f"parameters for {self.name} have integer keys (nnx.to_pure_dict's list "
                "indices), which checkpoints do not keep; pass hf.nnx_params(net), whose list "
                "indices are strings")
        want = self.param_shapes()
        if want is None and reference is not None:
            want = jax.tree.map(lambda l: jax.ShapeDtypeStruct(jnp.shape(l), jnp.result_type(l)),
                                reference)
        check_param_tree(params, want, self.name, dtypes=not shapes_only)

    def check_inputs(self, x, what: str = "data", labels=None, values: bool = True) -> None:
        """Raises :class:`DataError` unless images ``x`` have shape (N, *input_shape) and the
        ``labels`` (if given) are outputs of the model (below ``num_classes``). ``values``:
        read the images' values (0..255 images are refused); the streamed loops pass False for
        a device batch after the first, as reading one waits for the steps queued before it."""
        if self.input_shape is not None:
            shape = tuple(jnp.shape(x))
            if shape[1:] != tuple(self.input_shape):
                raise DataError(f"{what} has images of shape {shape[1:]} but the {self.name} "
                                f"model takes {tuple(self.input_shape)}; pass the --dataset the "
                                "model was trained on (or an architecture built for this image "
                                "shape)")
        dtype = getattr(x, "dtype", None)         # never np.asarray a device array for it
        dtype = np.asarray(x).dtype if dtype is None else dtype
        if not jnp.issubdtype(dtype, jnp.floating):       # bfloat16 included
            raise DataError(f"{what} has images of dtype {dtype}; the models take floating-point "
                            f"inputs. {data.integer_inputs_fix(dtype)}")
        shape = tuple(jnp.shape(x))
        if (values and self.registered and len(shape) == 4 and shape[0] and shape[1] > 1
                and shape[2] > 1 and not isinstance(x, jax.core.Tracer)):
            # Float 0..255 images (cifar.data.astype(np.float32)) trained unscaled: ≤ 128 whole
            # images evenly spaced tell them from [0, 1] or standardised images (a stride over
            # the flat values could land on black border pixels only: 2,400 MNIST images × 255
            # read a maximum of 0). Device arrays are reduced where they are (they were never
            # checked). Feature vectors (N, D, 1, 1), such as counts, are not images.
            sub = x[::max(1, shape[0] // 64)]
            mod = jnp if isinstance(sub, jax.Array) else np
            lo, hi = float(mod.min(sub)), float(mod.max(sub))
            if lo >= 0 and hi > 1.5:
                raise DataError(f"{what} has images with values up to {hi:g} (0..255 pixel "
                                f"values?); the {self.name} model takes images in [0, 1]: divide "
                                "them by 255 (hf.data.from_arrays scales uint8 images only)")
        if labels is None or not np.size(labels):
            return
        y = np.asarray(labels)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):   # bool is not an integer
            raise DataError(f"{what} has labels of shape {y.shape} and dtype {y.dtype}; pass "
                            "1-D integer class ids (not one-hot, not floats): y.astype(np.int32)")
        if int(y.min()) < 0:
            raise DataError(f"{what} has label {int(y.min())}; labels are class ids 0..K-1 (a "
                            "negative id would silently be read as one of the last classes)")
        if self.num_classes is not None:
            top = int(y.max())
            if top >= self.num_classes:
                raise DataError(f"{what} has label {top} but the {self.name} model has "
                                f"{self.num_classes} outputs (classes 0-{self.num_classes - 1}); "
                                f"build the model with num_classes >= {top + 1}, or pass the "
                                "data it was trained on")

    def num_outputs(self, params: Params, image_shape: tuple, what: str,
                    batch: int = 1) -> int:
        """The model's real number of outputs on these parameters (a user's module need not
        say) for a batch of ``batch`` images (training passes its own: a forward pass built for
        that batch size need not run on one image): traced once per parameter signature and
        kept with the model's programs. A forward pass that fails raises
        :class:`ArchitectureError` naming ``what`` and why."""
        leaves, treedef = jax.tree.flatten(params)
        key = ("num_outputs", treedef, tuple(image_shape), batch,
               tuple((jnp.shape(l), str(jnp.result_type(l))) for l in leaves))

        def build():
            try:
                out = jax.eval_shape(self.apply, params,
                                     jax.ShapeDtypeStruct((batch, *image_shape), np.float32))
            except Exception as e:   # a user's apply_fn raises anything: name the model and why
                raise ArchitectureError(f"{what}: the parameters do not run through model "
                                        f"{self.name!r} ({type(e).__name__}: {e})") from None
            return int(out.shape[-1])

        return self.program(key, build)

    # --- serialisation (run directories) --------------------------------------------------------

    def to_json(self) -> dict:
        d = {"name": self.name,
             "input_shape": None if self.input_shape is None else list(self.input_shape),
             "num_classes": self.num_classes}
        if self.source is not None:
            d["source"] = self.source
        if self.param_shapes() is not None:
            d["param_count"] = self.param_count
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Architecture":
        if not isinstance(d, dict) or not (d.get("source") or isinstance(d.get("name"), str)):
            raise CheckpointError(f"the stored architecture record {str(d)[:80]!r} is damaged "
                                  "(no model name or import path); restore the run from a "
                                  "copy, or retrain it")
        shape = None if d.get("input_shape") is None else tuple(d["input_shape"])
        if d.get("source"):
            try:
                return load_model(d["source"], shape, d.get("num_classes"))
            except ConfigError as e:
                # "is the package installed?" alone sent the reader of a run from elsewhere to
                # install whatever name the file holds, and installing or importing it runs
                # that package's code.
                raise type(e)(f"{e} (the import path is recorded in the run, corpus or "
                              "hypernetwork being read, and importing it runs that module's "
                              "code: install it or put it on PYTHONPATH only if you trust "
                              "where the file came from)") from e
        if d["name"] not in _FACTORIES:
            raise ArchitectureError(f"model {d['name']!r} is not a registered architecture and "
                                    "was saved without an import path; load it with "
                                    "hf.load_model('pkg.module:Name') or pass the model itself")
        return make_architecture(d["name"], shape, d["num_classes"])


def _checked_logits(name: str, out: Any, x: Any) -> jax.Array:
    """``out`` unless it is not one (batch, num_classes) array of logits for the batch ``x``
    (checked on shapes, when the program is traced: free at run time)."""
    shape = getattr(out, "shape", None)
    batch = jnp.shape(x)[0] if jnp.ndim(x) else None
    if shape is None or not hasattr(out, "dtype") or len(shape) != 2 or shape[0] != batch:
        got = (f"a {type(out).__name__}" if shape is None
               else f"an array of shape {tuple(shape)}")
        raise ArchitectureError(
            f"model {name!r} returned {got} for a batch of shape {tuple(jnp.shape(x))}; the "
            "methods here take a model whose forward pass returns logits of shape (batch, "
            "num_classes): return only the logits (not a tuple, dict, (batch,) or (batch, 1, K) "
            "array), or pass an apply_fn that picks them, e.g. hf.as_model(lambda p, x: "
            "net.apply({'params': p}, x)[0], init_fn=...)")
    return out


def _leaf_spec(leaf) -> tuple[tuple[int, ...], Any]:
    return tuple(jnp.shape(leaf)), jax.dtypes.canonicalize_dtype(jnp.result_type(leaf))


def check_param_tree(params: Params, want: Params | None, name: str,
                     dtypes: bool = True) -> None:
    """Compares a parameter pytree with the expected ``ShapeDtypeStruct`` tree ``want`` (or, if
    None, only checks that every leaf is a floating-point array). Raises ArchitectureError
    naming the first mismatching path and the fix. ``dtypes=False``: paths and shapes only
    (an evaluation runs bfloat16 copies of a float32 model's parameters)."""
    if isinstance(params, Mapping) and "params" in params and (   # dict or FrozenDict
            want is None or "params" not in want):
        others = sorted(str(k) for k in params if k != "params")
        flax_like = all(isinstance(v, Mapping) for v in params.values())   # collections
        if not others:
            raise ArchitectureError(f"parameters for {name} are wrapped one level too deep "
                                    "({'params': ...}, Flax's variables dict); unwrap it: pass "
                                    "variables['params']")
        # A Linen module's bound apply given its whole variables dict: every method would train
        # the running averages as weights (gradients, weight decay) and return them changed.
        # (A user's own tree {'params': W, 'bias': b} of arrays is no variables dict.)
        if flax_like:
            raise ArchitectureError(
                f"parameters for {name} are a Flax variables dict (collections {others} "
                "beside 'params'); the methods here would train every leaf, the running "
                "averages included: pass variables['params'] and a model that closes over the "
                "rest, e.g. hf.as_model(lambda p, x: net.apply({'params': p, 'batch_stats': "
                "stats}, x), init_fn=...)")
    try:
        got = {jax.tree_util.keystr(p): _leaf_spec(l)
               for p, l in jax.tree_util.tree_leaves_with_path(params)}
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ArchitectureError(f"parameters are not a pytree of arrays: {e}") from e
    if not got:
        raise ArchitectureError(f"parameters for {name} are empty (no arrays in the pytree)")
    for path, (shape, dtype) in got.items():
        if dtypes and not jnp.issubdtype(dtype, jnp.floating):
            raise ArchitectureError(
                f"parameters for {name}: {path} has dtype {dtype}, not a floating-point type; "
                "cast them: jax.tree.map(lambda p: p.astype(jnp.float32), params)")
    if want is None:
        return
    want = {jax.tree_util.keystr(p): _leaf_spec(l)
            for p, l in jax.tree_util.tree_leaves_with_path(want)}
    paths = lambda tree: {jax.tree_util.keystr(p) for p, _ in
                          jax.tree_util.tree_leaves_with_path(tree)}
    if (isinstance(params, (list, tuple)) and params and set(got) != set(want)
            and all(paths(p) == set(want) for p in params)):
        # e.g. the originals of a loop of hf.fit calls, as a sweep's members: not "another
        # architecture", as the first missing path would say
        raise ArchitectureError(f"parameters for {name} are a {type(params).__name__} of "
                                f"{len(params)} parameter sets; pass one, or stack them for "
                                "unlearn_sweep: jax.tree.map(lambda *l: np.stack(l), *params)")
    for path, (shape, dtype) in want.items():
        if path not in got:
            # e.g. arr.tolist() went in: list indices below the leaf's path ([0], not ['key'])
            if any(g.startswith(path + "[") and g[len(path) + 1:len(path) + 2].isdigit()
                   for g in got):
                raise ArchitectureError(f"parameters for {name}: {path} is a list or tuple, not "
                                        "an array; pass arrays: np.asarray(...) on that leaf "
                                        "(or load the params with hf.load_model)")
            raise ArchitectureError(f"parameters do not fit {name}: missing {path} "
                                    f"(shape {shape}); were they trained for another "
                                    "architecture?")
        if got[path][0] != shape:
            raise ArchitectureError(f"parameters do not fit {name}: {path} has shape "
                                    f"{got[path][0]}, expected {shape}; were they "
                                    "trained for another architecture or image shape?")
        if dtypes and got[path][1] != dtype:
            raise ArchitectureError(
                f"parameters do not fit {name}: {path} has dtype {got[path][1]}, the model's "
                f"parameters are {dtype}; cast them: jax.tree.map(lambda p: "
                f"p.astype(jnp.{dtype}), params)")
    extra = sorted(set(got) - set(want))
    if extra:
        raise ArchitectureError(f"parameters do not fit {name}: unexpected {extra[0]}; "
                                "were they trained for another architecture?")


def make_architecture(name: str, input_shape: tuple[int, int, int] | None = (28, 28, 1),
                      num_classes: int | None = 10) -> Architecture:
    """Returns the registered architecture ``name`` (one of ``ARCHITECTURES``).

    >>> make_architecture("gpt_mlp").param_count
    7960
    """
    if not isinstance(name, str) or name not in _FACTORIES:     # a list: unhashable
        raise ConfigError(f"unknown architecture {name!r}; choose one of "
                          f"{', '.join(ARCHITECTURES)}, or pass your own model as a flax "
                          "Module, an apply_fn or an import path 'pkg.module:Name'")
    input_shape, num_classes = _checked_dims(input_shape, num_classes)
    input_shape = (28, 28, 1) if input_shape is None else input_shape
    num_classes = 10 if num_classes is None else num_classes
    if len(input_shape) != 3:
        raise ConfigError(f"input_shape must be (H, W, C), got {input_shape}: the registered "
                          "models take images (N, H, W, C); give grey-scale images a channel "
                          "axis (x[..., None]) and flat vectors their image shape "
                          "(x.reshape(N, H, W, C)), or build the data with "
                          "hf.data.from_arrays, which checks it")
    if name == "cnn" and min(input_shape[:2]) < 4:
        # Its two 2×2 pools leave no feature (a ZeroDivisionError inside Flax's initialiser):
        # channel-first (1, 8, 8) digits, or (D, 1, 1) feature vectors, reach it this way.
        raise ConfigError(f"the cnn pools twice by 2, so it needs images of at least 4×4 "
                          f"(H, W, C), got input_shape {input_shape}; channel-first images "
                          "(N, C, H, W) need x.transpose(0, 2, 3, 1), and feature vectors a "
                          "model that flattens its input (\"mlp\")")
    return Architecture(name, input_shape, num_classes)


def _checked_dims(input_shape: Any, num_classes: Any) -> tuple[tuple[int, ...] | None,
                                                               int | None]:
    """``input_shape`` as a tuple of ints >= 1 and ``num_classes`` as an int >= 1 (None stays
    None), else :class:`ConfigError`: ``int()`` truncated 2.5 classes to 2 (and ``True`` to 1),
    a 1.5-channel image to 1, and 0 or a negative size failed deep inside ``init``."""
    k = None if num_classes is None else whole_number(num_classes)   # numpy, 0-d JAX too
    if num_classes is not None and (k is None or k < 1):
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}; e.g. "
                          "num_classes=10 (or the data's: ds.num_classes)")
    if input_shape is None:
        return None, k
    dims = [whole_number(d) for d in input_shape] if isinstance(
        input_shape, (tuple, list, np.ndarray, jax.Array)) and np.ndim(input_shape) == 1 else []
    if not dims or any(d is None or d < 1 for d in dims):
        raise ConfigError(f"input_shape must be one input's shape, a tuple of integers >= 1 "
                          f"such as (28, 28, 1), got {input_shape!r}; e.g. x.shape[1:]")
    return tuple(dims), k


_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(s: str) -> bool:
    """``"pkg.module:Name"`` syntax (checked without importing anything)."""
    return isinstance(s, str) and bool(_IMPORT_PATH.match(s))


def load_model(path: str, input_shape: tuple[int, ...] | None = None,
               num_classes: int | None = 10) -> Architecture:
    """Loads a user model from an import path ``"pkg.module:Name"`` (what ``--arch`` of the CLI
    and the experiments takes, e.g. ``hyperforget train --arch mypkg.models:Net``).

    ``Name`` may be a ``flax.linen.Module`` class (instantiated with ``num_classes=K`` when it
    has that field, else without arguments), a ``flax.nnx.Module`` class (built with
    ``rngs=nnx.Rngs(key)``, and ``num_classes=K`` when its ``__init__`` takes it: fresh
    parameters for any key), a Module instance, an :class:`Architecture`, or an
    ``apply_fn(params, x) -> logits``.

    Raises:
      ConfigError: malformed path, module not importable, no such attribute, or an object that
        is not a model.
    """
    obj = _imported(path)
    if isinstance(obj, type) and issubclass(obj, nnx.Module):
        base = as_model(_nnx_class_adapter(obj, num_classes), input_shape, num_classes)
        return _replaced(base, name=path, source=path)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        obj = _instance_of(obj, num_classes)
    # The same module object underneath: the returned model shares its compiled programs, so
    # the same path passed to every call (or a run directory reloaded) compiles once.
    return _replaced(as_model(obj, input_shape, num_classes, name=path), source=path)


def _imported(path: str) -> Any:
    """The object at import path ``path`` (ConfigError when it cannot be imported)."""
    if not is_import_path(path):
        raise ConfigError(f"model import path {path!r} must look like 'pkg.module:Name'")
    mod_name, attr = path.split(":")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {mod_name!r} for model {path!r} ({e}); is the package "
                          "installed or on PYTHONPATH?") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{mod_name!r} has no attribute {attr!r}; check the model path "
                              f"{path!r}")
        obj = getattr(obj, part)
    return obj


def is_model_at(model: Architecture, path: str) -> bool:
    """Whether ``model`` is the user model at import path ``path``, however it was passed: by
    the path (``model.source``), or as the class, instance or function the path names
    (``fit(Net(), ds, TrainConfig(arch="pkg:Net"))`` is the recipe ``--arch pkg:Net`` records,
    and its adapter is named ``"Net"``). False when the path does not import."""
    if model.source == path:
        return True
    try:
        obj = _imported(path)
    except ConfigError:
        return False
    own = lambda m: next((h for h in (m.flax_module, m.nnx_model, m.apply_fn) if h is not None),
                         None)
    if isinstance(obj, Architecture):
        return own(obj) is not None and own(obj) is own(model)
    if isinstance(obj, type) and issubclass(obj, nnx.Module):
        return model.nnx_model is not None and model.nnx_model.cls is obj
    if isinstance(obj, nnx.Module):
        return model.nnx_model is not None and getattr(
            _NNX_ADAPTERS.get(obj), "nnx_model", None) is model.nnx_model
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return type(model.flax_module) is obj
    return own(model) is obj


def _replaced(model: Architecture, **changes) -> Architecture:
    """``dataclasses.replace(model, **changes)`` sharing ``model``'s compiled programs (the same
    module or function underneath; :meth:`Architecture.program` keys them by shape)."""
    new = dataclasses.replace(model, **changes)
    if not new.registered:
        if model._own_programs is None:
            object.__setattr__(model, "_own_programs", _Programs())
        object.__setattr__(new, "_own_programs", model._own_programs)
    return new


_INSTANCES_ATTR = "__hyperforget_instances__"


def _class_cache(cls: type) -> dict:
    """The dict kept on ``cls`` itself (not a base class's) for what is built from it once."""
    cache = cls.__dict__.get(_INSTANCES_ATTR)
    if cache is None:
        cache = {}
        try:
            setattr(cls, _INSTANCES_ATTR, cache)
        except (AttributeError, TypeError):
            pass
    return cache


def _instance_of(cls: type, num_classes: int | None) -> nn.Module:
    """``cls(num_classes=K)`` (or ``cls()`` without that field), one instance per K kept on the
    class itself, so that :func:`load_model` of one path returns the same module (and with it
    the adapter and compiled programs :func:`as_model` keeps on it)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    k = num_classes if "num_classes" in fields else None
    instances = _class_cache(cls)
    if k not in instances:
        instances[k] = cls(num_classes=k) if k is not None else cls()
    return instances[k]


# --- Flax NNX models ------------------------------------------------------------------------


def _str_keys(tree: Any) -> Any:
    """``tree`` with every dict key a string: ``nnx.List`` / list attributes give integer keys,
    which an Orbax checkpoint gives back as strings (so a restored tree would no longer match);
    the parameters are mapped back onto the module by path (:meth:`NnxModel.state_from`)."""
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _has_int_keys(tree: Any) -> bool:
    return isinstance(tree, Mapping) and any(isinstance(k, int) or _has_int_keys(v)
                                             for k, v in tree.items())


def nnx_params(net: nnx.Module) -> Params:
    """The ``nnx.Param`` values of a Flax NNX module as the plain pytree every function here
    takes (nested dicts of arrays, as the Linen models'; list indices as strings ``'0'``).

    Back into the module (after unlearning) with :func:`nnx_update`.
    """
    if not isinstance(net, nnx.Module):
        raise ConfigError(f"nnx_params takes a flax.nnx.Module, got {type(net).__name__}")
    return _str_keys(nnx.to_pure_dict(nnx.state(net, nnx.Param)))


def nnx_update(net: nnx.Module, params: Params) -> None:
    """Writes ``params`` (e.g. ``hf.unlearn(...).params``) into the NNX module ``net`` in
    place, leaf by path; its other state (batch statistics, RNG state) is left as it is.

    Raises:
      ArchitectureError: ``params`` do not fit ``net`` (paths, shapes, dtypes).
    """
    if not isinstance(net, nnx.Module):
        raise ConfigError(f"nnx_update takes a flax.nnx.Module, got {type(net).__name__}")
    state = nnx.state(net, nnx.Param)
    name = type(net).__name__
    check_param_tree(params, _shapes_of(state), name)
    nnx.update(net, NnxModel.state_from(params, [p for p, _ in nnx.to_flat_state(state)]))


def _shapes_of(param_state: Any) -> Params:
    """``jax.ShapeDtypeStruct`` pytree (string keys) of an ``nnx.State`` (abstract or not)."""
    return _str_keys(jax.tree.map(lambda l: jax.ShapeDtypeStruct(l.shape, l.dtype),
                                  nnx.to_pure_dict(param_state)))


class NnxModel:
    """A Flax NNX module as the library runs it: ``nnx.merge(graphdef, params, other_state)(x)``
    inside the compiled programs.

    Its non-``nnx.Param`` state (BatchStat running averages, RNG state, ...) is taken as it was
    at :func:`as_model` time and never updated, and the module runs in the mode it was in
    (``net.eval()``: deterministic dropout, running averages). A forward pass that draws random
    numbers (dropout in training mode) is refused: it would draw the same ones on every call; so
    is one that writes its state (BatchNorm in training mode): what it writes would be dropped.
    Holds no reference to the user's module object, so dropping the module frees it.

    Attributes:
      graphdef: the module's structure (``nnx.graphdef``), mode included.
      paths: the ``nnx.Param`` leaves' paths (integer keys of lists kept as integers).
      path_shapes: each path's shape.
      shapes: ``jax.ShapeDtypeStruct`` pytree of the parameters (string keys, as
        :func:`nnx_params`).
      rest: the other state, a pure dict of arrays.
      construct: ``construct(key) -> module`` building a fresh module (its class with
        ``rngs=nnx.Rngs(key)``), None when unknown.
      no_init: why there is no ``construct`` and what to do (empty when there is one).
    """

    def __init__(self, net: nnx.Module, construct: Callable | None, no_init: str = ""):
        self.graphdef, params, rest = nnx.split(net, nnx.Param, ...)
        self.cls = type(net)        # what an import path names (is_model_at)
        flat = nnx.to_flat_state(params)
        self.paths = tuple(p for p, _ in flat)
        self.path_shapes = {p: jnp.shape(v) for p, v in flat}
        self.shapes = _shapes_of(params)
        self.rest = nnx.to_pure_dict(rest)
        self.construct, self.no_init = construct, no_init

    def fits(self, net: nnx.Module) -> bool:
        """Whether ``net`` is still the module this was built from: the same structure and
        mode, parameter shapes, and the very same other-state arrays (an updated running
        average, or ``net.eval()``, makes a new adapter)."""
        graphdef, params, rest = nnx.split(net, nnx.Param, ...)
        old, new = jax.tree.leaves(self.rest), jax.tree.leaves(nnx.to_pure_dict(rest))
        return (graphdef == self.graphdef and _shapes_of(params) == self.shapes
                and len(old) == len(new) and all(a is b for a, b in zip(old, new)))

    @staticmethod
    def state_from(params: Params, paths: Sequence[tuple]) -> nnx.State:
        """The ``nnx.State`` of ``params`` (string keys, :func:`nnx_params`) at the module's
        ``paths``, looked up by path (never by leaf order)."""
        def at(path):
            node = params
            for key in path:
                node = node[str(key)] if str(key) in node else node[key]
            return node
        return nnx.from_flat_state({path: at(path) for path in paths})

    def apply(self, name: str, params: Params, x: jax.Array) -> Any:
        try:
            state = self.state_from(params, self.paths)
        except (KeyError, TypeError):
            check_param_tree(params, self.shapes, name)    # names the path and the fix
            raise
        if any(jnp.shape(v) != self.path_shapes[p] for p, v in nnx.to_flat_state(state)):
            # nnx.merge takes any shape (a (1,) bias broadcast, and a wrong model's logits came
            # out), where Linen's apply refuses one: checked on shapes, free once traced.
            check_param_tree(params, self.shapes, name)
        module = nnx.merge(self.graphdef, state, self.rest)
        before = self.other_state(module)
        out = module(x)
        after = self.other_state(module)
        written = [(path, kind) for path, (kind, value) in before.items()
                   if path in after and after[path][1] is not value]
        # State the forward pass creates (a Variable made in __call__) is dropped after every
        # call, as what it writes: recomputed from each batch.
        written += [(path, kind) for path, (kind, _) in after.items() if path not in before]
        if any(issubclass(kind, nnx.RngState) for _, kind in written):
            raise ArchitectureError(
                f"model {name!r} draws random numbers in its forward pass (dropout in training "
                "mode?); the methods here run it as apply(params, x) and would draw the same "
                "ones on every call: pass the module in evaluation mode (net.eval()) or build "
                "its dropout with deterministic=True")
        if written:
            # As a Linen model's mutable collections: the state written would be dropped, so
            # its logits would depend on the batch, and its running averages never move.
            where = ", ".join(f"{'.'.join(map(str, path))} ({kind.__name__})"
                              for path, kind in written)
            raise ArchitectureError(
                f"model {name!r} writes its state in its forward pass ({where}: BatchNorm in "
                "training mode?); the methods here run it as apply(params, x) and would drop "
                "what it writes (its logits would depend on the batch): pass the module in "
                "evaluation mode (net.eval()) or build its BatchNorm with "
                "use_running_average=True")
        return out

    @staticmethod
    def other_state(module: nnx.Module) -> dict[tuple, tuple]:
        """``{path: (Variable type, value)}`` of the state ``module``'s forward pass may read:
        neither its ``nnx.Param`` values nor what it sows (``nnx.Intermediate``: outputs)."""
        kinds = nnx.All(nnx.Not(nnx.Param), nnx.Not(nnx.Intermediate))
        return {path: (type(var), var.get_value())
                for path, var in nnx.to_flat_state(nnx.state(module, kinds))}

    def compiled_init(self) -> Callable[[jax.Array], Params]:
        """``init(key) -> params`` of a freshly constructed module, compiled (the forward pass
        is not run; a traced key works, e.g. vmapped over seeds by ``fit_fleet``)."""
        construct = self.construct
        return jax.jit(lambda key: _str_keys(nnx.to_pure_dict(nnx.state(construct(key),
                                                                        nnx.Param))))


def _nnx_constructor(cls: type, num_classes: int | None) -> tuple[Callable | None, str]:
    """``(key -> cls(rngs=nnx.Rngs(key)[, num_classes=K]), "")`` when ``cls.__init__`` needs
    nothing else, else ``(None, why and what to do)``."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        params = None
    names = {p.name for p in params or ()}
    given = {"rngs"} | ({"num_classes"} if num_classes is not None else set())
    needs = [p.name for p in params or () if p.default is inspect.Parameter.empty
             and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in given]
    if params is None or "rngs" not in names or needs:
        why = (f"{cls.__name__}.__init__ takes no `rngs`" if "rngs" not in names else
               f"{cls.__name__}.__init__ also needs {', '.join(needs)}")
        return None, (f"{why}, so the library cannot build a fresh {cls.__name__}; pass "
                      f"hf.as_model(net, init_fn=lambda key: hf.nnx_params({cls.__name__}(..., "
                      "rngs=nnx.Rngs(key)))), or the class itself (or its import path) with "
                      "an __init__(self, *, rngs, num_classes=10)")
    kw = {} if num_classes is None or "num_classes" not in names else {"num_classes": num_classes}
    return (lambda key: cls(rngs=nnx.Rngs(key), **kw)), ""


def _nnx_class_adapter(cls: type, num_classes: int | None) -> Architecture:
    """The adapter of ``cls(rngs=nnx.Rngs(0)[, num_classes=K])``, one per K kept on the class
    itself (as :func:`_instance_of`), so that every call with the class or its import path
    shares one adapter and its compiled programs."""
    construct, why = _nnx_constructor(cls, num_classes)
    if construct is None:
        raise ConfigError(f"cannot build the NNX model {cls.__name__} from its class: {why}")
    k = num_classes if "num_classes" in inspect.signature(cls.__init__).parameters else None
    adapters = _class_cache(cls)
    if ("nnx", k) not in adapters:
        # Built under jit: run op by op, every initialiser compiles on its own (seconds).
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: construct(jax.random.key(0))))
        states = jax.jit(lambda key: nnx.split(construct(key), nnx.Param, ...)[1:])(
            jax.random.key(0))
        net = nnx.merge(graphdef, *states)
        adapters[("nnx", k)] = Architecture(cls.__name__, None,
                                            k if k is not None else _num_classes_of(net),
                                            nnx_model=NnxModel(net, construct))
    return adapters[("nnx", k)]


def _num_classes_of(net: Any) -> int | None:
    k = getattr(net, "num_classes", None)
    return k if isinstance(k, int) and not isinstance(k, bool) else None


# NNX adapters by module object, weakly: an NNX module's attributes are its graph (an adapter
# stored on it, as on a Linen module, would become part of it), so its adapter lives here and
# goes with the module (the adapter holds no reference to it).
_NNX_ADAPTERS: "weakref.WeakKeyDictionary[nnx.Module, Architecture]" = (
    weakref.WeakKeyDictionary())


def _nnx_adapter(net: nnx.Module, init_fn: Callable | None, name: str | None,
                 num_classes: int | None = None) -> Architecture:
    """The adapter of an NNX instance; ``num_classes`` (as_model's K) builds its fresh modules
    when the instance keeps no ``num_classes`` of its own (``Net(num_classes=3, rngs=...)``
    was refused as "built with other arguments" though as_model was given K = 3)."""
    k = _num_classes_of(net)
    k = int(num_classes) if k is None and num_classes is not None else k
    cached = _NNX_ADAPTERS.get(net)
    if (cached is not None and cached.init_fn is init_fn and (name is None or cached.name == name)
            and (num_classes is None or cached.num_classes == k)
            and cached.nnx_model.fits(net)):
        return cached
    cls = type(net)
    construct, why = _nnx_constructor(cls, k)
    if construct is not None:
        # type(net)(rngs=...) with defaults may build another model than this instance was.
        want = _shapes_of(nnx.state(net, nnx.Param))
        fresh = nnx.eval_shape(lambda: construct(jax.random.key(0)))
        if _shapes_of(nnx.state(fresh, nnx.Param)) != want:
            construct, why = None, (
                f"{cls.__name__}(rngs=...) builds parameters of other shapes than this "
                "instance (was it built with other arguments?); pass hf.as_model(net, "
                f"init_fn=lambda key: hf.nnx_params({cls.__name__}(..., rngs=nnx.Rngs(key))))")
    adapter = Architecture(name or cls.__name__, None, k, init_fn=init_fn,
                           nnx_model=NnxModel(net, construct, why))
    _NNX_ADAPTERS[net] = adapter
    return adapter


def as_model(obj: Any, input_shape: Sequence[int] | None = None,
             num_classes: int | None = None, *, init_fn: Callable | None = None,
             name: str | None = None) -> Architecture:
    """Any model → the :class:`Architecture` adapter every function of the package takes.

    Args:
      obj: a registered name (``"mlp"``), an import path (``"pkg.module:Net"``), a
        ``flax.linen.Module`` instance (applied as ``module.apply({"params": p}, x)``), a
        ``flax.nnx.Module`` instance or class (see below), an :class:`Architecture` (returned
        as is, missing fields filled in), or any ``apply_fn(params, x) -> logits``.
      input_shape: one input's shape; fills in what ``obj`` does not say (a registered name
        defaults to (28, 28, 1)).
      num_classes: number of classes, likewise.
      init_fn: ``init_fn(key) -> params`` for a bare ``apply_fn`` (or an NNX instance the
        library cannot rebuild).
      name: a display name (default: the class or function name).

    An NNX module's params are its ``nnx.Param`` values as a plain pytree (:func:`nnx_params`;
    back into the module with :func:`nnx_update`), run as ``nnx.merge(graphdef, params,
    other_state)(x)`` in the mode the module is in (``net.eval()`` for deterministic dropout and
    running averages). Its other state (BatchStat running averages, RNG state) is the
    instance's at ``as_model`` time and is never updated; a forward pass that draws random
    numbers or writes its state (BatchNorm in training mode) is refused. Fresh parameters (fit
    from scratch, Retrain, U-LiRA shadows) come from a class as
    ``cls(rngs=nnx.Rngs(key)[, num_classes=K])``, from an instance as
    ``type(net)(rngs=nnx.Rngs(key)[, num_classes=K])`` (K: ``net.num_classes``, else
    ``num_classes``) when its ``__init__`` needs nothing else and builds the instance's shapes;
    otherwise from ``init_fn`` (without one, what needs them is refused with
    :class:`ConfigError`; a class takes no ``init_fn``). The adapter of an instance is kept
    while the instance is alive and unchanged (same structure and mode, same other-state
    arrays; new parameter values are fine).

    Returns:
      The adapter. Its compiled programs are cached on it: hold it and pass it again to reuse
      them (a raw module or function passed to each call is wrapped, and compiled, afresh).

    Raises:
      ConfigError: an unknown name, an object that is not a model, an ``input_shape`` or
        ``num_classes`` that is not made of integers >= 1.

    >>> import flax.linen as nn
    >>> m = as_model(nn.Dense(3), input_shape=(4,))
    >>> m.param_count, m.apply(m.init(jax.random.key(0)), jnp.ones((2, 4))).shape
    (15, (2, 3))
    """
    shape, num_classes = _checked_dims(input_shape, num_classes)
    if init_fn is not None and isinstance(obj, (Architecture, str)):
        # A registered name, an import path and an adapter draw their own fresh parameters:
        # Retrain, fit from scratch and Bad Teacher's random teacher ignored init_fn.
        what = repr(obj) if isinstance(obj, str) else f"the adapter {obj.name!r}"
        raise ConfigError(f"init_fn is for a module instance or an apply_fn; {what} draws its "
                          "fresh parameters itself: pass hf.as_model(module_or_apply_fn, "
                          "init_fn=...)")
    if isinstance(obj, Architecture):
        changes = {}
        if obj.input_shape is None and shape is not None:
            changes["input_shape"] = shape
        if obj.num_classes is None and num_classes is not None:
            changes["num_classes"] = int(num_classes)
        return _replaced(obj, **changes) if changes else obj
    if isinstance(obj, str):
        if obj in _FACTORIES:
            return make_architecture(obj, shape, num_classes)
        if is_import_path(obj):
            return load_model(obj, shape, 10 if num_classes is None else num_classes)
        raise ConfigError(f"unknown architecture {obj!r}; choose one of "
                          f"{', '.join(ARCHITECTURES)} or give an import path "
                          "'pkg.module:Name'")
    if isinstance(obj, type) and issubclass(obj, nnx.Module):
        if init_fn is not None:     # was dropped without a word: fresh modules of the class
            raise ConfigError(f"init_fn is for a module instance or an apply_fn; the class "
                              f"{obj.__name__} builds its fresh parameters itself: pass "
                              f"hf.as_model({obj.__name__}(..., rngs=nnx.Rngs(0)), init_fn=...)")
        base = as_model(_nnx_class_adapter(obj, num_classes), shape, num_classes)
        return _replaced(base, name=name) if name is not None else base
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        raise ConfigError(f"{obj.__name__} is a Module class; pass an instance, e.g. "
                          f"{obj.__name__}(), or its import path")
    if isinstance(obj, nnx.Module):
        return as_model(_nnx_adapter(obj, init_fn, name, num_classes), shape, num_classes)
    if isinstance(obj, nn.Module) or callable(obj):
        base = _adapter_of(obj, init_fn, name)
        return as_model(base, shape, num_classes)
    raise ConfigError(f"cannot use a {type(obj).__name__} as a model; pass a registered name "
                      f"({', '.join(ARCHITECTURES)}), an import path 'pkg.module:Name', a flax "
                      "Module or an apply_fn(params, x) -> logits")


_ADAPTER_ATTR = "__hyperforget_model__"


def _adapter_of(obj: Any, init_fn: Callable | None, name: str | None) -> Architecture:
    """The adapter of a user's module or function, kept *on the object itself* when Python
    allows it (functions, modules), so that passing the same object again reuses its compiled
    programs, and dropping the object frees both (no module-level cache holds either). A bound
    method (``module.apply``, ``net.forward``) is a new object at every attribute access: its
    adapter is kept on the object it is bound to, per method name (each call compiled afresh,
    three programs per ``metrics.evaluate(module.apply, ...)``).

    The adapter found must be ``obj``'s own: ``functools.wraps`` (and ``jax.jit``) copy a
    function's ``__dict__`` onto the wrapper, and a wrapper of a function used before (say,
    logits divided by a temperature) ran the wrapped function's programs."""
    holder, attr = obj, _ADAPTER_ATTR
    if inspect.ismethod(obj):
        holder, attr = obj.__self__, f"{_ADAPTER_ATTR}.{obj.__func__.__name__}"
    cached = getattr(holder, "__dict__", {}).get(attr)
    if (cached is not None and cached.init_fn is init_fn and (name is None or cached.name == name)
            and (cached.apply_fn == obj if holder is not obj
                 else obj is cached.apply_fn or obj is cached.flax_module)):
        return cached
    if isinstance(obj, nn.Module):
        adapter = Architecture(name or type(obj).__name__, None,
                               getattr(obj, "num_classes", None), flax_module=obj,
                               init_fn=init_fn)
    else:
        adapter = Architecture(name or getattr(obj, "__name__", type(obj).__name__), None,
                               None, apply_fn=obj, init_fn=init_fn)
    try:
        object.__setattr__(holder, attr, adapter)
    except (AttributeError, TypeError):  # objects with __slots__, built-ins
        pass
    return adapter


def model_of(fn_or_model: Any) -> Architecture:
    """The adapter behind ``fn_or_model``: an :class:`Architecture` itself, the adapter whose
    bound ``apply`` this is (so ``metrics.evaluate(arch.apply, ...)`` reuses ``arch``'s compiled
    programs), else :func:`as_model` of it."""
    if isinstance(fn_or_model, Architecture):
        return fn_or_model
    owner = getattr(fn_or_model, "__self__", None)
    if isinstance(owner, Architecture) and getattr(fn_or_model, "__name__", "") == "apply":
        return owner
    return as_model(fn_or_model)
