"""Benchmarks behind ``beacon-rag bench ...``: every figure is measured side by side in one run."""
