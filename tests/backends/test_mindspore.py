"""MindSpore backend: what only it has -- nn.GRU's layout and GRUV2's (its oneDNN GRU kernel, the
native reset-before cell), float32-only native input, its tanh, its modes (PyNative first, then
graph), settings made on first use. test_surface.py covers what every
backend does alike: checkpoints shared with NumPy, the errors, training in every mode."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

import d2lgru
from d2lgru import GRUSpec, UnsupportedError, init_lm, init_params
from d2lgru.cli import main
from d2lgru.conformance import CHECKS, TOLERANCES
from helpers import random_params, run_fresh


# -- one clear error per mistake -----------------------------------------------------------
def test_native_runs_float32_only(be):
    params = init_params(GRUSpec(3, 4, reset_after=True), dtype=np.float64)
    with pytest.raises(UnsupportedError, match="accept float32/float16 inputs only"):
        be.gru(params, np.zeros((2, 1, 3)), impl="native")
    with pytest.raises(UnsupportedError, match="float32/float16"):
        be.make_trainer(init_lm(5, 4, reset_after=True, dtype=np.float64), impl="native")
    Y, _ = be.gru(params, np.ones((2, 1, 3)))  # scratch computes float64
    assert Y.dtype == np.float64


def test_modes_are_pynative_then_graph(be):
    with pytest.raises(UnsupportedError,
                       match="impl 'scratch' has no mode 'eager'; valid: pynative, graph"):
        be.make_trainer(init_lm(5, 4), mode="eager")


def test_wrong_native_dtypes(be):
    params = init_params(GRUSpec(3, 4, reset_after=True))  # float32
    with pytest.raises(TypeError, match="X is float64 but the parameters are float32"):
        be.gru(params, np.zeros((2, 1, 3)), impl="native")


# -- nn.GRU's layout -----------------------------------------------------------------------
def test_native_arrays_are_named_and_shaped_as_nn_grus(be):
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=True)
    native = be.to_native(random_params(spec, np.float32))
    layer = ms.nn.GRU(3, 5, 2, bidirectional=True)
    assert {k: v.shape for k, v in native.items()} == {
        p.name: tuple(p.shape) for p in layer.get_parameters()}


def test_nn_gru_matches_the_oracle_through_the_converters(be, oracle):
    """nn.GRU itself, loaded from to_native, computes the canonical reset-after cell
    (asymmetric random weights and biases would expose a swapped gate or a flipped update).
    Small inputs keep its candidate pre-activations where MindSpore's tanh is accurate."""
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=True)
    params = random_params(spec, np.float32, seed=1, scale=0.3)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 2, 3)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (4, 2, 5)).astype(np.float32)
    layer = ms.nn.GRU(3, 5, 2, bidirectional=True)
    for p in layer.get_parameters():
        p.set_data(Tensor(be.to_native(params)[p.name]))
    Y, h_n = layer(Tensor(X), Tensor(h0))
    Y_ref, h_ref = oracle.gru(params.astype(np.float64), X.astype(np.float64),
                              h0.astype(np.float64))
    np.testing.assert_allclose(Y.asnumpy(), Y_ref, **CHECKS["float32_small_forward"].kw)
    np.testing.assert_allclose(h_n.asnumpy(), h_ref, **CHECKS["float32_small_forward"].kw)


# -- GRUV2's layout: the native reset-before cell ------------------------------------------
def test_gruv2_arrays_are_one_flat_w_per_cell(be):
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True)
    native = be.to_native(random_params(spec, np.float32))
    n0, n1 = 15 * (3 + 5 + 1), 15 * (10 + 5 + 1)
    assert {k: v.shape for k, v in native.items()} == {
        "weight_l0": (n0, 1, 1), "weight_l0_reverse": (n0, 1, 1),
        "weight_l1": (n1, 1, 1), "weight_l1_reverse": (n1, 1, 1)}
    with pytest.raises(ValueError, match="GRUV2 parameters for a 2-layer .* lack 'weight_l1'"):
        be.from_native({k: v for k, v in native.items() if k != "weight_l1"}, spec)


