"""Benchmarks of hyperforget_jax (see benchmarks/README.md). Not part of the installed package."""
