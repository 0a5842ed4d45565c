"""Pretrained hypernetworks shipped with the package, with the SHA-256 each file must have.

Loaded (and verified) by :func:`hyperforget_jax.hyperforget.load_hypernet` ``("pretrained")``;
rebuilt from scratch with the commands in the README ("HyperForget" section).
"""

DEFAULT = "dihyfo2-gpt_mlp-mnist5k"
#: The data the shipped files' corpus was built on (``experiments/build_pretrained.py``: the
#: CLI defaults); files built since 2026-12-05 record it in their own meta.
BUILT_ON = {"dataset": "mnist5k", "split_seed": 0}
PRETRAINED: dict[str, dict[str, str]] = {
    "dihyfo2-gpt_mlp-mnist5k": {
        "file": "dihyfo2_gpt_mlp_mnist5k.npz",
        "sha256": "f0ac5463f3b6415692da1e8788a75f6ca8b43595da8d179350716fd69d94a500",
    },
    "dihyfo1-c3-gpt_mlp-mnist5k": {
        "file": "dihyfo1_c3_gpt_mlp_mnist5k.npz",
        "sha256": "c14d01d919a34897fa05234b7f24272d69082c7216f8204287c125aa1db09399",
    },
}
