"""Flax Linen classifiers and the :class:`Architecture` handle that pairs a module with its
input shape.

Every model is described by its ``params`` pytree alone (no mutable collections): ResNet-18 uses
GroupNorm instead of BatchNorm, which has the same learnable scale and bias per channel (so the
same 11,173,962 parameters as the usual CIFAR ResNet-18) but no running statistics. This is what
lets parameters flow freely between vmapped fleets, the hypernetwork and the unlearning methods.

Convolutions are :func:`hyperforget_jax.layers.Conv` (``flax.linen.Conv`` with the same
parameters and outputs, whose gradients stay fast inside XLA:CPU loops).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hyperforget_jax import layers
from hyperforget_jax.errors import ArchitectureError, ConfigError, DataError

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


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A classifier module with its input shape: ``init(key) -> params``, ``apply(params, x)``.

    Hashable and immutable, so it can be closed over by jitted functions.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int = 10

    @property
    def module(self) -> nn.Module:
        return _FACTORIES[self.name](self.num_classes)

    def init(self, key: jax.Array) -> Params:
        return self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32))["params"]

    def apply(self, params: Params, x: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, x)

    def param_shapes(self) -> Params:
        # Tracing a model's init costs ~0.1-1 s and is asked for on every check_params /
        # param_count; the shapes only depend on this (frozen, hashable) architecture.
        return jax.tree.map(lambda s: s, _param_shapes(self))

    @property
    def param_count(self) -> int:
        return sum(int(jnp.size(l)) for l in jax.tree.leaves(self.param_shapes()))

    def check_params(self, params: Params) -> None:
        """Raises :class:`ArchitectureError` unless ``params`` fit this architecture."""
        want = self.param_shapes()
        want_paths = {jax.tree_util.keystr(p): l.shape
                      for p, l in jax.tree_util.tree_leaves_with_path(want)}
        try:
            got_paths = {jax.tree_util.keystr(p): jnp.shape(l)
                         for p, l in jax.tree_util.tree_leaves_with_path(params)}
        except Exception as e:  # pragma: no cover - exotic inputs
            raise ArchitectureError(f"parameters are not a pytree of arrays: {e}") from e
        for path, shape in want_paths.items():
            if path not in got_paths:
                raise ArchitectureError(f"parameters do not fit {self.name}: missing {path} "
                                        f"(shape {shape}); were they trained for another "
                                        "architecture?")
            if tuple(got_paths[path]) != tuple(shape):
                raise ArchitectureError(f"parameters do not fit {self.name}: {path} has shape "
                                        f"{tuple(got_paths[path])}, expected {tuple(shape)}; were they "
                                        "trained for another architecture or image shape?")
        extra = sorted(set(got_paths) - set(want_paths))
        if extra:
            raise ArchitectureError(f"parameters do not fit {self.name}: unexpected {extra[0]}; "
                                    "were they trained for another architecture?")

    def check_inputs(self, x, what: str = "data") -> None:
        """Raises :class:`DataError` unless images ``x`` have shape (N, *input_shape)."""
        shape = tuple(jnp.shape(x))
        if shape[1:] != tuple(self.input_shape):
            raise DataError(f"{what} has images of shape {shape[1:]} but the {self.name} model "
                            f"takes {tuple(self.input_shape)}; pass the --dataset the model was "
                            "trained on (or an architecture built for this image shape)")

    def to_json(self) -> dict:
        return {"name": self.name, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "param_count": self.param_count}

    @classmethod
    def from_json(cls, d: dict) -> "Architecture":
        return make_architecture(d["name"], tuple(d["input_shape"]), d["num_classes"])


@functools.lru_cache(maxsize=64)
def _param_shapes(arch: Architecture) -> Params:
    return jax.eval_shape(arch.init, jax.random.key(0))


def make_architecture(name: str, input_shape: tuple[int, int, int] = (28, 28, 1),
                      num_classes: int = 10) -> Architecture:
    """Returns the named architecture; ``name`` is one of ``ARCHITECTURES``."""
    if name not in _FACTORIES:
        raise ConfigError(f"unknown architecture {name!r}; choose one of "
                          f"{', '.join(ARCHITECTURES)}")
    if len(tuple(input_shape)) != 3:
        raise ConfigError(f"input_shape must be (H, W, C), got {input_shape}")
    return Architecture(name, tuple(int(s) for s in input_shape), int(num_classes))
