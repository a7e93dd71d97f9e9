"""Benchmark scripts that compare against a named alternative in the same run and print the ratio:
``python -m benchmark.perf.eval``, ``.train``, ``.saga``, ``.vision``."""
