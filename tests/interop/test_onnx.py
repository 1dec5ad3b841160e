"""ONNX interchange: ``d2lgru export`` / ``import`` against onnxruntime and the NumPy float64
oracle, and models exported by ``torch.onnx.export``. Collected only where
``D2LGRU_ONNX_TESTS=1`` (tox -e onnx, which installs onnx, onnxruntime and torch): see
tests/conftest.py.

torch 2.13's default exporter (``dynamo=True``) needs ``onnxscript``; the TorchScript exporter
(``dynamo=False``, deprecated but present) needs nothing beyond ``onnx`` and writes ``nn.GRU``
as one ONNX ``GRU`` node per layer with constant-folded weights, so these tests use it.
"""

import dataclasses
import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument
import pytest
import torch

import d2lgru
from d2lgru.checkpoint import load as load_checkpoint
from d2lgru.cli import main
from d2lgru.conformance.tables import tolerance
from d2lgru.data import load_data_time_machine
from d2lgru.model import one_hot
from d2lgru.onnx_io import META_VOCAB, OnnxImportError, build_model, read_onnx
from d2lgru.train import TrainConfig, predict, train


# -- shared: an onnxruntime session, the float64 oracle, the float32 output tolerance ---------
def session(path_or_proto):
    data = path_or_proto if isinstance(path_or_proto, (str, bytes)) else \
        path_or_proto.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(data if isinstance(data, bytes) else str(data), options,
                                providers=["CPUExecutionProvider"])


def oracle_lm(model, tokens, h0):
    """logits [T, N, V] and h_n of ``model`` on time-major ``tokens`` [T, N], in float64 on
    the NumPy backend."""
    m64 = model.astype(np.float64)
    X = one_hot(np.asarray(tokens).T, model.vocab_size, np.float64)
    Y, h_n = d2lgru.get_backend("numpy").gru(m64.gru, X, np.asarray(h0, np.float64))
    return Y @ m64.W_hq + m64.b_q, h_n


def differences(actual, expected):
    """(max-abs, max-rel, within the float32 output tolerance)."""
    tol = tolerance("float32", "output")
    diff = np.abs(np.asarray(actual, np.float64) - expected)
    rel = diff / np.maximum(np.abs(expected), np.finfo(np.float64).tiny)
    return float(diff.max()), float(rel.max()), bool(np.all(diff <= tol.atol + tol.rtol * np.abs(expected)))


def assert_close_to_oracle(actual, expected, what):
    max_abs, max_rel, ok = differences(actual, expected)
    tol = tolerance("float32", "output")
    assert ok, (f"{what}: max-abs {max_abs:.3g}, max-rel {max_rel:.3g} outside rtol {tol.rtol} / "
                f"atol {tol.atol}")
    return max_abs, max_rel


# -- d2lgru export / import ---------------------------------------------------------------
SMALL = dict(hidden_size=32, batch_size=8, num_steps=10, max_tokens=3000, epochs=6)


def random_lm(vocab, hidden, layers, bidirectional, reset_after, seed=1):
    rng = np.random.default_rng(seed)
    model = d2lgru.init_lm(vocab, hidden, num_layers=layers, bidirectional=bidirectional,
                           reset_after=reset_after)
    # weights of order 1 drive every gate away from 0.5 and the candidate into tanh's bend
    return model.map(lambda a: (rng.standard_normal(a.shape) * 0.7).astype(np.float32))


