"""CLI subcommands: each module defines ``register(subparsers)``; :mod:`hyperforget_jax.cli`
collects them. Commands are thin layers over the library."""
