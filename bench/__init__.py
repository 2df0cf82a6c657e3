"""Benchmarks that print figures; run ``.venv/bin/python bench/registry_bench.py [--quick]``."""
