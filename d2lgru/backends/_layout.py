"""The scratch implementations' own layout, shared by every adapter: per cell ``W_x [I, 3H]``
and ``W_h [H, 3H]`` with columns in the canonical gate order z | r | h (one matmul feeds all
three gates), biases ``[3H]``; or the same weights as rows, ``[3H, I]``, for frameworks whose
dense operator computes ``x W^T`` (``rows=True``). A pure relayout, so gradients with respect
to these arrays convert back exactly. NumPy only: adapters turn tensors into arrays first.
"""

from __future__ import annotations

import numpy as np

from ..model import LMParams, lm_keys
from ..spec import CellParams, GRUParams, GRUSpec
from . import _cudnn_layout

#: the arrays of one cell, in the order of :meth:`CellParams.arrays` and of every flat list here
CELL_KEYS = ("W_x", "W_h", "b_x", "b_h")


def cat(w: np.ndarray) -> np.ndarray:
    """``[3, A, H]`` gate-stacked -> ``[A, 3H]`` with columns z | r | h."""
    return np.ascontiguousarray(w.transpose(1, 0, 2).reshape(w.shape[1], -1))


def uncat(w: np.ndarray, gates: int = 3) -> np.ndarray:
    """``[A, gates*H]`` -> ``[gates, A, H]`` (the inverse of :func:`cat`)."""
    return np.ascontiguousarray(w.reshape(w.shape[0], gates, -1).transpose(1, 0, 2))


def cell_arrays(params: GRUParams, *, rows: bool = False) -> list[np.ndarray]:
    """Canonical -> per cell (``spec.cells()`` order) ``W_x, W_h, b_x, b_h`` as ``[A, 3H]``
    (``rows``: ``[3H, A]``) and ``[3H]``; fresh arrays, never views of ``params``."""
    def weight(w):
        return np.ascontiguousarray(cat(w).T) if rows else cat(w)
    out = []
    for l, d in params.spec.cells():
        c = params.cell(l, d)
        out += [weight(c.W_x), weight(c.W_h), c.b_x.reshape(-1).copy(), c.b_h.reshape(-1).copy()]
    return out


def cell_params(spec: GRUSpec, arrays, *, rows: bool = False) -> GRUParams:
    """The inverse of :func:`cell_arrays`, also for gradients (each has its array's shape).
    Copies: the result never shares memory with a tensor that training goes on updating."""
    it = iter(arrays)

    def weight():
        a = np.array(next(it))
        return uncat(a.T if rows else a)

    cells = [[None] * spec.num_directions for _ in range(spec.num_layers)]
    for l, d in spec.cells():
        W_x, W_h = weight(), weight()
        b_x, b_h = (np.array(next(it)).reshape(3, spec.hidden_size) for _ in range(2))
        cells[l][d] = CellParams(W_x, W_h, b_x, b_h)
    return GRUParams(spec, cells)


def nest(flat, spec: GRUSpec) -> list[list[tuple]]:
    """A flat per-cell list (four a cell, ``spec.cells()`` order) -> ``[layer][direction]``
    tuples of four."""
    it = iter(flat)
    return [[tuple(next(it) for _ in CELL_KEYS) for _ in range(spec.num_directions)]
            for _ in range(spec.num_layers)]


def lm_params(spec: GRUSpec, by_key: dict, from_native=None) -> LMParams:
    """``{lm_keys name: array}`` (weights or their gradients) -> :class:`LMParams`. The GRU's
    arrays are in the scratch layout (:func:`cell_params`), or, with ``from_native`` (the
    adapter's converter), a cuDNN-style layer's under the names :func:`_cudnn_layout.keys`
    gives its parameters."""
    if from_native is None:
        gru = cell_params(spec, [by_key[k] for k in lm_keys(spec)[:-2]])
    else:
        gru = from_native({n: by_key[k] for n, k in _cudnn_layout.keys(spec).items()}, spec)
    return LMParams(gru, np.array(by_key["head.W_hq"]), np.array(by_key["head.b_q"]))
