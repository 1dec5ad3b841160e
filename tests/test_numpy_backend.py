"""The NumPy oracle: hand-written BPTT against central finite differences in float64."""

import numpy as np
import pytest

import d2lgru
from d2lgru import GRUSpec, UnsupportedError, init_lm, init_params
from d2lgru.backends import numpy_backend
from d2lgru.conformance import CHECKS, tolerance

MAX_REL_ERR = CHECKS["float64_finite_difference"].rtol
EPS = 1e-5


def rel_err(num, ana):
    # the floor keeps gradients near zero (where the finite difference is all rounding) honest
    return np.abs(num - ana) / np.maximum(np.maximum(np.abs(num), np.abs(ana)), 1e-4)


def numeric_grad(f, arrays):
    grads = []
    for a in arrays:
        g = np.empty_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + EPS
            fp = f()
            a[idx] = old - EPS
            fm = f()
            a[idx] = old
            g[idx] = (fp - fm) / (2 * EPS)
        grads.append(g)
    return grads


def randomize(p, rng, scale=0.5):
    return p.map(lambda a: rng.standard_normal(a.shape) * scale)


def assert_backward_matches_finite_differences(params, X, h0, rng):
    """gru_backward's VJP for random cotangents against central differences; returns dparams."""
    be = d2lgru.get_backend("numpy")
    Y, h_n = be.gru(params, X, h0)
    dY, dh_n = rng.standard_normal(Y.shape), rng.standard_normal(h_n.shape)
    dparams, dX, dh0 = be.gru_backward(params, X, h0, dY, dh_n)

    def f():
        Y, h_n = be.gru(params, X, h0)
        return float(np.sum(Y * dY) + np.sum(h_n * dh_n))

    for name, num, ana in zip(list(params.to_arrays()) + ["X", "h0"],
                              numeric_grad(f, params.flat() + [X, h0]), dparams.flat() + [dX, dh0]):
        assert rel_err(num, ana).max() <= MAX_REL_ERR, name
    return dparams


