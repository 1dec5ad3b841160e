"""TensorFlow / Keras 3 backend: checkpoints shared with NumPy, error messages, Keras' GRU layout
(both cells), the reset-before layer's single bias, the declared modes, a quiet import.
test_surface.py covers what every backend does alike (training in every mode among it)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import d2lgru
from d2lgru import GRUSpec, UnsupportedError, init_lm, init_params
from d2lgru.train import TrainConfig, train
from d2lgru.conformance import CHECKS
from helpers import assert_native_reference_is_seeded, random_params, run_fresh

SMALL = dict(hidden_size=16, batch_size=4, num_steps=5, max_tokens=400)
VARIANTS = pytest.mark.parametrize("reset_after", [False, True],
                                   ids=["reset-before", "reset-after"])



# -- checkpoints cross the NumPy/TensorFlow boundary both ways -----------------------------
def test_native_reset_before_trains_one_bias_per_gate_as_numpy_does(tmp_path, data_dir, oracle):
    """Keras' reset-before layer gets b_x + b_h; the trainer keeps the two apart and, as NumPy
    and the book do, trains b_x only (d2lgru.model.trained), so the checkpoints agree."""
    config = TrainConfig(epochs=2, data=str(data_dir), **SMALL)
    ours = train(config, backend="tensorflow", impl="native").model
    ref = train(config, backend="numpy").model
    for a, b in zip(ours.gru.flat(), ref.gru.flat()):
        np.testing.assert_allclose(a, b, **CHECKS["float32_weights_after_epochs"].kw)
    cell = ours.gru.cell(0)
    assert np.abs(cell.b_x).max() > 1e-3 and not cell.b_h.any()  # init_lm's b_h is zero


@VARIANTS
def test_native_xla_trains_as_numpy_does_unrolled_or_looped(be, oracle, reset_after):
    """Under XLA Keras' loop is unrolled up to ``_XLA_UNROLL_MAX`` steps and a ``while`` beyond:
    both train as the oracle does."""
    from d2lgru.backends.tensorflow_backend import _XLA_UNROLL_MAX
    model, rng = init_lm(28, 8, reset_after=reset_after), np.random.default_rng(0)
    for T in (_XLA_UNROLL_MAX[0], _XLA_UNROLL_MAX[0] + 1):
        X, Y = rng.integers(0, 28, (2, 2, T))
        batches = [(X, Y), (Y, X)]
        ours = be.make_trainer(model, impl="native", mode="xla").train_epoch(batches)
        ref = oracle.make_trainer(model).train_epoch(batches)
        np.testing.assert_allclose(ours, ref, **CHECKS["float32_modes"].kw)


# -- one clear error per mistake -----------------------------------------------------------
def test_wrong_dtypes_and_shapes(be):
    params = init_params(GRUSpec(3, 4))  # float32
    with pytest.raises(TypeError, match="X is float64 but the parameters are float32"):
        be.gru(params, np.zeros((2, 1, 3)), impl="native")
    with pytest.raises(ValueError, match=r"X must have shape \(2, 1, 3\), got \(2, 1, 5\)"):
        be.gru(params, np.zeros((2, 1, 5), np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 1, 4\)"):
        be.gru(params, np.zeros((2, 1, 3), np.float32), np.zeros((1, 2, 4), np.float32))
    with pytest.raises(ValueError, match="X and Y must be"):
        be.lm_loss_and_grads(init_lm(5, 4), np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(UnsupportedError, match="no impl 'keras'; valid: scratch, native"):
        be.gru(params, np.zeros((2, 1, 3), np.float32), impl="keras")
    with pytest.raises(TypeError, match="state is float64 but the parameters are float32"):
        be.lm_loss_and_grads(init_lm(5, 4), np.zeros((1, 3), int), np.zeros((1, 3), int),
                             np.zeros((1, 1, 4)), impl="native")


def test_the_backend_prints_nothing_on_stderr():
    """TensorFlow's import-time C++ log lines are dropped, and nothing the adapter runs (the
    GRU, the language model, training in every mode) makes TensorFlow log anything."""
    code = ("import numpy as np, d2lgru\n"
            "be = d2lgru.get_backend('tensorflow')\n"
            "p = d2lgru.init_params(d2lgru.GRUSpec(3, 4, reset_after=True))\n"
            "be.gru(p, np.ones((2, 1, 3), np.float32), impl='native')\n"
            "m = d2lgru.init_lm(5, 4)\n"
            "X = np.arange(6).reshape(2, 3) % 5\n"
            "for impl in be.impls:\n"
            "    be.lm_loss_and_grads(m, X, X, impl=impl)\n"
            "    for mode in be.impls[impl].modes:\n"
            "        be.make_trainer(m, impl=impl, mode=mode).train_epoch([(X, X)])\n"
            "print(be.version())\n")
    done = run_fresh(code, unset=("TF_CPP_MIN_LOG_LEVEL",))
    assert done.stdout.strip() == tf.__version__
    assert done.stderr == ""


# -- Keras' GRU layout ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_reset_before_layer_holds_the_sum_of_the_biases(be, dtype):
    """Keras' reset-before GRU has one bias per gate: read back, every cell's is b_x + b_h, and
    b_h is 0 (the normal form; that it is the same GRU: test_surface.py)."""
    params = random_params(GRUSpec(3, 5, num_layers=2, bidirectional=True), dtype)
    back = be.from_native(be.to_native(params), params.spec)
    for row, back_row in zip(params.cells, back.cells):
        for c, n in zip(row, back_row):
            assert np.array_equal(n.b_x, c.b_x + c.b_h) and not n.b_h.any()


@VARIANTS
def test_native_gate_order_is_z_r_h(be, reset_after):
    spec = GRUSpec(2, 3, reset_after=reset_after)
    gate_value = {"z": 1.0, "r": 2.0, "h": 3.0}
    params = init_params(spec).map(np.copy)
    cell = params.cell(0)
    for g, v in gate_value.items():
        i = d2lgru.GATES.index(g)
        cell.W_x[i], cell.W_h[i], cell.b_x[i], cell.b_h[i] = v, v + 10, v + 20, v + 30
    native = be.to_native(params)
    assert list(native) == ["gru_0/gru_cell/kernel", "gru_0/gru_cell/recurrent_kernel",
                            "gru_0/gru_cell/bias"]
    kernel, recurrent, bias = native.values()
    for k, native_gate in enumerate("zrh"):  # Keras' own order: z, r, h
        v = gate_value[native_gate]
        cols = slice(3 * k, 3 * k + 3)
        assert np.all(kernel[:, cols] == v) and np.all(recurrent[:, cols] == v + 10)
        if reset_after:  # bias [2, 3H]: input biases, then recurrent ones
            assert np.all(bias[0, cols] == v + 20) and np.all(bias[1, cols] == v + 30)
        else:  # one bias [3H]: their sum
            assert bias.shape == (9,) and np.all(bias[cols] == 2 * v + 50)


@VARIANTS
def test_keras_gru_matches_the_oracle_through_the_converters(be, oracle, reset_after):
    """Plain keras.layers.GRU / Bidirectional layers (not this backend's stack), loaded with
    set_weights from to_native, compute the canonical cells: random asymmetric weights and biases
    would expose a swapped gate, a flipped update gate or a misplaced reset gate, and the
    backward layer's outputs must come back in time order."""
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=reset_after)
    params = random_params(spec, seed=1)
    rng = np.random.default_rng(2)
    X, h0 = rng.standard_normal((6, 2, 3)), rng.standard_normal((4, 2, 5))
    native = be.to_native(params)
    inp, states, names = tf.constant(X.transpose(1, 0, 2)), [], list(native)
    for l in range(2):
        layer = keras.layers.Bidirectional(
            keras.layers.GRU(5, return_sequences=True, return_state=True, reset_after=reset_after,
                             recurrent_activation="sigmoid", dtype="float64"), dtype="float64")
        layer.build((None, None, spec.layer_input_size(l)))
        layer.set_weights([native[k] for k in names[6 * l:6 * l + 6]])
        inp, *last = layer(inp, initial_state=[tf.constant(h0[2 * l]), tf.constant(h0[2 * l + 1])])
        states += last
    Y_ref, h_ref = oracle.gru(params, X, h0)
    np.testing.assert_allclose(inp.numpy().transpose(1, 0, 2), Y_ref,
                               **CHECKS["float64_same_math"].kw)
    np.testing.assert_allclose(np.stack(states), h_ref, **CHECKS["float64_same_math"].kw)


