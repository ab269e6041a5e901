"""Benchmarks of the service, each figure beside a baseline measured in the same run (issue 7).

Run `python -m bench` (full, writes docs/performance.md) or `python -m bench --quick` (a short smoke run for CI).
Benchmarks are not tests: a slow figure never makes the command fail; only a broken harness does.
"""
