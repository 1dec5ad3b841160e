"""Helpers shared by the test files (importable as ``helpers``: pytest puts tests/ on the path)."""

import os
import subprocess
import sys

import numpy as np

from d2lgru.spec import init_params
from d2lgru.conformance import CHECKS


def random_params(spec, dtype=np.float64, seed=0, scale=0.5):
    """Every weight and bias drawn from N(0, scale²): unlike the book's init (small weights,
    zero biases), this exercises every parameter's role, biases included."""
    rng = np.random.default_rng(seed)
    return init_params(spec, dtype=dtype).map(
        lambda a: (rng.standard_normal(a.shape) * scale).astype(dtype))


def assert_native_reference_is_seeded(be, oracle, spec):
    """``be.native_reference`` draws the same weights for the same seed and others for another,
    its two directions differ, and the weights it reads back give the oracle its outputs."""
    X = np.random.default_rng(0).standard_normal((5, 2, spec.input_size))
    p1, Y1, h1 = be.native_reference(spec, X, seed=3)
    p2, Y2, _ = be.native_reference(spec, X, seed=3)
    p3, _, _ = be.native_reference(spec, X, seed=4)
    assert p1 == p2 and np.array_equal(Y1, Y2) and not p1 == p3
    if spec.bidirectional:
        assert not np.array_equal(p1.cell(0, 0).W_x, p1.cell(0, 1).W_x)
    Y_ref, h_ref = oracle.gru(p1, X)
    np.testing.assert_allclose(Y1, Y_ref, **CHECKS["float64_same_math"].kw)
    np.testing.assert_allclose(h1, h_ref, **CHECKS["float64_same_math"].kw)


def book_pipeline():
    """``benchmarks._book_pipeline``, the book's data code transcribed (the tests run as
    ``python -m pytest`` from the repository root, which puts it on the path)."""
    from benchmarks import _book_pipeline

    return _book_pipeline


def run_fresh(code: str, unset=(), timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (this one), without the environment variables ``unset``:
    what an import or a first call does to a process; the test fails where ``code`` fails."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def assert_native_layer_is_the_gru(be, run_layer):
    """The framework's own layer, loaded from ``be.to_native`` (``run_layer(native, X, h0)`` ->
    its ``(Y, h_n)`` as NumPy arrays, float64), computes the canonical reset-after cell: two
    bidirectional layers of asymmetric random weights and biases would expose a swapped gate, a
    flipped update or a mixed-up direction."""
    from d2lgru import GRUSpec, get_backend

    params = random_params(GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=True),
                           seed=1)
    rng = np.random.default_rng(2)
    X, h0 = rng.standard_normal((6, 2, 3)), rng.standard_normal((4, 2, 5))
    Y, h_n = run_layer(be.to_native(params), X, h0)
    Y_ref, h_ref = get_backend("numpy").gru(params, X, h0)
    np.testing.assert_allclose(Y, Y_ref, **CHECKS["float64_same_math"].kw)
    np.testing.assert_allclose(h_n, h_ref, **CHECKS["float64_same_math"].kw)

