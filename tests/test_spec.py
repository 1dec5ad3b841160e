"""The spec: parameter shapes, ONNX layout (checked against ONNX's own equations), .npz files."""

import errno
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import d2lgru
from d2lgru import GRUParams, GRUSpec, ParamsFileError, init_params
from d2lgru._io import write_atomic
from d2lgru.errors import (D2lgruError, InvalidArgumentError, InvalidTypeError, NonFiniteError,
                           OutputIsADirectoryError)
from d2lgru.model import FORMAT_LM
from d2lgru.spec import FORMAT_GRU, GATE_SETS, save_npz
from d2lgru.conformance import CHECKS
from helpers import random_params



def onnx_gru_reference(X, W, R, B, h0, linear_before_reset):
    """ONNX GRU (operators.md), forward direction, written from its equations:
    zt = f(Xt*(Wz^T) + Ht-1*(Rz^T) + Wbz + Rbz); rt likewise;
    ht = g(Xt*(Wh^T) + (rt (.) Ht-1)*(Rh^T) + Rbh + Wbh)       # linear_before_reset = 0
    ht = g(Xt*(Wh^T) + (rt (.) (Ht-1*(Rh^T) + Rbh)) + Wbh)     # linear_before_reset != 0
    Ht = (1 - zt) (.) ht + zt (.) Ht-1"""
    sig = lambda x: 1 / (1 + np.exp(-x))
    H = R.shape[-1]
    Wz, Wr, Wh = W[:H], W[H:2 * H], W[2 * H:]
    Rz, Rr, Rh = R[:H], R[H:2 * H], R[2 * H:]
    Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(B, 6)
    h, Y = h0, []
    for x in X:
        z = sig(x @ Wz.T + h @ Rz.T + Wbz + Rbz)
        r = sig(x @ Wr.T + h @ Rr.T + Wbr + Rbr)
        if linear_before_reset:
            c = np.tanh(x @ Wh.T + r * (h @ Rh.T + Rbh) + Wbh)
        else:
            c = np.tanh(x @ Wh.T + (r * h) @ Rh.T + Rbh + Wbh)
        h = (1 - z) * c + z * h
        Y.append(h)
    return np.stack(Y)


@pytest.mark.parametrize("reset_after", [False, True])
def test_onnx_layout_matches_onnx_equations(reset_after):
    spec = GRUSpec(5, 3, reset_after=reset_after)
    params = random_params(spec)
    onnx = params.to_onnx()
    assert onnx["W"].shape == (1, 9, 5) and onnx["R"].shape == (1, 9, 3) and onnx["B"].shape == (1, 18)
    assert onnx["linear_before_reset"] == int(reset_after)
    rng = np.random.default_rng(1)
    X, h0 = rng.standard_normal((6, 2, 5)), rng.standard_normal((1, 2, 3))
    expected = onnx_gru_reference(X, onnx["W"][0], onnx["R"][0], onnx["B"][0], h0[0], reset_after)
    Y, h_n = d2lgru.get_backend("numpy").gru(params, X, h0)
    np.testing.assert_allclose(Y, expected, **CHECKS["float64_same_math"].kw)
    np.testing.assert_allclose(h_n[0], expected[-1], **CHECKS["float64_same_math"].kw)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnx_round_trip_is_bit_exact(bidirectional):
    spec = GRUSpec(4, 3, bidirectional=bidirectional, reset_after=True)
    params = random_params(spec, dtype=np.float32)
    onnx = params.to_onnx()
    back = GRUParams.from_onnx(onnx["W"], onnx["R"], onnx["B"],
                               linear_before_reset=onnx["linear_before_reset"])
    assert back == params and back.spec == spec


