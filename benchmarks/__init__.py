"""Benchmarks: speed as ratios against hand-written JAX (and NumPyro/GenJAX where available)."""
