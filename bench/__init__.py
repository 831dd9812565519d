"""Speed and memory benchmarks, one module each: `python -m bench.NAME` from the repository root."""