def test_from_onnx_without_bias_and_bad_shapes():
    W, R = np.ones((1, 6, 3), np.float32), np.ones((1, 6, 2), np.float32)
    params = GRUParams.from_onnx(W, R)
    assert not params.spec.reset_after and np.all(params.cell(0).b_x == 0)
    with pytest.raises(ValueError, match=r"R must have shape \(1, 6, 2\)"):
        GRUParams.from_onnx(W, np.ones((1, 6, 3), np.float32))
    with pytest.raises(ValueError, match="linear_before_reset must be 0 or 1"):
        GRUParams.from_onnx(W, R, linear_before_reset=2)


@pytest.mark.parametrize("array", ["W", "R", "B"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_from_onnx_refuses_non_finite_weights_as_save_and_load_do(array, bad):
    onnx = random_params(GRUSpec(3, 2), dtype=np.float32).to_onnx()
    weights = {k: onnx[k].copy() for k in ("W", "R", "B")}
    weights[array].flat[1] = bad
    with pytest.raises(NonFiniteError, match=rf"{array} holds 1 NaN/inf value; every weight "
                                             rf"must be finite") as info:
        GRUParams.from_onnx(**weights)
    assert "\n" not in str(info.value)
    with pytest.raises(NonFiniteError, match=r"W holds 18 NaN/inf values"):
        GRUParams.from_onnx(onnx["W"] * np.nan, onnx["R"])  # B defaults to zeros


def test_to_onnx_of_a_multi_layer_gru_needs_the_layer():
    params = random_params(GRUSpec(3, 2, num_layers=3, bidirectional=True), dtype=np.float32)
    with pytest.raises(InvalidArgumentError, match=r"ONNX's GRU operator holds one layer and "
                                                   r"this is a 3-layer .*pass layer=0\.\.2"):
        params.to_onnx()
    for layer in range(3):  # each layer its own ONNX node, with that layer's input size
        onnx = params.to_onnx(layer)
        assert onnx["W"].shape == (2, 6, 3 if layer == 0 else 4)
        back = GRUParams.from_onnx(onnx["W"], onnx["R"], onnx["B"])
        for d in range(2):
            assert all(np.array_equal(a, b) for a, b in zip(
                back.cell(0, d).arrays().values(), params.cell(layer, d).arrays().values()))
    assert params.to_onnx(np.int64(2))["R"].shape == (2, 6, 2)
    for layer in (-1, 3):
        with pytest.raises(InvalidArgumentError, match=rf"layer must be an integer from 0 to 2, "
                                                       rf"got {layer}"):
            params.to_onnx(layer)
    for layer in (True, 1.0, "0"):
        with pytest.raises(InvalidTypeError, match="layer must be an integer from 0 to 2"):
            params.to_onnx(layer)
    one = random_params(GRUSpec(3, 2), dtype=np.float32)  # one layer: as before, layer optional
    assert all(np.array_equal(one.to_onnx()[k], one.to_onnx(0)[k]) for k in ("W", "R", "B"))
    with pytest.raises(InvalidArgumentError, match="from 0 to 0, got 1"):
        one.to_onnx(1)


def test_gate_order_lives_in_one_place():
    assert d2lgru.GATES == ("z", "r", "h")
    params = random_params(GRUSpec(2, 3))
    np.testing.assert_array_equal(params.cell(0).gate("W_h", "r"), params.cell(0).W_h[1])


def test_spec_validation_messages():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        GRUSpec(3, 0)
    with pytest.raises(ValueError, match="bidirectional must be True or False"):
        GRUSpec(3, 2, bidirectional="yes")
    spec = GRUSpec(3, 2, num_layers=2, bidirectional=True)
    assert spec.layer_input_size(1) == 4 and spec.output_size == 4
    assert list(spec.cells()) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_init_params_is_the_books_init_and_reproducible():
    spec = GRUSpec(28, 256)
    a, b, c = init_params(spec, 3), init_params(spec, 3), init_params(spec, 4)
    assert a == b and not a == c
    cell = a.cell(0)
    assert cell.W_x.dtype == np.float32
    assert abs(cell.W_h.std() - 0.01) < 2e-4 and abs(cell.W_h.mean()) < 1e-4
    assert not cell.b_x.any() and not cell.b_h.any()


def test_init_params_and_init_lm_take_a_non_negative_integer_seed():
    spec = GRUSpec(3, 2)
    assert init_params(spec, np.int64(5)) == init_params(spec, 5)
    assert d2lgru.init_lm(5, 4, seed=np.uint8(5)) == d2lgru.init_lm(5, 4, seed=5)
    init = [lambda seed: init_params(spec, seed), lambda seed: init_params(spec, seed=seed),
            lambda seed: d2lgru.init_lm(5, 4, seed=seed)]
    for make in init:
        for seed in (-1, np.int32(-3)):
            with pytest.raises(InvalidArgumentError,
                               match=rf"seed must be a non-negative integer, got {int(seed)}"):
                make(seed)
        for seed, kind in (("a", "str"), (True, "bool"), (1.0, "float"), (None, "NoneType"),
                           ([1, 2], "list")):
            with pytest.raises(InvalidTypeError,
                               match=rf"seed must be a non-negative integer, got .* \({kind}\)"):
                make(seed)


_PATH = "^a parameter file's path must be a str or a pathlib.Path, got "


@pytest.mark.parametrize("call,error,message", [
    (lambda: init_params(None), InvalidTypeError, "^spec must be a d2lgru.GRUSpec, got NoneType$"),
    (lambda: init_params(GRUSpec(3, 2), dtype="bogus"), InvalidTypeError, "^dtype must be float32 or float64, got 'bogus'$"),
    (lambda: d2lgru.init_lm(5, 4, dtype=np.float16), InvalidTypeError, "^dtype must be float32 or float64, got float16$"),
    (lambda: init_params(GRUSpec(3, 2), sigma=np.nan), InvalidArgumentError, "^sigma must be a finite number >= 0, got nan$"),
    (lambda: init_params(GRUSpec(3, 2), sigma="0.01"), InvalidArgumentError, "^sigma must be a finite number >= 0"),
    (lambda: d2lgru.LMParams(None, np.zeros((2, 3)), np.zeros(3)), InvalidTypeError, "^gru must be d2lgru.GRUParams, got NoneType$"),
    (lambda: d2lgru.LMParams.load(None), InvalidTypeError, _PATH + "NoneType$"),
    (lambda: d2lgru.init_lm(5, 4).save(3), InvalidTypeError, _PATH + "int$"),
])
def test_construction_and_files_refuse_wrong_types_in_one_sentence(call, error, message):
    """Each once ended in an AttributeError, numpy's TypeError or (sigma=nan) NaN weights."""
    with pytest.raises(error, match=message):
        call()


def test_params_reject_wrong_shapes_and_dtypes():
    params = random_params(GRUSpec(3, 2))
    arrays = params.to_arrays()
    arrays["l0.d0.W_h"] = np.zeros((3, 2, 3))
    with pytest.raises(ValueError, match=r"W_h must have shape \(3, 2, 2\)"):
        GRUParams.from_arrays(params.spec, arrays)
    with pytest.raises(ValueError, match="all be float32 or all float64"):
        params.map(lambda a: a.astype(np.float16))


def test_save_load_round_trip(tmp_path):
    params = random_params(GRUSpec(3, 2, 2, True, True), dtype=np.float32)
    path = params.save(tmp_path / "p.npz")
    assert GRUParams.load(path) == params
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    with pytest.raises(ParamsFileError, match="expected a 1-layer"):
        GRUParams.load(path, spec=GRUSpec(3, 2))


def test_a_failed_save_leaves_the_previous_file_whole(tmp_path):
    path = random_params(GRUSpec(3, 2), dtype=np.float32).save(tmp_path / "p.npz")
    before = path.read_bytes()

    def write_half_then_fail(f):
        f.write(b"half a file")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, write_half_then_fail)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_saving_over_a_directory_names_the_path_and_not_the_temporary_file(tmp_path):
    params = random_params(GRUSpec(3, 2), dtype=np.float32)
    target = tmp_path / "run1"
    (target / "inside").mkdir(parents=True)
    for save in (lambda: params.save(target), lambda: params.save(target, format="npz"),
                 lambda: write_atomic(target, lambda f: f.write(b"x")),
                 lambda: write_atomic(str(target) + "/", lambda f: f.write("x"), "w")):
        with pytest.raises(OutputIsADirectoryError) as info:
            save()
        assert str(info.value) == f"cannot write {target}: it is a directory; give a file path"
        # what a caller catches without knowing d2lgru still catches it; the CLI prints its one line
        assert all(isinstance(info.value, t) for t in (D2lgruError, IsADirectoryError, OSError))
        assert info.value.errno == errno.EISDIR and ".tmp" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run1"]  # no temporary file left
    assert [p.name for p in target.iterdir()] == ["inside"]
    link = tmp_path / "link"  # a symlink to a directory is a name, replaced like any file
    link.symlink_to(target)
    params.save(link)
    assert not link.is_symlink() and GRUParams.load(link) == params


def test_a_system_error_while_saving_names_the_path_and_not_the_temporary_file(tmp_path):
    """A read-only or full disk is the system's OSError (same errno and class), about the
    file the caller named; an error about another file (one the writer reads) is its own."""
    missing = tmp_path / "missing" / "p.npz"  # the temporary file cannot be made there
    with pytest.raises(FileNotFoundError) as info:
        write_atomic(missing, lambda f: f.write(b"x"))
    assert info.value.filename == str(missing) and info.value.errno == errno.ENOENT

    def full(f):
        f.write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "p.npz"
    with pytest.raises(OSError) as info:
        write_atomic(path, full)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))
    assert str(info.value) == f"[Errno {errno.ENOSPC}] No space left on device: '{path}'"

    def reads_another(f):
        open(tmp_path / "elsewhere.txt")

    with pytest.raises(FileNotFoundError) as info:
        write_atomic(path, reads_another)
    assert info.value.filename == str(tmp_path / "elsewhere.txt")
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


