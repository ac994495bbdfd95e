"""Reliability checks of a real `vigil serve` on 127.0.0.1: soak, drain, slow clients, fuzzing.

Each check is a function with its size as arguments: the test suite runs a short form of
each (tests/test_reliability_*.py), `python -m benchmarks.reliability --full` runs the full
forms and writes benchmarks/results/reliability.json (RELIABILITY.md has the figures).
Every load is bounded in count and time and goes to 127.0.0.1 only.
"""
