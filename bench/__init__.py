"""Benchmarks and studies; run each from the repository root as a module, e.g. ``python -m bench.sampling --help``.
Every script writes a JSON file (default ``bench/results/``) that records the machine it ran on."""
