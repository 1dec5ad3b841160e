"""Helpers shared by the test files (importable as ``helpers``: pytest puts tests/ on the path)."""

import numpy as np

from d2lgru.spec import init_params


def random_params(spec, dtype=np.float64, seed=0, scale=0.5):
    """Every weight and bias drawn from N(0, scale²): unlike the book's init (small weights,
    zero biases), this exercises every parameter's role, biases included."""
    rng = np.random.default_rng(seed)
    return init_params(spec, dtype=dtype).map(
        lambda a: (rng.standard_normal(a.shape) * scale).astype(dtype))


def assert_native_round_trip(be, params, layer_shapes):
    """``be.to_native`` names and shapes the arrays as the framework's own layer does
    (``layer_shapes``: name -> shape), and ``from_native``/``to_native`` lose nothing: both
    ways are bit-exact and keep the dtype."""
    native = be.to_native(params)
    assert {k: tuple(v.shape) for k, v in native.items()} == layer_shapes
    assert be.from_native(native, params.spec) == params
    back = be.to_native(be.from_native(native, params.spec))
    dtype = params.cell(0).W_x.dtype
    assert all(np.array_equal(back[k], native[k]) and back[k].dtype == dtype for k in native)


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
    np.testing.assert_allclose(Y1, Y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h1, h_ref, rtol=1e-12, atol=1e-12)


def book_pipeline():
    """``benchmarks._book_pipeline``, the book's data code transcribed (the tests run as
    ``python -m pytest`` from the repository root, which puts it on the path)."""
    from benchmarks import _book_pipeline

    return _book_pipeline
