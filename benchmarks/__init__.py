"""Benchmarks of d2lgru: its backends side by side, each framework used bare, the machine's limit.

Not a test suite: everything here measures and reports; nothing passes or fails.
"""
