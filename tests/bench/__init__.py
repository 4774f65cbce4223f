"""The benchmark: `python tests/bench/run.py` writes docs/performance.md (see run.py)."""