@pytest.mark.parametrize("reset_after", [False, True], ids=["reset_before", "reset_after"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_onnxruntime_gives_the_oracles_logits(reset_after, layers, bidirectional):
    model = random_lm(11, 8, layers, bidirectional, reset_after)
    sess = session(build_model(model))
    rng = np.random.default_rng(2)
    D = 2 if bidirectional else 1
    for T, N in [(9, 5), (1, 1), (35, 3)]:  # one graph, dynamic T and N
        tokens = rng.integers(0, 11, (T, N))
        h0 = rng.standard_normal((layers * D, N, 8)).astype(np.float32)
        logits, h_n = sess.run(None, {"tokens": tokens, "h0": h0})
        expected_logits, expected_h_n = oracle_lm(model, tokens, h0)
        assert logits.shape == (T, N, 11) and h_n.shape == (layers * D, N, 8)
        assert_close_to_oracle(logits, expected_logits, f"logits T={T} N={N}")
        assert_close_to_oracle(h_n, expected_h_n, f"h_n T={T} N={N}")


def greedy_onnx(sess, prefix, num_preds, vocab, state_shape):
    """The book's predict_ch8 with onnxruntime: warm up on the prefix, feed h_n back."""
    ids = [vocab[c] for c in prefix]
    h = np.zeros(state_shape, np.float32)
    if len(ids) > 1:
        _, h = sess.run(None, {"tokens": np.array(ids[:-1]).reshape(-1, 1), "h0": h})
    out = list(ids)
    for _ in range(num_preds):
        logits, h = sess.run(None, {"tokens": np.array([[out[-1]]]), "h0": h})
        out.append(int(np.argmax(logits[0, 0])))
    return "".join(vocab.idx_to_token[i] for i in out)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(data=str(data_dir), **SMALL), backend="numpy", out=out)
    return out


def test_greedy_decoding_with_onnxruntime_is_d2lgru_predict(trained_run, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(trained_run), "--onnx", str(tmp_path / "m.onnx")]) == 0
    ckpt = load_checkpoint(trained_run)
    sess = session(str(tmp_path / "m.onnx"))
    assert main(["predict", "--checkpoint", str(trained_run)]) == 0
    printed = capsys.readouterr().out.splitlines()[-2:]
    for prefix, line in zip(["time traveller", "traveller"], printed):
        assert greedy_onnx(sess, prefix, 50, ckpt["vocab"], (1, 1, 32)) == line
    # the book's two lines are not the prefix repeated: the check has something to check
    assert any(len(set(line[len("traveller"):])) > 3 for line in printed)


def test_export_then_import_gives_back_the_checkpoint(trained_run, tmp_path, data_dir):
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(trained_run), "--onnx", str(onnx_path)]) == 0
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["d2lgru.version"] == d2lgru.__version__
    assert json.loads(meta["d2lgru.spec"])["hidden_size"] == 32
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GRU") == 1 and "MatMul" in ops and "Gather" in ops
    assert main(["import", "--onnx", str(onnx_path), "--out", str(tmp_path / "back")]) == 0
    before, after = load_checkpoint(trained_run), load_checkpoint(tmp_path / "back")
    assert after["model"] == before["model"]  # bit for bit
    assert after["vocab"].idx_to_token == before["vocab"].idx_to_token
    assert after["config"] == dataclasses.replace(before["config"], data=None)  # no local path
    assert after["history"] == before["history"]
    # the imported run continues: one more epoch on any backend
    resumed = train(TrainConfig(epochs=SMALL["epochs"] + 1, data=str(data_dir)),
                    resume=tmp_path / "back")
    assert resumed.epoch == SMALL["epochs"] + 1


def test_a_model_trained_by_torch_exports(tmp_path, data_dir):
    result = train(TrainConfig(data=str(data_dir), reset_after=True, **{**SMALL, "epochs": 2}),
                   backend="torch", impl="native", out=tmp_path / "run")
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--onnx",
                 str(tmp_path / "m.onnx")]) == 0
    sess = session(str(tmp_path / "m.onnx"))
    tokens = np.random.default_rng(0).integers(0, result.model.vocab_size, (12, 4))
    h0 = np.zeros((1, 4, 32), np.float32)
    logits, _ = sess.run(None, {"tokens": tokens, "h0": h0})
    assert_close_to_oracle(logits, oracle_lm(result.model, tokens, h0)[0], "torch-trained logits")


