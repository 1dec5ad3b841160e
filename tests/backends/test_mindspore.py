"""MindSpore backend: what only it has -- nn.GRU's layout and float32-only input, its tanh, its
modes (PyNative first, then graph), settings made on first use. test_surface.py covers what every
backend does alike: checkpoints shared with NumPy, the errors, training in every mode."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from d2lgru import GRUSpec, UnsupportedError, init_lm, init_params
from d2lgru.cli import main
from d2lgru.conformance import CHECKS
from helpers import random_params, run_fresh


# -- one clear error per mistake -----------------------------------------------------------
def test_native_has_no_reset_before_cell(be):
    params = init_params(GRUSpec(3, 4, reset_after=False))
    with pytest.raises(UnsupportedError, match="nn.GRU computes only the reset-after cell"):
        be.gru(params, np.zeros((2, 1, 3), np.float32), impl="native")
    with pytest.raises(UnsupportedError, match="reset-after"):
        be.to_native(params)
    with pytest.raises(UnsupportedError, match="reset-after"):
        be.make_trainer(init_lm(5, 4), impl="native")


def test_native_runs_float32_only(be):
    params = init_params(GRUSpec(3, 4, reset_after=True), dtype=np.float64)
    with pytest.raises(UnsupportedError, match="accepts float32/float16 inputs only"):
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


def test_cli_refuses_the_native_reset_before_cell(data_dir, capsys):
    assert main(["train", "--backend", "mindspore", "--impl", "native", "--reset-before",
                 "--epochs", "1", "--data", str(data_dir), "--quiet"]) == 2
    assert "nn.GRU computes only the reset-after" in capsys.readouterr().err


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


def test_native_reference_is_seeded_and_leaves_numpy_alone(be):
    spec = GRUSpec(3, 4, reset_after=True)
    X = np.ones((2, 1, 3), np.float32)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, Ya, _ = be.native_reference(spec, X, seed=7)
    b, Yb, _ = be.native_reference(spec, X, seed=7)
    c, _, _ = be.native_reference(spec, X, seed=8)
    assert a == b and np.array_equal(Ya, Yb) and not a == c
    assert np.array_equal(np.random.get_state()[1], before)


def test_settings_wait_for_first_use():
    """Importing the adapter configures nothing; the first call sets threads and blocking."""
    code = (
        "import d2lgru, d2lgru.backends.mindspore_backend as m, numpy as np\n"
        "from mindspore._c_expression import RuntimeConf\n"
        "c = RuntimeConf.get_instance()\n"
        "before = (c.is_op_threads_num_configured(), c.is_launch_blocking())\n"
        "d2lgru.get_backend('mindspore').gru(d2lgru.init_params(d2lgru.GRUSpec(2, 3)),"
        " np.zeros((1, 1, 2), np.float32))\n"
        "print(before, (c.is_op_threads_num_configured(), c.is_launch_blocking()))\n")
    out = run_fresh(code, unset=("GLOG_v",))
    assert out.stdout.strip() == "(False, False) (True, True)"
    assert "[WARNING]" not in out.stderr  # GLOG_v=3 keeps MindSpore's log quiet
