"""Benchmarks of the numpy net; run them from the repository root with python -m."""