def test_a_two_layer_model_exports_each_layer_as_its_own_gru_node(tmp_path):
    model = random_lm(6, 4, 2, True, False)  # to_onnx() alone refuses it; the export names layers
    with pytest.raises(d2lgru.D2lgruError, match="pass layer=0..1"):
        model.gru.to_onnx()
    proto = build_model(model)
    grus = [n for n in proto.graph.node if n.op_type == "GRU"]
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for layer, node in enumerate(grus):
        np.testing.assert_array_equal(weights[node.input[1]], model.gru.to_onnx(layer)["W"])


def test_export_to_a_directory_is_one_line_naming_it(trained_run, tmp_path, capsys):
    target = tmp_path / "m.onnx"
    target.mkdir()
    assert main(["export", "--checkpoint", str(trained_run), "--onnx", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"cannot write {target}: it is a directory; give a file path")
    assert "\n" not in err and ".tmp" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and not any(target.iterdir())


@pytest.mark.parametrize("gates", ["reset-only", "update-only", "none"])
def test_gate_ablations_and_the_plain_rnn_are_refused_in_one_sentence(gates):
    model = d2lgru.init_lm(5, 4, gates=gates)
    with pytest.raises(d2lgru.D2lgruError, match="has no ONNX form") as err:
        build_model(model)
    assert "\n" not in str(err.value)


def _gru_only_model(tmp_path, **attrs):
    """One GRU node over a float graph input: no head, no vocabulary (``D``: W's and R's first
    dimension, 1 unless given)."""
    h = onnx.helper
    rng = np.random.default_rng(0)
    H, I, D = 4, 3, attrs.pop("D", 1)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((D, 3 * H, I)).astype(np.float32), "W"),
             onnx.numpy_helper.from_array(rng.standard_normal((D, 3 * H, H)).astype(np.float32), "R")]
    inputs = ["X", "W", "R"]
    if attrs.pop("weights_from_input", False):
        inputs[2] = "R_in"
    node = h.make_node("GRU", inputs, ["Y", "Y_h"], hidden_size=H, **attrs)
    graph = h.make_graph([node], "g", [h.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["T", "N", I]),
                                       h.make_tensor_value_info("R_in", onnx.TensorProto.FLOAT, [1, 3 * H, H])],
                         [h.make_tensor_value_info("Y_h", onnx.TensorProto.FLOAT, None)], inits)
    path = tmp_path / "gru.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]), str(path))
    return path


