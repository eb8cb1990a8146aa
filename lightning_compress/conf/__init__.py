"""Hydra configs shipped with the package (also reachable as the top-level ``conf/`` and ``recipes/`` links)."""
