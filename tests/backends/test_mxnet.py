"""MXNet backend: checkpoints across backends, clear errors, the native layout, execution modes.

Real MXNet, no mocks. The conformance suite (tests/conformance) holds every impl and variant to
the NumPy oracle; these tests cover what is specific to this adapter, including the two MXNet
1.9.1 bugs it works around (see the module docstring of d2lgru/backends/mxnet_backend.py).
"""

import subprocess
import sys

import numpy as np
import pytest

import d2lgru
from d2lgru.backends import get_backend
from d2lgru.backends import mxnet_backend as mxb
from d2lgru.data import load_data_time_machine
from d2lgru.model import init_lm
from d2lgru.spec import CellParams, GRUParams, GRUSpec, init_params
from d2lgru.conformance import CHECKS, tolerance
from helpers import random_params

mx = pytest.importorskip("mxnet")

BACKEND = get_backend("mxnet")
ORACLE = get_backend("numpy")
IMPL_CELLS = [("scratch", False), ("scratch", True), ("native", True)]



@pytest.fixture(scope="module")
def batches(data_dir):
    loader, vocab = load_data_time_machine(8, 10, max_tokens=2000, path=str(data_dir))
    return list(loader)[:6], len(vocab)


# -- one clear error each -------------------------------------------------------------------

