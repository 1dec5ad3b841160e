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


def book_pipeline():
    """``benchmarks._book_pipeline``, the book's data code transcribed (the tests run as
    ``python -m pytest`` from the repository root, which puts it on the path)."""
    from benchmarks import _book_pipeline

    return _book_pipeline
