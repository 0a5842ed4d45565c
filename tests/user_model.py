"""A user's own Flax model, importable by path (``--arch user_model:TinyNet``) in the CLI
tests; nothing in the library knows it."""

import flax.linen as nn
from flax import nnx


class TinyNet(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(32)(x)))


class StochasticNet(nn.Module):
    """Dropout that always needs a PRNG key, even at evaluation: a model the methods refuse."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Dropout(0.5, deterministic=False)(nn.Dense(32)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


class TinyNnx(nnx.Module):
    """A Flax NNX model, importable by path."""

    def __init__(self, num_classes: int = 10, *, rngs: nnx.Rngs):
        self.head = nnx.Linear(64, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.head(x.reshape((x.shape[0], -1)))


class Deep2(nn.Module):
    """An MLP with two tanh hidden layers: unit tokens are not equivariant to the first's
    order, and rescaling hidden units (canonicalisation) changes a tanh network's function."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(8)(x.reshape((x.shape[0], -1))))
        x = nn.tanh(nn.Dense(6)(x))                 # Dense_1: created and called second
        return nn.Dense(self.num_classes)(x)


class TemperedNet(nn.Module):
    """TinyNet whose logits are its output layer's divided by a temperature of 4."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(32)(x))) / 4.0
