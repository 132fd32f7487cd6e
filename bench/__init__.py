"""Benchmarks: figures printed against baselines measured in the same run (scripts/bench)."""
