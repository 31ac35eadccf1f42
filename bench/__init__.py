"""Benchmarks: ``python -m bench`` (served vs bare pipeline), ``python -m bench.llm_engines`` (text-generation engines)."""
