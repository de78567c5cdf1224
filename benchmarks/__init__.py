"""Measured figures for BENCHMARKS.md; each module is a script: ``python -m benchmarks.<name>``."""
