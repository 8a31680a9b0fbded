"""Benchmarks and prepared device checks (run from the repository root: ``python -m benchmarks.<name>``)."""
