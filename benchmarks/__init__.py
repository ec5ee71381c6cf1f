"""Benchmarks for chronoq (not part of the installed package)."""
