"""Benchmarks that reproduce the tables of docs/benchmarks.md (bench/README.md lists them).

Each runs as ``python bench/NAME.py`` or ``python -m bench.NAME`` from the repository root.
"""