def test_load_rejects_truncated_foreign_and_missing_files(tmp_path):
    path = random_params(GRUSpec(3, 2)).save(tmp_path / "p.npz")
    data = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ParamsFileError, match="not a readable .npz file"):
        GRUParams.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(ParamsFileError, match="not a d2lgru parameter file"):
        GRUParams.load(tmp_path / "foreign.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ParamsFileError, match="not a readable .npz"):
        GRUParams.load(tmp_path / "text.npz")
    with pytest.raises(ParamsFileError, match="no parameter file at"):
        GRUParams.load(tmp_path / "missing.npz")
    model = d2lgru.init_lm(5, 4)
    model.save(tmp_path / "lm.npz")
    with pytest.raises(ParamsFileError, match="holds 'd2lgru.LMParams/1', expected 'd2lgru.GRUParams/1'"):
        GRUParams.load(tmp_path / "lm.npz")


def test_lm_params_round_trip(tmp_path):
    model = d2lgru.init_lm(28, 16, num_layers=2, bidirectional=True, seed=1)
    assert model.W_hq.shape == (32, 28)
    model.save(tmp_path / "m.npz")
    assert d2lgru.LMParams.load(tmp_path / "m.npz") == model


# -- files that must not load: non-finite weights, .npy files, headers of the wrong shape -----

def with_non_finite(arrays, name, count):
    """A copy of ``arrays`` whose ``name`` holds ``count`` NaN/inf values."""
    arrays = {k: v.copy() for k, v in arrays.items()}
    arrays[name].reshape(-1)[:count] = [np.nan, np.inf, -np.inf][:count]
    return arrays


def test_load_refuses_non_finite_weights_and_names_the_array(tmp_path):
    params = random_params(GRUSpec(3, 2), dtype=np.float32)
    path = save_npz(tmp_path / "p.npz", FORMAT_GRU, {"spec": params.spec.to_dict()},
                    with_non_finite(params.to_arrays(), "l0.d0.W_h", 3))
    with pytest.raises(NonFiniteError, match=r"l0\.d0\.W_h holds 3 NaN/inf values") as info:
        GRUParams.load(path)
    assert isinstance(info.value, ParamsFileError) and str(path) in str(info.value)
    model = d2lgru.init_lm(5, 4)
    arrays = with_non_finite(with_non_finite(model.to_arrays(), "gru.l0.d0.W_h", 3), "head.b_q", 1)
    path = save_npz(tmp_path / "m.npz", FORMAT_LM, {"spec": model.spec.to_dict()}, arrays)
    with pytest.raises(NonFiniteError, match=r"gru\.l0\.d0\.W_h holds 3 NaN/inf values, "
                                             r"head\.b_q holds 1 NaN/inf value;") as info:
        d2lgru.LMParams.load(path)
    assert isinstance(info.value, ParamsFileError)


def test_save_refuses_non_finite_weights_and_keeps_the_previous_file(tmp_path):
    params = random_params(GRUSpec(3, 2), dtype=np.float32)
    path = params.save(tmp_path / "p.npz")
    before = path.read_bytes()
    broken = GRUParams.from_arrays(params.spec, with_non_finite(params.to_arrays(), "l0.d0.b_x", 2))
    with pytest.raises(NonFiniteError, match=r"refusing to save .*p\.npz: l0\.d0\.b_x holds 2"):
        broken.save(path)
    model = d2lgru.init_lm(5, 4)
    broken = d2lgru.LMParams(model.gru, model.W_hq, np.full(5, np.nan, np.float32))
    with pytest.raises(NonFiniteError, match=r"head\.b_q holds 5 NaN/inf values"):
        broken.save(tmp_path / "m.npz")
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.npz"]


@pytest.mark.parametrize("cls", [GRUParams, d2lgru.LMParams])
def test_load_of_a_npy_file_says_it_wants_an_npz(tmp_path, cls):
    np.save(tmp_path / "p.npy", np.zeros(3))
    with pytest.raises(ParamsFileError, match=r"p\.npy is a \.npy array file; d2lgru loads the "
                                              r"\.npz files it writes"):
        cls.load(tmp_path / "p.npy")


GOOD_SPEC = {"input_size": 3, "hidden_size": 2}
WRONG_HEADERS = [
    "null", "[]", "[1, 2]", "3", "-1.5", '"d2lgru.GRUParams/1"', "true", "{}",
    '{"format": null}', '{"format": ["d2lgru.GRUParams/1"]}',
    '{"format": "{fmt}"}', '{"format": "{fmt}", "spec": null}', '{"format": "{fmt}", "spec": []}',
    '{"format": "{fmt}", "spec": "input_size hidden_size"}', '{"format": "{fmt}", "spec": 3}',
    '{"format": "{fmt}", "spec": {"input_size": 3}}',
    '{"format": "{fmt}", "spec": {"input_size": "3", "hidden_size": 2}}',
    '{"format": "{fmt}", "spec": {"input_size": 3, "hidden_size": 2, "gates": ["both"]}}',
    '{"format": "{fmt}", "spec": {"input_size": 3, "hidden_size": 2, "gates": {"a": 1}}}',
    '{"format": "{fmt}", "spec": {"input_size": 3, "hidden_size": 2, "bidirectional": 1}}',
    '{"format": "{fmt}", "spec": {"input_size": 3, "hidden_size": 2, "num_layers": 2}}',
    '{"format": "{fmt}", "spec": {"input_size": 1e300, "hidden_size": 2}}',
    '{"format": "{fmt}", "spec": {"input_size": 4, "hidden_size": 2}}',
    "{not json",
]


@pytest.mark.parametrize("header", WRONG_HEADERS)
@pytest.mark.parametrize("cls,fmt,prefix", [(GRUParams, FORMAT_GRU, ""),
                                            (d2lgru.LMParams, FORMAT_LM, "gru.")])
def test_header_of_the_wrong_shape_is_a_params_file_error(tmp_path, header, cls, fmt, prefix):
    arrays = {prefix + k: v for k, v in random_params(GRUSpec(3, 2)).to_arrays().items()}
    if cls is d2lgru.LMParams:
        arrays.update({"head.W_hq": np.zeros((2, 3)), "head.b_q": np.zeros(3)})
    path = tmp_path / "p.npz"
    np.savez(path, __meta__=np.array(header.replace("{fmt}", fmt)), **arrays)
    with pytest.raises(ParamsFileError):
        cls.load(path)


def json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def headers():
    """Random JSON, and JSON close to a valid header: the right format, a spec whose fields
    are each either valid or random."""
    fields = {"input_size": st.just(3) | json_values(), "hidden_size": st.just(2) | json_values(),
              "num_layers": st.just(1) | json_values(), "bidirectional": st.booleans() | json_values(),
              "reset_after": st.booleans() | json_values(), "gates": st.sampled_from(GATE_SETS)}
    near = st.fixed_dictionaries({"format": st.just(FORMAT_GRU) | json_values(),
                                  "spec": st.fixed_dictionaries({}, optional=fields) | json_values()})
    return (json_values() | near).map(json.dumps)


class ValidFile(tuple):
    def __repr__(self):  # hypothesis prints its arguments: not the file's bytes
        return f"ValidFile({self[0]!r}, {len(self[1])} bytes)"


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory):
    params = random_params(GRUSpec(3, 2, 1, True), dtype=np.float32)
    path = params.save(tmp_path_factory.mktemp("valid") / "p.npz")
    return ValidFile((params, path.read_bytes()))


