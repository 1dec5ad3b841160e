"""Shared by the ONNX tests: an onnxruntime session, the NumPy float64 oracle of the language
model, and the comparison in the conformance table's float32 output tolerance."""

import numpy as np
import onnxruntime as ort

import d2lgru
from d2lgru.conformance.tables import tolerance
from d2lgru.model import one_hot


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
