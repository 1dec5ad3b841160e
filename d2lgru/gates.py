"""What the gates do: the update gate ``Z`` and reset gate ``R`` of a GRU on an input.

The values come from one function of the spec, :func:`gate_values`, which runs the NumPy
oracle's own forward pass (:func:`d2lgru.backends.numpy_backend.forward`, whose per-direction
cache holds ``Z`` and ``R``) in float64. No backend returns its gate values: every framework's
fused layer gives only outputs and the final state, and the scratch impls keep the gates inside
the framework's autodiff graph (:data:`GATE_SOURCE`). A checkpoint's canonical weights are the
same on every backend, so the gates of a run trained anywhere are computed here, and a backend
is asked only for what it can do: its own output on the same text, which
:func:`checkpoint_gates` compares with the oracle's.

``d2lgru gates`` draws them (:func:`plot_gates`) and writes them (:func:`write_json`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

from ._io import figure_format, save_figure, write_atomic
from .backends import get_backend, numpy_backend
from .backends._base import check_gru_inputs
from .errors import InvalidArgumentError
from .model import one_hot
from .spec import GRUParams

FORMAT_GATES = "d2lgru.Gates/1"

#: where gate values come from, whatever the backend: said in every figure and JSON
GATE_SOURCE = ("the NumPy float64 oracle on the checkpoint's weights (no backend returns its "
               "gate values: fused layers give only outputs and the final state)")

#: the value an ablated gate is pinned at (GRUSpec.gates): Z = 0 keeps only H~, R = 1 resets nothing
PINNED = {"z": 0.0, "r": 1.0}
#: the most tokens a figure draws (one column each: 20,000 took 5 minutes and could not be read)
MAX_TOKENS = 1000
GATE_NAMES = {"z": "update gate Z", "r": "reset gate R"}


def gate_values(params: GRUParams, X, h0=None) -> dict:
    """The gates of ``params`` on the time-major input ``X [T, N, I]`` from ``h0`` (zeros by
    default), computed in float64 with the oracle's equations (:mod:`d2lgru.spec`).

    Returns ``{"Z": [[Z_ld]], "R": [[R_ld]], "Y", "h_n", "live"}``: per layer ``l`` and direction
    ``d`` an array ``[T, N, H]`` in the input's time order (the backward direction's too), the
    oracle's output ``Y [T, N, D*H]`` and state ``h_n``, and ``live``, which gates the cell has
    (``{"z": bool, "r": bool}``); an ablated gate's array holds its pinned value
    (:data:`PINNED`). The plain RNN (``gates == "none"``) has no gates and is refused."""
    if not isinstance(params, GRUParams):
        raise InvalidArgumentError(f"params must be d2lgru.GRUParams, got {type(params).__name__}")
    spec = params.spec
    if spec.gates == "none":
        raise InvalidArgumentError(f"a {spec.describe()} has no update or reset gate to show")
    X, h0 = (a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in (X, h0))
    X, h0 = check_gru_inputs(spec, np.float64, X, h0)
    Y, h_n, caches = numpy_backend.forward(params.astype(np.float64), X, h0)
    Z, R = [], []
    for _, layer_caches in caches:
        # a cell cache is (h0, Z, R, ...); the backward direction's runs over reversed time
        Z.append([c[1] if d == 0 else c[1][::-1] for d, c in enumerate(layer_caches)])
        R.append([c[2] if d == 0 else c[2][::-1] for d, c in enumerate(layer_caches)])
    return {"Z": Z, "R": R, "Y": Y, "h_n": h_n,
            "live": {"z": spec.has_update_gate, "r": spec.has_reset_gate}}


def checkpoint_gates(ckpt: dict, text: str, *, backend=None, impl: str = "scratch",
                     name: str = "") -> dict:
    """The gates of a loaded checkpoint (:func:`d2lgru.checkpoint.load`) on ``text`` (cleaned
    as the corpus was, as ``predict`` reads its prefix), as the JSON record that
    :func:`plot_gates` draws: the tokens, per layer and direction ``Z`` and ``R`` ``[T, H]``
    (rounded to 3 decimals, finer than the figure's 256 colours; null for a pinned gate) with
    each gate's units sorted by mean activation, where the values come from, and how far
    ``backend``'s own output on the text is from the oracle's."""
    from .train import encode_text
    model, vocab, config = ckpt["model"], ckpt["vocab"], ckpt["config"]
    spec = model.spec
    if spec.gates == "none":
        raise InvalidArgumentError(f"the checkpoint holds a {spec.describe()}: the plain RNN has "
                                   f"no update or reset gate to show")
    ids = encode_text(text, vocab, config.token, what="the text")
    if len(ids) > MAX_TOKENS:
        raise InvalidArgumentError(f"the text has {len(ids):,} tokens; the figure draws at most "
                                   f"{MAX_TOKENS:,} (a column each), so give a shorter text")
    X = one_hot(np.asarray([ids]), model.vocab_size, np.float64)
    gates = gate_values(model.gru, X)
    be = get_backend(backend)
    be.check_impl(impl, spec, model.dtype)
    Y_backend, _ = be.gru(model.gru, X.astype(model.dtype), impl=impl)
    diff = float(np.max(np.abs(Y_backend.astype(np.float64) - gates["Y"])))
    cells = []
    for l, d in spec.cells():
        cell = {"layer": l, "direction": d}
        for g, key in (("z", "Z"), ("r", "R")):
            values = gates[key][l][d][:, 0, :]  # [T, H]
            live = gates["live"][g]
            cell[key] = np.round(values, 3).tolist() if live else None
            cell[f"{g}_unit_order"] = (np.argsort(-values.mean(axis=0), kind="stable").tolist()
                                       if live else None)
        cells.append(cell)
    last = ckpt["history"][-1]
    pinned = {g: f"{GATE_NAMES[g]} pinned at {PINNED[g]:g} ({spec.gates} ablation)"
              for g, live in gates["live"].items() if not live}
    return {
        "format": FORMAT_GATES,
        "text": "".join(vocab.idx_to_token[i] for i in ids) if config.token == "char"
        else " ".join(vocab.idx_to_token[i] for i in ids),
        "tokens": [vocab.idx_to_token[i] for i in ids],
        "checkpoint": {"name": name, "backend": last.get("backend"), "impl": last.get("impl"),
                       "epochs": ckpt["epoch"], "perplexity": last["perplexity"],
                       "spec": spec.describe(), "token": config.token},
        "source": GATE_SOURCE,
        "backend_check": {"backend": be.name, "impl": impl, "dtype": str(model.dtype),
                          "max_abs_diff_Y": diff},
        "pinned": pinned,
        "cells": cells,
    }


def write_json(record: dict, path) -> Path:
    """``record`` as compact JSON at ``path``, gzip-compressed (reproducibly: no timestamp)
    when its name ends in ``.gz``."""
    path = Path(path)
    data = json.dumps(record, separators=(",", ":")).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    return write_atomic(path, lambda f: f.write(data), "wb")


def _cell_name(spec_cells: int, layer: int, direction: int, bidirectional: bool) -> str:
    parts = []
    if spec_cells > 1 or bidirectional:
        parts.append(f"layer {layer + 1}")
    if bidirectional:
        parts.append("backward" if direction else "forward")
    return ", ".join(parts)


def plot_gates(record: dict, path) -> Path:
    """One figure, in the format ``path``'s suffix names (PNG, PDF, SVG, JPEG, ...; PNG
    without one): per layer and direction a heatmap of units x tokens for each live gate (units
    sorted by mean activation, colour 0..1), then each gate's mean over units per token."""
    figure_format(path)  # a name matplotlib cannot write fails before the drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [t if t != " " else "\u2423" for t in record["tokens"]]
    T = len(tokens)
    cells = record["cells"]
    bidirectional = any(c["direction"] for c in cells)
    layers = 1 + max(c["layer"] for c in cells)
    live = [(g, key) for g, key in (("z", "Z"), ("r", "R")) if cells[0][key] is not None]
    maps = [(c, g, key) for c in cells for g, key in live]
    width = min(max(8.0, 0.19 * T + 2.5), 40.0)
    fig, axes = plt.subplots(len(maps) + 1, 1, figsize=(width, 2.9 * len(maps) + 3.0), dpi=110,
                             sharex=True, layout="constrained",
                             gridspec_kw={"height_ratios": [3] * len(maps) + [2]})
    image = None
    for ax, (c, g, key) in zip(axes, maps):
        values = np.asarray(c[key])[:, c[f"{g}_unit_order"]].T  # [H sorted, T]
        image = ax.imshow(values, aspect="auto", vmin=0, vmax=1, cmap="viridis",
                          interpolation="nearest")
        where = _cell_name(layers, c["layer"], c["direction"], bidirectional)
        ax.set_title(f"{GATE_NAMES[g]}{' (' + where + ')' if where else ''}", fontsize=10)
        ax.set_ylabel(f"units, by mean {key}")
    for (g, key) in live:
        for c in cells:
            where = _cell_name(layers, c["layer"], c["direction"], bidirectional)
            axes[-1].plot(np.arange(T), np.asarray(c[key]).mean(axis=1), marker=".",
                          label=f"mean {key}{' (' + where + ')' if where else ''}")
    ax = axes[-1]
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean over units")
    ax.set_xlabel("input character" if record["checkpoint"]["token"] == "char" else "input word")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8, ncol=len(live) * len(cells))
    for a in axes:
        a.set_xticks(np.arange(T))
        a.set_xticklabels(tokens, fontsize=9, family="monospace")
        a.tick_params(axis="x", labelbottom=True, length=2)
    fig.colorbar(image, ax=list(axes[:-1]), fraction=0.03, pad=0.01, label="gate value")
    info, check = record["checkpoint"], record["backend_check"]
    notes = [f"{info['spec']}; checkpoint trained on {info['backend']} {info['impl']}, "
             f"{info['epochs']} epoch{'' if info['epochs'] == 1 else 's'}, "
             f"perplexity {info['perplexity']:.2f}",
             f"gates from the NumPy float64 oracle; {check['backend']} {check['impl']} "
             f"({check['dtype']}) gives the same output within {check['max_abs_diff_Y']:.1e}"]
    notes += [f"{p}: not drawn" for p in record["pinned"].values()]
    fig.suptitle("\n".join(notes), fontsize=10)
    path = save_figure(fig, path)
    plt.close(fig)
    return path


__all__ = ["FORMAT_GATES", "GATE_SOURCE", "checkpoint_gates", "gate_values", "plot_gates",
           "write_json"]
