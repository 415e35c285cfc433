"""Benchmark harness for zipmount (see docs/BENCHMARKS.md)."""
