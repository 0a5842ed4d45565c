"""Pretrained hypernetworks shipped with the package, with the SHA-256 each file must have.

Loaded (and verified) by :func:`hyperforget_jax.hyperforget.load_hypernet` ``("pretrained")``;
rebuilt from scratch with the commands in the README ("HyperForget" section).
"""

DEFAULT = "dihyfo2-gpt_mlp-mnist5k"
PRETRAINED: dict[str, dict[str, str]] = {
    "dihyfo2-gpt_mlp-mnist5k": {
        "file": "dihyfo2_gpt_mlp_mnist5k.npz",
        "sha256": "e08fdfc86e5f33eb381028ab5ff7d4f60f100947122116fb76755b07a3334752",
    },
    "dihyfo1-c3-gpt_mlp-mnist5k": {
        "file": "dihyfo1_c3_gpt_mlp_mnist5k.npz",
        "sha256": "277188d3bcb58b1516615bf715dd1d908067c876599f87f738e22994c3af3835",
    },
}