def test_wrong_dtypes_and_shapes():
    params = init_params(GRUSpec(5, 8))
    with pytest.raises(TypeError, match="X is float64 but the parameters are float32"):
        BACKEND.gru(params, np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match=r"X must have shape \(3, 2, 5\)"):
        BACKEND.gru(params, np.zeros((3, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 2, 8\)"):
        BACKEND.gru(params, np.zeros((3, 2, 5), np.float32), np.zeros((2, 2, 8), np.float32))
    with pytest.raises(TypeError, match="integer token ids"):
        BACKEND.lm_loss_and_grads(init_lm(28, 8), np.zeros((2, 3)), np.zeros((2, 3)))


def test_from_native_names_what_is_missing_or_misshapen():
    spec = GRUSpec(5, 8, 2, True, True)
    native = BACKEND.to_native(random_params(spec, np.float32))
    del native["r1_h2h_bias"]
    with pytest.raises(ValueError, match=r"lack 'r1_h2h_bias'"):
        BACKEND.from_native(native, spec)
    native = BACKEND.to_native(random_params(spec, np.float32))
    native["l0_i2h_weight"] = native["l0_i2h_weight"].T
    with pytest.raises(ValueError, match=r"l0_i2h_weight must have shape \(24, 5\)"):
        BACKEND.from_native(native, spec)


# -- the native layout ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_names_and_shapes_and_the_gluon_layer_keeps_every_bit(dtype):
    """The fused layer's names and shapes; loaded into the real layer and read back, the
    parameters are unchanged (the converters' round trip itself: test_surface.py)."""
    spec = GRUSpec(5, 8, 2, True, True)
    params = random_params(spec, dtype)
    native = BACKEND.to_native(params)
    assert sorted(native) == sorted(f"{d}{l}_{k}" for d in "lr" for l in (0, 1) for k in (
        "i2h_weight", "h2h_weight", "i2h_bias", "h2h_bias"))
    assert native["l1_i2h_weight"].shape == (24, 16) and native["l0_h2h_bias"].shape == (24,)
    layer = mxb._new_gluon_gru(spec, dtype, mx.cpu())
    mxb._load_gluon_gru(layer, params)
    assert mxb._read_gluon_gru(layer, spec) == params


def test_native_rows_are_r_z_n():
    """Distinct values per gate: the fused layer's row blocks are r, z, n (canonical z, r, h)."""
    spec = GRUSpec(3, 4, reset_after=True)
    value = {"z": 1.0, "r": 2.0, "h": 3.0}
    cell = CellParams(*(np.stack([np.full(shape[1:], value[g], np.float32) for g in "zrh"])
                        for shape in spec.cell_shapes(0).values()))
    native = BACKEND.to_native(GRUParams(spec, [[cell]]))
    for name in ("l0_i2h_weight", "l0_h2h_weight", "l0_i2h_bias", "l0_h2h_bias"):
        rows = native[name].reshape(3, 4, -1)
        assert [float(rows[i].mean()) for i in range(3)] == [2.0, 1.0, 3.0], name


def test_the_native_update_gate_keeps_the_state_as_ours_does():
    """An update-gate bias of +30 (Z = 1) must keep h0: a layer that read our z as its r (or
    flipped ``z``) would not."""
    spec = GRUSpec(3, 4, reset_after=True)
    params = random_params(spec, np.float64, scale=0.3)
    params.cell(0).b_x[0] = 30.0
    rng = np.random.default_rng(1)
    X, h0 = rng.standard_normal((5, 2, 3)), rng.uniform(-1, 1, (1, 2, 4))
    Y, h_n = BACKEND.gru(params, X, h0, impl="native")
    np.testing.assert_allclose(h_n, h0, **CHECKS["float64_state_kept"].kw)
    np.testing.assert_allclose(Y, ORACLE.gru(params, X, h0)[0], **CHECKS["float64_same_math"].kw)


def test_native_reference_reads_the_framework_initialised_layer():
    spec = GRUSpec(5, 8, 2, True, True)
    X = np.random.default_rng(2).standard_normal((4, 3, 5)).astype(np.float32)
    params, Y, h_n = BACKEND.native_reference(spec, X, seed=3)
    assert all(np.any(b != 0) for c in params.cells for cell in c for b in (cell.b_x, cell.b_h))
    Y_oracle, h_oracle = ORACLE.gru(params.astype(np.float64), X.astype(np.float64))
    np.testing.assert_allclose(Y, Y_oracle, **tolerance("float32", "output").kw)
    np.testing.assert_allclose(h_n, h_oracle, **tolerance("float32", "output").kw)
    again, _, _ = BACKEND.native_reference(spec, X, seed=3)
    assert again == params


def test_multilayer_native_gradients_without_an_input_gradient():
    """MXNet 1.9.1's CPU GRU backward corrupts the lower layers' gradients when the input needs
    no gradient (the language model's one-hot input); float64 takes that CPU path."""
    spec = GRUSpec(6, 8, 2, True, True)
    rng = np.random.default_rng(4)
    gru = random_params(spec)
    model = d2lgru.LMParams(gru, rng.standard_normal((16, 6)) * 0.3, rng.standard_normal(6) * 0.3)
    X, Y = rng.integers(0, 6, (4, 7)), rng.integers(0, 6, (4, 7))
    ours = BACKEND.lm_loss_and_grads(model, X, Y, impl="native")
    oracle = ORACLE.lm_loss_and_grads(model, X, Y)
    for a, b in zip(ours.grads.flat(), oracle.grads.flat()):
        np.testing.assert_allclose(a, b, **tolerance("float64", "gradient").kw)


# -- training: every mode, the oracle ---------------------------------------------------------

def test_the_default_mode_is_hybrid():
    for impl in ("scratch", "native"):
        assert BACKEND.impls[impl].modes == ("hybrid", "hybrid-dynamic", "eager")


@pytest.mark.parametrize("impl,reset_after", IMPL_CELLS)
@pytest.mark.parametrize("layers,bidirectional", [(2, False), (2, True)])
def test_deep_and_bidirectional_training_matches_the_oracle_in_every_mode(
        batches, impl, reset_after, layers, bidirectional):
    """float64, so that static memory (``hybrid``) or a fused-kernel bug could not hide."""
    data, V = batches
    rng = np.random.default_rng(5)
    model = init_lm(V, 16, num_layers=layers, bidirectional=bidirectional,
                    reset_after=reset_after, dtype=np.float64)
    model = model.map(lambda a: rng.standard_normal(a.shape) * 0.3)
    oracle = ORACLE.make_trainer(model, clip=0.5)
    expected = oracle.train_epoch(data)
    for mode in BACKEND.impls[impl].modes:
        trainer = BACKEND.make_trainer(model, impl=impl, mode=mode, clip=0.5)
        np.testing.assert_allclose(trainer.train_epoch(data), expected,
                                   **tolerance("float64", "train_loss").kw, err_msg=mode)
        for a, b in zip(trainer.params().flat(), oracle.params().flat()):
            np.testing.assert_allclose(a, b,
                                       **tolerance("float64", "train_weights").kw, err_msg=mode)


# -- quiet and lazy ---------------------------------------------------------------------------

def test_using_the_backend_prints_and_warns_nothing(tmp_path):
    code = ("import numpy as np, d2lgru\n"
            "b = d2lgru.get_backend('mxnet')\n"
            "m = d2lgru.init_lm(28, 8, reset_after=True)\n"
            "X = np.arange(12).reshape(2, 6) % 28\n"
            "for impl in ('scratch', 'native'):\n"
            "    b.make_trainer(m, impl=impl).train_epoch([(X, X)])\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], check=False,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