def corruptions(size):
    truncate = st.integers(0, size - 1).map(lambda n: ("truncate", n))
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1,
                     max_size=8).map(lambda f: ("flip", f))
    return truncate | flips | headers().map(lambda h: ("header", h))


def test_a_header_that_names_fewer_cells_than_the_file_holds_is_refused(tmp_path, valid_file):
    """Found by the property test below (1 draw in a few thousand): a unidirectional header
    over a bidirectional GRU's arrays loaded the first direction and dropped the rest."""
    params, _ = valid_file
    header = {"format": FORMAT_GRU, "spec": {"input_size": 3, "hidden_size": 2}}
    path = tmp_path / "p.npz"
    np.savez(path, __meta__=np.array(json.dumps(header)), **params.to_arrays())
    with pytest.raises(ParamsFileError,
                       match=r"unidirectional .* has no place for the arrays l0\.d1\.W_h, "):
        GRUParams.load(path)


@settings(max_examples=100, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_corrupted_params_file_loads_the_same_weights_or_raises_params_file_error(
        tmp_path, valid_file, data):
    params, blob = valid_file
    kind, how = data.draw(corruptions(len(blob)))
    path = tmp_path / "p.npz"
    if kind == "truncate":
        path.write_bytes(blob[:how])
    elif kind == "flip":
        corrupted = bytearray(blob)
        for at, mask in how:
            corrupted[at] ^= mask
        path.write_bytes(bytes(corrupted))
    else:
        np.savez(path, __meta__=np.array(how), **params.to_arrays())
    try:
        loaded = GRUParams.load(path)
    except ParamsFileError:  # a D2lgruError, ValueError: one line in the CLI, never a traceback
        return
    assert [a.shape for a in loaded.flat()] == [a.shape for a in params.flat()]
    assert all(np.array_equal(a, b) for a, b in zip(loaded.flat(), params.flat()))
