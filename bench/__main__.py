"""`python -m bench`: the benchmarks of bench/run.py (what scripts/bench runs)."""

from bench.run import main

main()