def test_gruv2_matches_the_oracle_forward_and_backward(be, oracle):
    """GRUV2 on to_native's w, through the native impl's gru and gru_backward: two
    bidirectional layers of asymmetric random weights and biases would expose a swapped gate,
    a flipped update or a mixed-up direction; 12 rows > H = 5 go through the slices that keep
    MindSpore 2.10's GRUV2Grad inside its buffer (it sizes the input gradient [T, H, I])."""
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True)
    params = random_params(spec, np.float32, seed=1, scale=0.3)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 12, 3)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (4, 12, 5)).astype(np.float32)
    dY, dh_n = rng.standard_normal((6, 12, 10)), rng.standard_normal((4, 12, 5))
    as64 = [a.astype(np.float64) for a in (X, h0)]
    tol = CHECKS["float32_small_forward"].kw
    for got, want in zip(be.gru(params, X, h0, impl="native"),
                         oracle.gru(params.astype(np.float64), *as64)):
        np.testing.assert_allclose(got, want, **tol)
    got = be.gru_backward(params, X, h0, dY.astype(np.float32), dh_n.astype(np.float32),
                          impl="native")
    want = oracle.gru_backward(params.astype(np.float64), *as64, dY, dh_n)
    for a, b in zip(got[0].flat() + list(got[1:]), want[0].flat() + list(want[1:])):
        np.testing.assert_allclose(a, b, **TOLERANCES[("float32", "gradient")].kw)


def test_scratch_runs_a_long_sequence_in_chunks_of_compiled_steps(be, oracle):
    """The book's loop is one compiled graph per sequence length up to _GRAPH_STEPS steps;
    a longer sequence runs as chunks of that many (here two and a remainder, both directions),
    the state and its gradient carried across, the weight gradients summed over the chunks."""
    from d2lgru.backends.mindspore_backend import _GRAPH_STEPS

    T = 2 * _GRAPH_STEPS + 3
    spec = GRUSpec(3, 4, bidirectional=True)
    params = random_params(spec, np.float64, seed=3, scale=0.5)
    rng = np.random.default_rng(4)
    X, h0 = rng.standard_normal((T, 2, 3)), rng.uniform(-1, 1, (2, 2, 4))
    dY, dh_n = rng.standard_normal((T, 2, 8)), rng.standard_normal((2, 2, 4))
    for got, want in zip(be.gru(params, X, h0), oracle.gru(params, X, h0)):
        np.testing.assert_allclose(got, want, **TOLERANCES[("float64", "output")].kw)
    got = be.gru_backward(params, X, h0, dY, dh_n)
    want = oracle.gru_backward(params, X, h0, dY, dh_n)
    for a, b in zip(got[0].flat() + list(got[1:]), want[0].flat() + list(want[1:])):
        np.testing.assert_allclose(a, b, **TOLERANCES[("float64", "gradient")].kw)


def test_native_trains_the_books_cell_as_scratch_does():
    """The native impl's reset-before training step (GRUV2 inside MindSpore's autodiff) moves
    the weights as the scratch loop does, and leaves each b_h as it came (see trained())."""
    model = init_lm(7, 8, seed=3)
    batches = [tuple(np.random.default_rng(i).integers(0, 7, (4, 5)) for _ in "XY")
               for i in range(3)]
    be = d2lgru.get_backend("mindspore")
    out = {impl: be.make_trainer(model, impl=impl) for impl in ("scratch", "native")}
    losses = {impl: t.train_epoch(batches) for impl, t in out.items()}
    np.testing.assert_allclose(losses["native"], losses["scratch"], **CHECKS["float32_modes"].kw)
    native, scratch = out["native"].params(), out["scratch"].params()
    for a, b in zip(native.flat(), scratch.flat()):
        np.testing.assert_allclose(a, b, **CHECKS["float32_weights_after_epochs"].kw)
    assert all(np.array_equal(c.b_h, m.b_h) for row_n, row_m in
               zip(native.gru.cells, model.gru.cells) for c, m in zip(row_n, row_m))