@pytest.mark.parametrize("reset_after", [False, True], ids=["reset-before", "reset-after"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["1x-uni", "2x-bi"])
def test_gru_backward_matches_finite_differences(reset_after, layers, bidirectional):
    rng = np.random.default_rng(7)
    spec = GRUSpec(3, 4, layers, bidirectional, reset_after)
    params = randomize(init_params(spec, dtype=np.float64), rng)
    D = spec.num_directions
    X = rng.standard_normal((5, 2, 3))
    h0 = rng.standard_normal((layers * D, 2, 4))
    assert_backward_matches_finite_differences(params, X, h0, rng)


@pytest.mark.parametrize("reset_after", [False, True], ids=["reset-before", "reset-after"])
def test_language_model_gradients_match_finite_differences(reset_after):
    rng = np.random.default_rng(3)
    model = init_lm(6, 4, num_layers=2, bidirectional=True, reset_after=reset_after,
                    dtype=np.float64).map(lambda a: rng.standard_normal(a.shape) * 0.5)
    X, Y = rng.integers(0, 6, (3, 5)), rng.integers(0, 6, (3, 5))
    state = rng.standard_normal((4, 3, 4))
    be = d2lgru.get_backend("numpy")
    res = be.lm_loss_and_grads(model, X, Y, state)
    assert res.logits.shape == (15, 6) and res.state.shape == (4, 3, 4)

    def f():
        return numpy_backend.lm_step(model, X, Y, state, need_grads=False).loss

    for name, num, ana in zip(model.to_arrays(), numeric_grad(f, model.flat()), res.grads.flat()):
        assert rel_err(num, ana).max() <= MAX_REL_ERR, name


def test_float32_follows_float64():
    rng = np.random.default_rng(0)
    spec = GRUSpec(5, 8, 2, True, False)
    p64 = randomize(init_params(spec, dtype=np.float64), rng)
    X = rng.standard_normal((7, 4, 5))
    be = d2lgru.get_backend("numpy")
    Y64, h64 = be.gru(p64, X)
    Y32, h32 = be.gru(p64.astype(np.float32), X.astype(np.float32))
    assert Y32.dtype == np.float32
    np.testing.assert_allclose(Y32, Y64, **tolerance("float32", "output").kw)


def test_zero_h0_is_the_default():
    spec = GRUSpec(3, 2)
    params = init_params(spec, 1)
    X = np.ones((2, 3, 3), np.float32)
    be = d2lgru.get_backend("numpy")
    np.testing.assert_array_equal(be.gru(params, X)[0], be.gru(params, X, np.zeros((1, 3, 2), np.float32))[0])


def test_bad_arguments_give_one_clear_error():
    be = d2lgru.get_backend("numpy")
    params = init_params(GRUSpec(3, 2), 0)
    with pytest.raises(TypeError, match="X is float64 but the parameters are float32"):
        be.gru(params, np.zeros((2, 1, 3)))
    with pytest.raises(ValueError, match=r"X must have shape \(2, 1, 3\)"):
        be.gru(params, np.zeros((2, 1, 4), np.float32))
    with pytest.raises(ValueError, match=r"time-major NumPy array \[T, N, 3\]"):
        be.gru(params, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 1, 2\)"):
        be.gru(params, np.zeros((2, 1, 3), np.float32), np.zeros((1, 2, 2), np.float32))
    with pytest.raises(UnsupportedError, match="has no impl 'native'; valid: scratch"):
        be.gru(params, np.zeros((2, 1, 3), np.float32), impl="native")
    with pytest.raises(TypeError, match="must hold integer token ids"):
        be.lm_loss_and_grads(init_lm(5, 3), np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ids outside \[0, 5\)"):
        be.lm_loss_and_grads(init_lm(5, 3), np.full((2, 3), 5), np.zeros((2, 3), int))
    with pytest.raises(UnsupportedError, match="has no mode 'graph'"):
        be.make_trainer(init_lm(5, 3), mode="graph")
    with pytest.raises(UnsupportedError, match="has no device 'cuda'"):
        be.make_trainer(init_lm(5, 3), device="cuda")
    with pytest.raises(TypeError, match=r"^check_finite must be True or False, got 'no' \(str\)$"):
        be.gru(params, np.zeros((2, 1, 3), np.float32), check_finite="no")  # "no" was truthy


@pytest.mark.parametrize("gates", ["reset-only", "update-only", "none"])
def test_gate_ablations_match_finite_differences(gates):
    rng = np.random.default_rng(11)
    spec = GRUSpec(3, 4, 1, False, False, gates)
    params = randomize(init_params(spec, dtype=np.float64), rng)
    X, h0 = rng.standard_normal((4, 2, 3)), rng.standard_normal((1, 2, 4))
    dparams = assert_backward_matches_finite_differences(params, X, h0, rng)
    ablated = {"reset-only": [0], "update-only": [1], "none": [0, 1]}[gates]
    for g in ablated:  # the pinned gate's parameters get no gradient
        assert not dparams.cell(0).W_h[g].any() and not dparams.cell(0).b_x[g].any()


def test_no_gates_is_the_books_plain_rnn():
    rng = np.random.default_rng(5)
    params = randomize(init_params(GRUSpec(3, 4, gates="none"), dtype=np.float64), rng)
    c = params.cell(0)
    X = rng.standard_normal((6, 2, 3))
    h, expected = np.zeros((2, 4)), []
    for x in X:  # the book's rnn(): H = tanh(X W_xh + H W_hh + b_h)
        h = np.tanh(x @ c.W_x[2] + h @ c.W_h[2] + c.b_x[2] + c.b_h[2])
        expected.append(h)
    np.testing.assert_allclose(d2lgru.get_backend("numpy").gru(params, X)[0], np.stack(expected),
                               **CHECKS["float64_same_math"].kw)


def test_ablations_are_declared_not_discovered():
    from d2lgru.backends import ImplInfo
    spec = GRUSpec(3, 4, gates="update-only")
    assert d2lgru.get_backend("numpy").check_impl("scratch", spec) is not None
    assert "only the full GRU" in ImplInfo("x").refusal(spec, np.float32)
    with pytest.raises(ValueError, match="has no ONNX form"):
        init_params(spec).to_onnx()
    with pytest.raises(ValueError, match="gates must be one of both, reset-only"):
        GRUSpec(3, 4, gates="forget-only")


@pytest.mark.parametrize("reset_after", [False, True], ids=["reset-before", "reset-after"])
def test_training_moves_b_h_only_where_the_cell_tells_it_from_b_x(reset_after):
    """A reset-before cell depends on b_x + b_h alone: the book's cell has one bias per gate,
    so training updates b_x and leaves b_h (d2lgru.model.trained); reset-after trains both."""
    from d2lgru.model import LMParams, lm_keys, trained

    rng = np.random.default_rng(3)
    spec = GRUSpec(5, 4, 2, True, reset_after)
    gru = randomize(init_params(spec, dtype=np.float64), rng)
    model = LMParams(gru, rng.standard_normal((8, 5)), rng.standard_normal(5))
    X = rng.integers(0, 5, (3, 6))
    trainer = d2lgru.get_backend("numpy").make_trainer(model, lr=0.5, clip=100.0)
    trainer.train_epoch([(X, (X + 1) % 5)])
    after = trainer.params()
    moved = {k for k, a in model.to_arrays().items()
             if not np.array_equal(a, after.to_arrays()[k])}
    assert moved == trained(spec)
    b_h = {f"gru.l{l}.d{d}.b_h" for l, d in spec.cells()}
    assert (b_h <= trained(spec)) is reset_after and (b_h & trained(spec) == set()) is not reset_after
    assert list(model.to_arrays()) == lm_keys(spec)
