"""Helpers shared by the test files (importable as ``helpers``: pytest puts tests/ on the path)."""

import numpy as np

from d2lgru.spec import init_params


def random_params(spec, dtype=np.float64, seed=0, scale=0.5):
    """Every weight and bias drawn from N(0, scale²): unlike the book's init (small weights,
    zero biases), this exercises every parameter's role, biases included."""
    rng = np.random.default_rng(seed)
    return init_params(spec, dtype=dtype).map(
        lambda a: (rng.standard_normal(a.shape) * scale).astype(dtype))


def book_pipeline():
    """``benchmarks/_book_pipeline.py``, the book's data code transcribed, imported by its path:
    the tests run against the installed d2lgru, so the checkout itself is not on ``sys.path``."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_book_pipeline.py"
    spec = importlib.util.spec_from_file_location("book_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