def test_native_without_gruv2_is_reset_after_only_and_says_why():
    """GRUV2 comes from a private MindSpore module: a release without it leaves the native impl
    its nn.GRU (reset-after) and one sentence for the reset-before cell."""
    code = (
        "import numpy as np, mindspore.ops.operations._rl_inner_ops as rl\n"
        "del rl.GRUV2\n"
        "import d2lgru\n"
        "be = d2lgru.get_backend('mindspore')\n"
        "assert be.capabilities()['native']['reset_before'] is False\n"
        "try:\n"
        "    be.check_impl('native', d2lgru.GRUSpec(3, 4), np.float32)\n"
        "except d2lgru.UnsupportedError as exc:\n"
        "    print(exc)\n"
        "be.check_impl('native', d2lgru.GRUSpec(3, 4, reset_after=True), np.float32)\n")
    out = run_fresh(code)
    assert "this MindSpore release has no GRUV2 kernel" in out.stdout


def test_scratch_is_accurate_where_mindspore_tanh_is_not(be, oracle):
    """MindSpore's CPU float32 tanh is off by ~1e-4 for 4 < |x| < 6 (hence the scratch loop's
    2 sigmoid(2x) - 1); a cell driven into that range still matches the oracle to 1e-5."""
    x = np.linspace(4, 6, 201, dtype=np.float32)
    assert np.abs(ops.tanh(Tensor(x)).asnumpy() - np.tanh(x.astype(np.float64))).max() > 5e-5
    spec = GRUSpec(1, 201, reset_after=True)
    params = init_params(spec, dtype=np.float32).map(np.zeros_like)
    params.cell(0).W_x[2, 0] = x              # candidate pre-activation = x for the input 1
    params.cell(0).b_x[0] = -30.0             # z = 0: h = n
    X = np.ones((1, 1, 1), np.float32)
    Y, _ = be.gru(params, X)
    Y_ref, _ = oracle.gru(params.astype(np.float64), X.astype(np.float64))
    np.testing.assert_allclose(Y, Y_ref, **CHECKS["float32_saturated_tanh"].kw)


@pytest.mark.parametrize("reset_after", [True, False])
def test_native_reference_is_seeded_and_leaves_numpy_alone(be, reset_after):
    spec = GRUSpec(3, 4, reset_after=reset_after)
    X = np.ones((2, 1, 3), np.float32)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, Ya, _ = be.native_reference(spec, X, seed=7)
    b, Yb, _ = be.native_reference(spec, X, seed=7)
    c, _, _ = be.native_reference(spec, X, seed=8)
    assert a == b and np.array_equal(Ya, Yb) and not a == c
    assert np.array_equal(np.random.get_state()[1], before)


def test_settings_wait_for_first_use():
    """Importing the adapter configures nothing; the first call sets threads and blocking. The
    quiet log level it gives MindSpore's import is not left in the environment, where Paddle
    (in this process or a child) would read it as glog's verbosity."""
    code = (
        "import os, d2lgru, d2lgru.backends.mindspore_backend as m, numpy as np\n"
        "assert 'GLOG_v' not in os.environ, os.environ['GLOG_v']\n"
        "from mindspore._c_expression import RuntimeConf\n"
        "c = RuntimeConf.get_instance()\n"
        "before = (c.is_op_threads_num_configured(), c.is_launch_blocking())\n"
        "d2lgru.get_backend('mindspore').gru(d2lgru.init_params(d2lgru.GRUSpec(2, 3)),"
        " np.zeros((1, 1, 2), np.float32))\n"
        "print(before, (c.is_op_threads_num_configured(), c.is_launch_blocking()))\n")
    out = run_fresh(code, unset=("GLOG_v",))
    assert out.stdout.strip() == "(False, False) (True, True)"
    assert "[WARNING]" not in out.stderr  # GLOG_v=3 keeps MindSpore's log quiet
