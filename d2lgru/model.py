"""The book's language model: one-hot characters -> GRU -> dense head over the vocabulary.

``logits = Y.reshape(T * N, D * H) @ W_hq + b_q`` where ``Y`` is the GRU's time-major output on
``one_hot(X.T)``; the loss is the mean cross-entropy against ``Y_labels.T.reshape(-1)``, the
same flattening the book uses.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError, InvalidTypeError
from .spec import FORMAT_GRU, GRUParams, GRUSpec, ParamsFileError, _params_from_file, \
    check_loaded_finite, check_seed, init_params, load_container, save_params

FORMAT_LM = "d2lgru.LMParams/1"


class LMParams:
    """GRU parameters plus the head ``W_hq [D*H, V]``, ``b_q [V]``; input size is the vocab size."""

    def __init__(self, gru: GRUParams, W_hq: np.ndarray, b_q: np.ndarray):
        if not isinstance(gru, GRUParams):
            raise InvalidTypeError(f"gru must be d2lgru.GRUParams, got {type(gru).__name__}")
        for name, a in (("W_hq", W_hq), ("b_q", b_q)):
            if not isinstance(a, np.ndarray):
                raise InvalidTypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
        V, out = gru.spec.input_size, gru.spec.output_size
        if W_hq.shape != (out, V) or b_q.shape != (V,):
            raise InvalidArgumentError(f"head must be W_hq {(out, V)} and b_q {(V,)} for a {gru.spec.describe()}"
                                       f", got {W_hq.shape} and {b_q.shape}")
        if W_hq.dtype != gru.dtype or b_q.dtype != gru.dtype:
            raise InvalidArgumentError(f"head dtype must match the GRU's {gru.dtype}, got {W_hq.dtype}/{b_q.dtype}")
        self.gru, self.W_hq, self.b_q = gru, W_hq, b_q

    @property
    def spec(self) -> GRUSpec:
        return self.gru.spec

    @property
    def vocab_size(self) -> int:
        return self.gru.spec.input_size

    @property
    def dtype(self):
        return self.gru.dtype

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {**{f"gru.{k}": v for k, v in self.gru.to_arrays().items()},
                "head.W_hq": self.W_hq, "head.b_q": self.b_q}

    def flat(self) -> list[np.ndarray]:
        return list(self.to_arrays().values())

    def map(self, fn) -> "LMParams":
        return LMParams(self.gru.map(fn), fn(self.W_hq), fn(self.b_q))

    def astype(self, dtype) -> "LMParams":
        return self.map(lambda a: a.astype(dtype))

    def copy(self) -> "LMParams":
        return self.map(np.array)

    def __eq__(self, other):
        return (isinstance(other, LMParams) and self.gru == other.gru
                and np.array_equal(self.W_hq, other.W_hq) and np.array_equal(self.b_q, other.b_q))

    def __repr__(self):
        return f"LMParams(vocab {self.vocab_size}, {self.gru!r})"

    def save(self, path, *, format: str | None = None):
        """Write an ``.npz`` (or ``.safetensors``: ``format`` or the suffix, as in
        :meth:`GRUParams.save`) atomically; NaN/inf weights are refused."""
        return save_params(path, FORMAT_LM, self.spec, self.to_arrays(), format)

    @classmethod
    def load(cls, path) -> "LMParams":
        """Read a file written by :meth:`save`; a bad file raises ``ParamsFileError`` and NaN/inf
        weights ``NonFiniteParamsError``, as :meth:`GRUParams.load` does."""
        meta, arrays = load_container(path, FORMAT_LM)
        gru = _params_from_file(path, meta, arrays, "gru.")
        try:
            model = cls(gru, arrays["head.W_hq"], arrays["head.b_q"])
        except (KeyError, ValueError) as exc:
            raise ParamsFileError(f"{path} is not a valid d2lgru language-model file ({exc})") from None
        check_loaded_finite(path, model.to_arrays())
        return model


def lm_keys(spec: GRUSpec) -> list[str]:
    """The keys of :meth:`LMParams.to_arrays` (and so the order of :meth:`LMParams.flat`) for
    ``spec``: per cell ``gru.l{l}.d{d}.W_x, W_h, b_x, b_h``, then ``head.W_hq, head.b_q``."""
    return [f"gru.l{l}.d{d}.{k}" for l, d in spec.cells() for k in ("W_x", "W_h", "b_x", "b_h")] \
        + ["head.W_hq", "head.b_q"]


def trained(spec: GRUSpec) -> frozenset[str]:
    """The parameters training updates, by :func:`lm_keys` name (e.g. ``gru.l0.d0.b_h``): all
    but ``b_h`` of a reset-before cell.

    A reset-before cell only ever adds ``b_x + b_h`` (the book's cell has one bias per gate, as
    Keras' reset-before layer does), so updating both would move that sum at twice the learning
    rate and count its gradient twice in the clipping norm; training updates ``b_x`` and leaves
    ``b_h`` as it came. A reset-after cell keeps the candidate's ``b_h`` inside ``r * (...)``,
    and trains both biases of every gate as the cuDNN-style layers do.
    """
    return frozenset(k for k in lm_keys(spec) if spec.reset_after or not k.endswith(".b_h"))


def init_lm(vocab_size: int, hidden_size: int = 256, *, num_layers: int = 1,
            bidirectional: bool = False, reset_after: bool = False, gates: str = "both",
            seed: int = 0, dtype=np.float32) -> LMParams:
    """The book's init for the whole model: GRU as :func:`init_params`, then ``W_hq`` from
    N(0, 0.01) and a zero ``b_q``, all from one seeded generator stream; ``seed`` is a
    non-negative integer, as there."""
    seed = check_seed(seed)
    spec = GRUSpec(vocab_size, hidden_size, num_layers, bidirectional, reset_after, gates)
    gru = init_params(spec, seed, dtype=dtype)
    rng = np.random.default_rng([seed, 1])
    W_hq = (rng.standard_normal((spec.output_size, vocab_size)) * 0.01).astype(dtype)
    return LMParams(gru, W_hq, np.zeros(vocab_size, dtype))


def one_hot(ids: np.ndarray, depth: int, dtype=np.float32) -> np.ndarray:
    """``[N, T]`` integer ids -> time-major ``[T, N, depth]`` one-hot, as the book's ``F.one_hot(X.T)``."""
    ids = np.asarray(ids)
    return np.eye(depth, dtype=dtype)[ids.T]


__all__ = ["LMParams", "init_lm", "one_hot", "FORMAT_LM", "FORMAT_GRU"]
