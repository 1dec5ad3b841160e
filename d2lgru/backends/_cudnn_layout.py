"""The cuDNN GRU parameter layout, shared by ``torch.nn.GRU``, ``paddle.nn.GRU``,
``mindspore.nn.GRU`` and ``mxnet.gluon.rnn.GRU``: per layer ``l`` and direction
``weight_ih_l{l}`` ``[3H, in]``, ``weight_hh_l{l}`` ``[3H, H]``, ``bias_ih_l{l}`` and
``bias_hh_l{l}`` ``[3H]`` (``_reverse`` for the backward direction; Gluon names the same arrays
``{l|r}{layer}_i2h_weight`` etc., see ``names=``), each stacking the gates' row blocks in the
order r, z, n (n is the candidate, the canonical h). NumPy only: the adapters turn framework
tensors into arrays first.
"""

from __future__ import annotations

import numpy as np

from ..spec import GATES, CellParams, GRUParams, GRUSpec
from ._base import check_native_names
from ..errors import InvalidArgumentError

#: row block k holds canonical gate GATE_ORDER[k] (r, z, n <- z, r, h): a swap of the first two,
#: so the same index list converts both ways
NATIVE_GATES = ("r", "z", "h")
GATE_ORDER = [GATES.index(g) for g in NATIVE_GATES]


def names(layer: int, direction: int) -> dict[str, str]:
    """Canonical array -> native parameter name for one cell."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    return {"W_x": "weight_ih" + sfx, "W_h": "weight_hh" + sfx,
            "b_x": "bias_ih" + sfx, "b_h": "bias_hh" + sfx}


def keys(spec: GRUSpec, names=names) -> dict[str, str]:
    """Native parameter name -> its canonical :func:`d2lgru.model.lm_keys` name
    (``weight_hh_l0`` -> ``gru.l0.d0.W_h``)."""
    return {n: f"gru.l{l}.d{d}.{k}" for l, d in spec.cells() for k, n in names(l, d).items()}


def shapes(spec: GRUSpec, names=names) -> dict[str, tuple[int, ...]]:
    """Every native parameter of a ``spec`` layer and its shape, in the layer's order."""
    H3, out = 3 * spec.hidden_size, {}
    for l, d in spec.cells():
        n = names(l, d)
        out.update({n["W_x"]: (H3, spec.layer_input_size(l)), n["W_h"]: (H3, spec.hidden_size),
                    n["b_x"]: (H3,), n["b_h"]: (H3,)})
    return out


def to_native(params: GRUParams, names=names) -> dict[str, np.ndarray]:
    """Canonical ``W [3, in, H]`` (gates z, r, h) -> ``[3H, in]`` with row blocks r, z, n;
    biases ``[3, H]`` -> ``[3H]`` the same way. Exact: only a reordering. ``names(l, d)`` maps
    a cell's canonical arrays to the framework's parameter names."""
    H = params.spec.hidden_size
    native = {}
    for l, d in params.spec.cells():
        cell, n = params.cell(l, d), names(l, d)
        for key in ("W_x", "W_h"):
            w = getattr(cell, key)[GATE_ORDER]
            native[n[key]] = np.ascontiguousarray(w.transpose(0, 2, 1).reshape(3 * H, -1))
        for key in ("b_x", "b_h"):
            native[n[key]] = np.ascontiguousarray(getattr(cell, key)[GATE_ORDER].reshape(3 * H))
    return native


def from_native(native: dict, spec: GRUSpec, layer: str, names=names) -> GRUParams:
    """The native arrays (parameters or their gradients) by name -> canonical
    :class:`GRUParams`. ``layer`` names the framework's layer in the errors: a missing,
    unknown or misshapen array is a ``ValueError`` that names it."""
    expected = shapes(spec, names)
    check_native_names(native, expected, layer, spec)
    arrays = {}
    for k, shape in expected.items():
        a = np.asarray(native[k])
        if a.shape != shape:
            raise InvalidArgumentError(f"{k} must have shape {shape} for a {spec.describe()}, got {a.shape}")
        arrays[k] = a
    H = spec.hidden_size

    def weight(k):  # [3H, in], rows r | z | n -> [3, in, H], gates z, r, h
        return np.ascontiguousarray(arrays[k].reshape(3, H, -1)[GATE_ORDER].transpose(0, 2, 1))

    def bias(k):
        return np.ascontiguousarray(arrays[k].reshape(3, H)[GATE_ORDER])

    cells = []
    for l in range(spec.num_layers):
        row = []
        for d in range(spec.num_directions):
            n = names(l, d)
            row.append(CellParams(weight(n["W_x"]), weight(n["W_h"]), bias(n["b_x"]),
                                  bias(n["b_h"])))
        cells.append(row)
    return GRUParams(spec, cells)
