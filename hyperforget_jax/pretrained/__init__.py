"""Pretrained hypernetworks shipped with the package, with the SHA-256 each file must have.

Loaded (and verified) by :func:`hyperforget_jax.hyperforget.load_hypernet` ``("pretrained")``;
rebuilt from scratch with the commands in the README ("HyperForget" section).
"""

DEFAULT = "dihyfo2-gpt_mlp-mnist5k"
PRETRAINED: dict[str, dict[str, str]] = {}
