"""A user's own Flax model, importable by path (``--arch user_model:TinyNet``) in the CLI
tests; nothing in the library knows it."""

import flax.linen as nn


class TinyNet(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(32)(x)))
