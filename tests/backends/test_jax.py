"""JAX backend: float64 without touching the process's x64 flag, one compiled step per batch
shape, Flax's GRUCell layout (one bias for the reset and update gates), a three-leg checkpoint
relay with NumPy. test_surface.py covers what every backend does alike (jit and eager training
alike among it)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

import d2lgru
from d2lgru import GRUSpec, UnsupportedError, init_lm, init_params
from d2lgru.backends import jax_backend
from d2lgru.data import load_data_time_machine
from d2lgru.train import TrainConfig, train
from d2lgru.conformance import CHECKS, tolerance
from helpers import assert_native_reference_is_seeded, random_params, run_fresh

SMALL = dict(hidden_size=16, batch_size=4, num_steps=5, max_tokens=400)


def _batches(data_dir, count=4, num_steps=5):
    loader, vocab = load_data_time_machine(4, num_steps, max_tokens=300, path=data_dir)
    loader.set_epoch(0)
    return list(loader)[:count], len(vocab)


def test_the_registry_knows_jax_and_flax():
    assert d2lgru.get_backend("flax") is d2lgru.get_backend("jax")
    assert d2lgru.backends.install_hint("jax").startswith('pip install "d2lgru[jax]"')


def test_data_parallel_training_refuses_eager_mode(be):
    """jit trains on several processes (tests/test_distributed.py); eager says why not, before
    it joins any world."""
    from d2lgru.distributed import World
    with pytest.raises(UnsupportedError, match=r"cannot train on 2 processes in eager mode: "
                                               r".*\(--mode jit\)"):
        be.make_trainer(init_lm(10, 4, seed=0), mode="eager", world=World(0, 2, 0, "127.0.0.1:1"))
    assert not jax.distributed.is_initialized()


# -- float64 without changing what float32 users get ---------------------------------------
def test_float64_work_leaves_the_x64_flag_and_float32_runs_alone(be, data_dir):
    assert not jax.config.jax_enable_x64
    spec = GRUSpec(3, 5, reset_after=True)
    X = np.random.default_rng(0).standard_normal((4, 2, 3))
    batches, V = _batches(data_dir, 2)
    before = be.gru(init_params(spec, dtype=np.float32), X.astype(np.float32))
    # float64 work of every kind
    Y64, _ = be.gru(init_params(spec, dtype=np.float64), X)
    assert Y64.dtype == np.float64
    trainer = be.make_trainer(init_lm(V, 8, dtype=np.float64))
    trainer.train_epoch(batches)
    assert all(a.dtype == np.float64 for a in trainer.params().flat())
    # the process's flag and defaults are as they were, and float32 computes as before
    assert not jax.config.jax_enable_x64
    assert jnp.zeros(3).dtype == jnp.float32 and jnp.arange(3).dtype == jnp.int32
    after = be.gru(init_params(spec, dtype=np.float32), X.astype(np.float32))
    for a, b in zip(before, after):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
    trainer32 = be.make_trainer(init_lm(V, 8))
    trainer32.train_epoch(batches)
    assert all(a.dtype == np.float32 for a in trainer32.params().flat())


def test_float32_is_float32_even_with_x64_enabled_by_the_user():
    """A process that enabled x64 itself still gets float32 arithmetic for float32 parameters:
    the adapter sets the flag per call, it does not inherit it."""
    code = ("import jax; jax.config.update('jax_enable_x64', True)\n"
            "import numpy as np, d2lgru\n"
            "be = d2lgru.get_backend('jax')\n"
            "p = d2lgru.init_params(d2lgru.GRUSpec(3, 4))\n"
            "X = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)\n"
            "Y, _ = be.gru(p, X)\n"
            "Y64, _ = d2lgru.get_backend('numpy').gru(p.astype(np.float64), X.astype(np.float64))\n"
            "assert jax.config.jax_enable_x64\n"
            "print(Y.dtype, float(abs(Y - Y64).max()) > 0)\n")
    done = run_fresh(code)
    assert done.stdout.split() == ["float32", "True"]


# -- modes ---------------------------------------------------------------------------------
def test_capabilities_are_declared(be):
    caps = be.capabilities()
    assert caps["scratch"]["reset_before"] and caps["scratch"]["reset_after"]
    assert not caps["native"]["reset_before"] and caps["native"]["reset_after"]
    assert caps["scratch"]["gates"] == ["both", "reset-only", "update-only", "none"]
    assert caps["native"]["gates"] == ["both"]
    for impl in ("scratch", "native"):
        assert caps[impl]["modes"] == ["jit", "eager"] and caps[impl]["bidirectional"]
        assert caps[impl]["dtypes"] == ["float32", "float64"]
    gpu = any(d.platform == "gpu" for d in jax.devices())
    assert be.devices == (("cpu", "gpu", "cuda") if gpu else ("cpu",))


def test_the_thread_count_is_fixed_once_the_backend_has_started(be):
    be.gru(init_params(GRUSpec(3, 4)), np.zeros((2, 1, 3), np.float32))  # started
    assert be.framework_threads() == be.threads
    assert be.set_threads(be.threads) == be.threads
    with pytest.raises(UnsupportedError, match="XLA sizes its CPU thread pool when JAX's "
                                               "backend starts"):
        be.set_threads(be.threads + 1)


def test_one_compiled_step_per_batch_shape_and_donation_is_quiet(be, data_dir):
    [five], V = _batches(data_dir, 1, 5)
    [seven], _ = _batches(data_dir, 1, 7)
    trainer = be.make_trainer(init_lm(V, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Some donated buffers were not usable"
        first = trainer.train_epoch([five, five])
        assert trainer._update._cache_size() == 1
        trainer.train_epoch([seven])
        trainer.train_epoch([five])
    assert trainer._update._cache_size() == 2
    assert np.isfinite(first).all()
    # params() copies: later steps (which update donated buffers) do not change it
    before = trainer.params()
    trainer.train_epoch([five])
    assert not before == trainer.params() and before == before.copy()


def test_a_checkpoint_relays_numpy_jax_numpy(tmp_path, data_dir):
    config = dict(data=str(data_dir), **SMALL)
    straight = train(TrainConfig(epochs=6, **config), backend="numpy")
    train(TrainConfig(epochs=2, **config), backend="numpy", out=tmp_path)
    train(TrainConfig(epochs=4), backend="jax", resume=tmp_path)
    done = train(TrainConfig(epochs=6), backend="numpy", resume=tmp_path)
    assert [h["backend"] for h in done.history] == ["numpy"] * 2 + ["jax"] * 2 + ["numpy"] * 2
    np.testing.assert_allclose([h["perplexity"] for h in done.history],
                               [h["perplexity"] for h in straight.history],
                               **tolerance("float32", "train_loss").kw)


# -- Flax's GRUCell layout -----------------------------------------------------------------
def _flax_paths(spec, dtype=jnp.float32):
    """The parameter paths and shapes Flax itself gives the stack (from its own init)."""
    X = np.zeros((2, 1, spec.input_size), dtype)
    h0 = np.zeros((spec.num_layers * spec.num_directions, 1, spec.hidden_size), dtype)
    params = jax_backend.FlaxStack(spec).init(jax.random.key(0), X, h0)["params"]
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_arrays_are_flaxs_and_one_bias_holds_b_x_plus_b_h_for_r_and_z(be, dtype):
    """The arrays are named and shaped as Flax's own init names them; read back, the reset and
    update gates' biases are (b_x + b_h, 0) and the candidate's stay apart (the normal form;
    that it is the same GRU, and the round trip: test_surface.py)."""
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=True)
    params = random_params(spec, dtype)
    native = be.to_native(params)
    assert {k: v.shape for k, v in native.items()} == _flax_paths(spec)
    back = be.from_native(native, spec)
    for row, back_row in zip(params.cells, back.cells):
        for c, n in zip(row, back_row):
            np.testing.assert_array_equal(n.b_x[:2], c.b_x[:2] + c.b_h[:2])
            assert not n.b_h[:2].any()
            assert np.array_equal(n.b_x[2], c.b_x[2]) and np.array_equal(n.b_h[2], c.b_h[2])


def test_native_gate_names(be):
    spec = GRUSpec(2, 3, reset_after=True)
    params = init_params(spec).map(np.copy)
    cell = params.cell(0)
    for g, v in {"z": 1.0, "r": 2.0, "h": 3.0}.items():
        i = d2lgru.GATES.index(g)
        cell.W_x[i], cell.W_h[i], cell.b_x[i], cell.b_h[i] = v, v + 10, v + 20, v + 30
    native = be.to_native(params)
    for flax_gate, v in {"z": 1.0, "r": 2.0, "n": 3.0}.items():
        assert np.all(native[f"gru_0/cell/i{flax_gate}/kernel"] == v)
        assert np.all(native[f"gru_0/cell/h{flax_gate}/kernel"] == v + 10)
    assert np.all(native["gru_0/cell/iz/bias"] == 1 + 20 + 1 + 30)  # b_x + b_h
    assert np.all(native["gru_0/cell/ir/bias"] == 2 + 20 + 2 + 30)
    assert np.all(native["gru_0/cell/in/bias"] == 23) and np.all(native["gru_0/cell/hn/bias"] == 33)
    assert "gru_0/cell/hz/bias" not in native and "gru_0/cell/hr/bias" not in native


def test_a_plain_flax_rnn_matches_the_oracle_through_the_converters(be, oracle):
    """nn.RNN(nn.GRUCell) built here (not the backend's stack), loaded from to_native, computes
    the canonical reset-after cell: asymmetric random weights and biases would expose a swapped
    gate, a flipped update gate or a misplaced candidate bias."""
    spec = GRUSpec(3, 5, reset_after=True)
    params = random_params(spec, seed=1)
    rng = np.random.default_rng(2)
    X, h0 = rng.standard_normal((6, 2, 3)), rng.standard_normal((1, 2, 5))
    tree = {k.split("/", 1)[1]: v for k, v in be.to_native(params).items()}  # cell/...
    with jax.enable_x64(True):
        rnn = nn.RNN(nn.GRUCell(5, param_dtype=jnp.float64), time_major=True, return_carry=True)
        h_n, Y = rnn.apply({"params": traverse_util.unflatten_dict(tree, sep="/")}, X,
                           initial_carry=h0[0])
        Y, h_n = np.asarray(Y), np.asarray(h_n)
    Y_ref, h_ref = oracle.gru(params, X, h0)
    np.testing.assert_allclose(Y, Y_ref, **CHECKS["float64_same_math"].kw)
    np.testing.assert_allclose(h_n, h_ref[0], **CHECKS["float64_same_math"].kw)


def test_native_reference_is_seeded(be, oracle):
    assert_native_reference_is_seeded(
        be, oracle, GRUSpec(3, 4, num_layers=2, bidirectional=True, reset_after=True))


@pytest.mark.parametrize("reverse", [False, True])
def test_the_written_out_backward_is_autodiffs(reverse):
    """The book's cell's hand-written VJP (``_reset_before_scan``) gives what ``jax.vjp`` of
    the same forward gives by autodiff, in float64, for both directions and every input."""
    rng = np.random.default_rng(3)
    T, N, H = 6, 3, 5
    with jax.enable_x64(True):
        xp, h0, Wzr, Whh = (jnp.asarray(rng.standard_normal(s)) for s in
                            ((T, N, 3 * H), (N, H), (H, 2 * H), (H, H)))
        dY, dlast = jnp.asarray(rng.standard_normal((T, N, H))), jnp.asarray(
            rng.standard_normal((N, H)))

        def autodiff(*a):
            return jax_backend._reset_before_fwd(*a, reverse, 1)[0]

        def written(*a):
            return jax_backend._reset_before_scan(*a, reverse, 1)

        out_a, vjp_a = jax.vjp(autodiff, xp, h0, Wzr, Whh)
        out_w, vjp_w = jax.vjp(written, xp, h0, Wzr, Whh)
        for a, w in zip(out_a, out_w):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(w))
        for name, a, w in zip(("xp", "h0", "Wzr", "Whh"), vjp_a((dY, dlast)), vjp_w((dY, dlast))):
            np.testing.assert_allclose(np.asarray(w), np.asarray(a), err_msg=name,
                                       **CHECKS["float64_same_math"].kw)
