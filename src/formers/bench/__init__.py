"""Comparisons and benchmarks built on the trainer and the registry."""