@VARIANTS
def test_native_reference_is_seeded_and_named_like_keras(be, oracle, reset_after):
    assert_native_reference_is_seeded(
        be, oracle, GRUSpec(3, 4, num_layers=2, bidirectional=True, reset_after=reset_after))


# -- what it declares ---------------------------------------------------------------------
def test_capabilities_are_declared(be):
    caps = be.capabilities()
    for impl in ("scratch", "native"):
        assert caps[impl]["reset_before"] and caps[impl]["reset_after"]
        assert caps[impl]["max_layers"] is None and caps[impl]["bidirectional"]
        assert caps[impl]["dtypes"] == ["float32", "float64"]
        assert caps[impl]["modes"][-1] == "eager"
    assert caps["scratch"]["modes"][0] == "xla" and caps["native"]["modes"][0] == "xla"
    assert be.devices == ("cpu", "gpu")


@pytest.mark.parametrize("reverse", [False, True])
def test_the_written_out_backward_is_the_tapes(reverse):
    """The book's cell's hand-written gradient (``tf.custom_gradient``, mode ``xla``) gives what
    ``tf.GradientTape`` gives for the same loop without it, in float64, both directions."""
    from d2lgru.backends import tensorflow_backend as tfb
    tfb._import_tensorflow()  # the adapter binds its module-level tf on first use
    rng = np.random.default_rng(3)
    T, N, H = 6, 3, 5
    x_zr, x_h, h0, rk_zr, rk_h = (tf.constant(rng.standard_normal(s)) for s in
                                  ((T, N, 2 * H), (T, N, H), (N, H), (H, 2 * H), (H, H)))
    dY, dlast = tf.constant(rng.standard_normal((T, N, H))), tf.constant(
        rng.standard_normal((N, H)))
    args = [x_zr, x_h, h0, rk_zr, rk_h]

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch(args)
            Y, last = fn(*args)
            loss = tf.reduce_sum(Y * dY) + tf.reduce_sum(last * dlast)
        return (Y, last), tape.gradient(loss, args)

    (Y_t, last_t), tape = grads(lambda *a: tfb._reset_before_while_run(*a, reverse)[0])
    (Y_w, last_w), written = grads(lambda *a: tfb._reset_before_while(*a, reverse))
    np.testing.assert_array_equal(Y_w.numpy(), Y_t.numpy())
    np.testing.assert_array_equal(last_w.numpy(), last_t.numpy())
    for name, a, w in zip(("x_zr", "x_h", "h0", "rk_zr", "rk_h"), tape, written):
        np.testing.assert_allclose(w.numpy(), a.numpy(), err_msg=name,
                                   **CHECKS["float64_same_math"].kw)