def test_export_and_import_replace_an_existing_file_only_with_overwrite(trained_run, tmp_path,
                                                                        capsys):
    """The user's file, or a file of a checkpoint, at --onnx or at import's --out FILE is
    refused and left as it was; --overwrite replaces it."""
    precious = tmp_path / "precious.onnx"
    precious.write_text("precious")
    state = (trained_run / "state.json").read_bytes()
    for target in (precious, trained_run / "state.json"):
        assert main(["export", "--checkpoint", str(trained_run), "--onnx", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"--onnx {target} already exists" in err and "--overwrite" in err
    assert precious.read_text() == "precious" and (trained_run / "state.json").read_bytes() == state
    assert main(["export", "--checkpoint", str(trained_run), "--onnx", str(precious),
                 "--overwrite"]) == 0
    assert onnx.load(str(precious)).graph.node
    params = tmp_path / "lm.npz"
    params.write_text("mine")
    assert main(["import", "--onnx", str(precious), "--out", str(params)]) == 2
    assert "--out" in capsys.readouterr().err and params.read_text() == "mine"
    assert main(["import", "--onnx", str(precious), "--out", str(params), "--overwrite"]) == 0
    assert main(["import", "--onnx", str(precious), "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    assert d2lgru.LMParams.load(params).spec.hidden_size == 32


def test_a_gru_alone_imports_into_a_params_file_and_not_into_a_checkpoint(tmp_path, capsys):
    path = _gru_only_model(tmp_path, linear_before_reset=1)
    assert main(["import", "--onnx", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no language model" in err and "--out FILE.npz" in err and not (tmp_path / "run").exists()
    for name in ("gru.npz", "gru.safetensors"):
        assert main(["import", "--onnx", str(path), "--out", str(tmp_path / name)]) == 0
        params = d2lgru.GRUParams.load(tmp_path / name)
        assert params.spec == d2lgru.GRUSpec(3, 4, reset_after=True)
        W = onnx.numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
        np.testing.assert_array_equal(params.to_onnx()["W"], W)


@pytest.mark.parametrize("attrs,message", [
    (dict(weights_from_input=True), "from a computation, not a constant"),
    (dict(activations=["Relu", "Tanh"]), "activations"),
    (dict(clip=3.0), "clip=3.0"),
    (dict(layout=1), "layout=1"),
    (dict(direction="reverse"), "direction 'reverse'"),
])
def test_what_d2lgru_cannot_compute_is_named(tmp_path, attrs, message):
    path = _gru_only_model(tmp_path, **attrs)
    with pytest.raises(OnnxImportError, match=message) as err:
        read_onnx(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("direction,D", [("forward", 2), ("bidirectional", 1), ("reverse", 1),
                                         ("reverse", 2)])
def test_a_direction_that_w_contradicts_or_reverse_is_refused(tmp_path, capsys, direction, D):
    """onnxruntime runs only a node whose direction matches W's first dimension (and runs
    reverse); d2lgru imports none of these rather than a GRU of other directions."""
    path = _gru_only_model(tmp_path, direction=direction, D=D)
    feed = {"X": np.ones((2, 1, 3), np.float32), "R_in": np.zeros((1, 12, 4), np.float32)}
    if D == (2 if direction == "bidirectional" else 1):
        session(str(path)).run(None, feed)                  # valid ONNX that d2lgru cannot run
    else:
        with pytest.raises(InvalidArgument, match="Input W must have shape"):
            session(str(path)).run(None, feed)
    message = "uses direction 'reverse' .d2lgru's directions are forward and bidirectional" \
        if direction == "reverse" else \
        (f"GRU node 'Y' has direction '{direction}' but its W has first dimension {D} "
         f".W \\[D, 3H, I\\]: forward and reverse need D = 1, bidirectional D = 2.")
    with pytest.raises(OnnxImportError, match=message) as err:
        read_onnx(path)
    assert "\n" not in str(err.value)
    assert main(["import", "--onnx", str(path), "--out", str(tmp_path / "gru.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and not (tmp_path / "gru.npz").exists()


def test_an_onnx_gru_with_non_finite_weights_is_refused(tmp_path):
    path = _gru_only_model(tmp_path)
    proto = onnx.load(str(path))
    R = onnx.numpy_helper.to_array(proto.graph.initializer[1]).copy()
    R[0, 2, 1] = np.inf
    proto.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(R, "R"))
    onnx.save(proto, str(path))
    with pytest.raises(OnnxImportError, match="R holds 1 NaN/inf value; every weight must be "
                                              "finite") as err:
        read_onnx(path)
    assert "\n" not in str(err.value)
    assert main(["import", "--onnx", str(path), "--out", str(tmp_path / "gru.npz")]) == 2
    assert not (tmp_path / "gru.npz").exists()


def test_a_model_without_vocabulary_needs_one(trained_run, tmp_path):
    path = tmp_path / "m.onnx"
    main(["export", "--checkpoint", str(trained_run), "--onnx", str(path)])
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != META_VOCAB]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, str(path))
    assert "give --vocab" in read_onnx(path).why_not_lm
    found = read_onnx(path, vocab=load_checkpoint(trained_run)["vocab"])
    assert found.why_not_lm is None and found.lm == load_checkpoint(trained_run)["model"]


# -- torch.onnx.export -> d2lgru import ------------------------------------------------------
torch.set_num_threads(1)


def torch_export(module, args, path, input_names, output_names, dynamic_axes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_an_nn_gru_imports_and_computes_what_torch_computes(tmp_path, layers, bidirectional):
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 6, layers, bidirectional=bidirectional).eval()
    D = 2 if bidirectional else 1
    X, h0 = torch.randn(7, 3, 5), torch.randn(layers * D, 3, 6)
    torch_export(gru, (X, h0), tmp_path / "gru.onnx", ["X", "h0"], ["Y", "h_n"],
                 {"X": {0: "T", 1: "N"}, "h0": {1: "N"}})
    assert main(["import", "--onnx", str(tmp_path / "gru.onnx"), "--out",
                 str(tmp_path / "gru.npz")]) == 0
    params = d2lgru.GRUParams.load(tmp_path / "gru.npz")
    assert params.spec == d2lgru.GRUSpec(5, 6, layers, bidirectional, reset_after=True)
    with torch.no_grad():
        Y, h_n = gru(X, h0)
    mine_Y, mine_h = d2lgru.get_backend("numpy").gru(params.astype(np.float64),
                                                    X.double().numpy(), h0.double().numpy())
    # torch ran float32: held to the float32 output tolerance against d2lgru in float64
    assert_close_to_oracle(Y.numpy(), mine_Y, "Y")
    assert_close_to_oracle(h_n.numpy(), mine_h, "h_n")


class OneHotLM(torch.nn.Module):
    """The book's model in torch: one-hot tokens -> nn.GRU -> nn.Linear."""

    def __init__(self, vocab_size, hidden):
        super().__init__()
        self.vocab_size = vocab_size
        self.gru = torch.nn.GRU(vocab_size, hidden)
        self.head = torch.nn.Linear(hidden, vocab_size)

    def forward(self, tokens, h0):
        Y, h_n = self.gru(torch.nn.functional.one_hot(tokens, self.vocab_size).float(), h0)
        return self.head(Y), h_n


def torch_predict(lm, prefix, num_preds, vocab):
    ids = [vocab[c] for c in prefix]
    h = torch.zeros(1, 1, lm.gru.hidden_size)
    with torch.no_grad():
        if len(ids) > 1:
            _, h = lm(torch.tensor(ids[:-1]).reshape(-1, 1), h)
        out = list(ids)
        for _ in range(num_preds):
            logits, h = lm(torch.tensor([[out[-1]]]), h)
            out.append(int(logits[0, 0].argmax()))
    return "".join(vocab.idx_to_token[i] for i in out)


def test_a_torch_language_model_imports_and_decodes_as_torch_does(tmp_path, data_dir):
    loader, vocab = load_data_time_machine(16, 20, max_tokens=4000, path=data_dir)
    torch.manual_seed(0)
    lm = OneHotLM(len(vocab), 32)
    optimizer = torch.optim.Adam(lm.parameters(), lr=0.02)
    for X, Y in list(loader) * 6:  # enough training that the greedy decode is not one letter
        logits, _ = lm(torch.tensor(X.T), torch.zeros(1, X.shape[0], 32))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)),
                                                 torch.tensor(Y.T).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    lm.eval()
    torch_export(lm, (torch.zeros(3, 2, dtype=torch.long), torch.zeros(1, 2, 32)),
                 tmp_path / "lm.onnx", ["tokens", "h0"], ["logits", "h_n"],
                 {"tokens": {0: "T", 1: "N"}, "h0": {1: "N"}})
    vocab.to_json(tmp_path / "vocab.json")
    assert main(["import", "--onnx", str(tmp_path / "lm.onnx"), "--out", str(tmp_path / "run"),
                 "--vocab", str(tmp_path / "vocab.json")]) == 0
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["epoch"] == 0 and ckpt["history"] == []
    decoded = []
    for prefix in ("time traveller", "traveller"):
        mine = predict(prefix, 50, ckpt["model"], ckpt["vocab"], backend="numpy")
        assert mine == torch_predict(lm, prefix, 50, vocab)
        decoded.append(mine)
    assert any(len(set(line[len("traveller"):])) > 3 for line in decoded)
    # an imported model (epoch 0, no history) trains on: `train --resume`
    resumed = train(TrainConfig(epochs=1, data=str(data_dir)), resume=tmp_path / "run")
    assert resumed.epoch == 1 and len(load_checkpoint(tmp_path / "run")["history"]) == 1
