"""Benchmarks (not part of the tests). Run each as ``python -m bench.NAME``; results go to ``bench/results/``."""
