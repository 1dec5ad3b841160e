"""The GRU spec: cell equations, canonical parameters, ONNX layout and the parameter files
(``.npz``, or ``.safetensors`` with the ``safetensors`` extra).

Both cell variants share the update and reset gates::

    Z = sigmoid(X W_xz + b_xz + H W_hz + b_hz)
    R = sigmoid(X W_xr + b_xr + H W_hr + b_hr)
    H_t = Z * H_{t-1} + (1 - Z) * H~

and differ in where the reset gate acts on the candidate ``H~``:

* reset-before (``reset_after=False``; Cho et al. 2014, the book's scratch code,
  ONNX ``linear_before_reset=0``)::

      H~ = tanh(X W_xh + b_xh + (R * H) W_hh + b_hh)

* reset-after (``reset_after=True``; cuDNN, what torch, mxnet, paddle, mindspore, Flax
  and Keras' default compute; ONNX ``linear_before_reset=1``)::

      H~ = tanh(X W_xh + b_xh + R * (H W_hh + b_hh))

Canonical parameters keep, for every layer and direction, the input weights ``W_x``
``[3, I, H]``, the recurrent weights ``W_h`` ``[3, H, H]`` (row vectors times weights, as the
book writes them), an input-side bias ``b_x`` ``[3, H]`` and a recurrent-side bias ``b_h``
``[3, H]``, each stacked in the gate order :data:`GATES`. Every framework's layout is a
transpose, reorder or concatenation of these, so conversion is lossless both ways.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ._io import write_atomic
from .errors import D2lgruError, ExtraNotInstalledError, InvalidArgumentError, InvalidTypeError, \
    NonFiniteError, pip_extra

#: The canonical gate order: update (z), reset (r), candidate (h). ONNX and Keras use it too.
GATES = ("z", "r", "h")
GATE_INDEX = {g: i for i, g in enumerate(GATES)}

#: The four arrays of one cell (one layer, one direction), in save order.
CELL_ARRAYS = ("W_x", "W_h", "b_x", "b_h")

FORMAT_GRU = "d2lgru.GRUParams/1"

#: Gate ablations (the book's exercise 4) and the plain RNN (exercise 3): which gates are live.
#: An ablated update gate is fixed at Z = 0 (H_t = H~), an ablated reset gate at R = 1; with both
#: ablated the cell is the plain RNN ``H_t = tanh(X W_xh + b_xh + H W_hh + b_hh)``. The ablated
#: gate's parameters stay in the canonical set and get zero gradients.
GATE_SETS = ("both", "reset-only", "update-only", "none")


class ParamsFileError(D2lgruError, ValueError):
    """A parameter file is missing, truncated, foreign or does not match what was asked for."""


class NonFiniteParamsError(NonFiniteError, ParamsFileError):
    """A parameter file whose weights hold NaN or infinity. It is both kinds of error on purpose:
    ``except NonFiniteError`` catches every non-finite value d2lgru refuses, and
    ``except ParamsFileError`` around a load (a checkpoint reader, say) catches it as it catches
    every other unusable file."""


@dataclasses.dataclass(frozen=True)
class GRUSpec:
    """The shape of a (possibly stacked, possibly bidirectional) GRU."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    reset_after: bool = False
    gates: str = "both"

    def __post_init__(self):
        for field in ("input_size", "hidden_size", "num_layers"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise InvalidArgumentError(f"GRUSpec.{field} must be a positive integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        for field in ("bidirectional", "reset_after"):
            value = getattr(self, field)
            if not isinstance(value, (bool, np.bool_)):
                raise InvalidArgumentError(f"GRUSpec.{field} must be True or False, got {value!r}")
            object.__setattr__(self, field, bool(value))
        if self.gates not in GATE_SETS:
            raise InvalidArgumentError(f"GRUSpec.gates must be one of {', '.join(GATE_SETS)}, got {self.gates!r}")

    @property
    def has_update_gate(self) -> bool:
        return self.gates in ("both", "update-only")

    @property
    def has_reset_gate(self) -> bool:
        return self.gates in ("both", "reset-only")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of the output ``Y``: ``num_directions * hidden_size``."""
        return self.num_directions * self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size

    def cell_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        I, H = self.layer_input_size(layer), self.hidden_size
        return {"W_x": (3, I, H), "W_h": (3, H, H), "b_x": (3, H), "b_h": (3, H)}

    def state_shape(self, batch_size: int) -> tuple[int, int, int]:
        """The shape of ``h0`` and ``h_n``: ``(num_layers * num_directions, batch_size, H)``."""
        return (self.num_layers * self.num_directions, batch_size, self.hidden_size)

    def cells(self) -> Iterator[tuple[int, int]]:
        """``(layer, direction)`` pairs in the order of ``h_n``'s first axis (``layer * D + d``)."""
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                yield layer, direction

    def describe(self) -> str:
        cell = "reset-after" if self.reset_after else "reset-before"
        if self.gates == "none":
            cell = "plain-RNN (no gates)"
        elif self.gates != "both":
            cell += f" {self.gates}"
        dirs = "bidirectional" if self.bidirectional else "unidirectional"
        return (f"{self.num_layers}-layer {dirs} {cell} GRU "
                f"({self.input_size} -> {self.hidden_size})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "GRUSpec":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)
                      if f.name in d or f.default is dataclasses.MISSING})


@dataclasses.dataclass
class CellParams:
    """One layer and direction: ``W_x [3, I, H]``, ``W_h [3, H, H]``, ``b_x [3, H]``, ``b_h [3, H]``."""

    W_x: np.ndarray
    W_h: np.ndarray
    b_x: np.ndarray
    b_h: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in CELL_ARRAYS}

    def gate(self, name: str, gate: str) -> np.ndarray:
        """One gate's slice of an array, e.g. ``cell.gate("W_h", "r")`` is ``W_hr``."""
        return getattr(self, name)[GATE_INDEX[gate]]


class GRUParams:
    """Canonical GRU parameters: a spec plus one :class:`CellParams` per layer and direction."""

    def __init__(self, spec: GRUSpec, cells: list[list[CellParams]]):
        self.spec = spec
        self.cells = cells
        self._check()

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, spec: GRUSpec, arrays: Mapping[str, np.ndarray]) -> "GRUParams":
        """From a flat mapping ``"l{layer}.d{direction}.{W_x|W_h|b_x|b_h}" -> array``."""
        cells = [[CellParams(**{n: np.asarray(arrays[f"l{l}.d{d}.{n}"]) for n in CELL_ARRAYS})
                  for d in range(spec.num_directions)] for l in range(spec.num_layers)]
        return cls(spec, cells)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"l{l}.d{d}.{n}": a for l, d in self.spec.cells()
                for n, a in self.cell(l, d).arrays().items()}

    def cell(self, layer: int, direction: int = 0) -> CellParams:
        return self.cells[layer][direction]

    def _check(self):
        spec = self.spec
        if len(self.cells) != spec.num_layers or any(
                len(row) != spec.num_directions for row in self.cells):
            raise InvalidArgumentError(f"GRUParams for a {spec.describe()} need {spec.num_layers} layers of "
                                       f"{spec.num_directions} direction(s)")
        dtypes = set()
        for l, d in spec.cells():
            for name, shape in spec.cell_shapes(l).items():
                a = getattr(self.cell(l, d), name)
                if not isinstance(a, np.ndarray) or a.shape != shape:
                    got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
                    raise InvalidArgumentError(f"layer {l} direction {d} {name} must have shape {shape} for "
                                               f"a {spec.describe()}, got {got}")
                dtypes.add(a.dtype)
        if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
            raise InvalidArgumentError(f"GRUParams arrays must all be float32 or all float64, got "
                                       f"{sorted(str(t) for t in dtypes)}")

    @property
    def dtype(self) -> np.dtype:
        return self.cells[0][0].W_x.dtype

    def astype(self, dtype) -> "GRUParams":
        return self.map(lambda a: a.astype(dtype))

    def map(self, fn) -> "GRUParams":
        """A new GRUParams with ``fn`` applied to every array."""
        return GRUParams(self.spec, [[CellParams(**{n: fn(a) for n, a in c.arrays().items()})
                                      for c in row] for row in self.cells])

    def copy(self) -> "GRUParams":
        return self.map(np.array)

    def flat(self) -> list[np.ndarray]:
        """Every array, in the order of :meth:`to_arrays`."""
        return list(self.to_arrays().values())

    def __eq__(self, other):
        return (isinstance(other, GRUParams) and self.spec == other.spec and all(
            np.array_equal(a, b) and a.dtype == b.dtype
            for a, b in zip(self.flat(), other.flat())))

    def __repr__(self):
        return f"GRUParams({self.spec.describe()}, {self.dtype})"

    # -- ONNX ---------------------------------------------------------------------------
    @classmethod
    def from_onnx(cls, W, R, B=None, *, linear_before_reset=0) -> "GRUParams":
        """From ONNX GRU inputs: ``W [D, 3H, I]``, ``R [D, 3H, H]``, ``B [D, 6H]`` (gates z, r, h;
        input biases then recurrent biases). One ONNX GRU node is one layer. Weights holding NaN
        or infinity are refused (:class:`~d2lgru.errors.NonFiniteError`), as :meth:`save` and
        :meth:`load` refuse them."""
        W, R = np.asarray(W), np.asarray(R)
        if W.ndim != 3 or R.ndim != 3 or W.shape[0] not in (1, 2) or W.shape[1] % 3:
            raise InvalidArgumentError(f"ONNX GRU wants W [D, 3H, I] and R [D, 3H, H] with D in (1, 2), "
                                       f"got W {W.shape} and R {R.shape}")
        D, H3, I = W.shape
        H = H3 // 3
        if R.shape != (D, 3 * H, H):
            raise InvalidArgumentError(f"ONNX R must have shape {(D, 3 * H, H)} to match W {W.shape}, "
                                       f"got {R.shape}")
        B = np.zeros((D, 6 * H), W.dtype) if B is None else np.asarray(B)
        if B.shape != (D, 6 * H):
            raise InvalidArgumentError(f"ONNX B must have shape {(D, 6 * H)}, got {B.shape}")
        if linear_before_reset not in (0, 1):
            raise InvalidArgumentError(f"linear_before_reset must be 0 or 1, got {linear_before_reset!r}")
        spec = GRUSpec(I, H, 1, D == 2, bool(linear_before_reset))
        cells = [[CellParams(
            W_x=np.ascontiguousarray(W[d].reshape(3, H, I).transpose(0, 2, 1)),
            W_h=np.ascontiguousarray(R[d].reshape(3, H, H).transpose(0, 2, 1)),
            b_x=B[d, :3 * H].reshape(3, H).copy(),
            b_h=B[d, 3 * H:].reshape(3, H).copy()) for d in range(D)]]
        params = cls(spec, cells)  # checks the dtype before isfinite meets it
        problems = non_finite_report({"W": W, "R": R, "B": B})
        if problems:
            raise NonFiniteError(f"ONNX GRU weights cannot be used: {problems}; every weight "
                                 f"must be finite")
        return params

    def to_onnx(self, layer: int | None = None) -> dict:
        """ONNX GRU inputs and attribute for one layer:
        ``{"W", "R", "B", "linear_before_reset", "hidden_size", "direction"}``. One ONNX GRU
        node holds one layer, so a multi-layer GRU needs ``layer`` (0 to ``num_layers - 1``);
        ``None`` means the only layer of a one-layer GRU (since 0.2.0; before, layer 0 of any)."""
        spec = self.spec
        L = spec.num_layers
        if layer is None:
            if L > 1:
                raise InvalidArgumentError(
                    f"ONNX's GRU operator holds one layer and this is a {spec.describe()}; pass "
                    f"layer=0..{L - 1} to export one layer at a time")
            layer = 0
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)):
            raise InvalidTypeError(f"layer must be an integer from 0 to {L - 1}, got {layer!r}")
        if not 0 <= layer < L:
            raise InvalidArgumentError(f"layer must be an integer from 0 to {L - 1}, got {layer}")
        if spec.gates != "both":
            raise InvalidArgumentError(f"ONNX's GRU has every gate; a {spec.describe()} has no ONNX form")
        H = spec.hidden_size
        row = self.cells[layer]
        return {
            "W": np.stack([c.W_x.transpose(0, 2, 1).reshape(3 * H, -1) for c in row]),
            "R": np.stack([c.W_h.transpose(0, 2, 1).reshape(3 * H, H) for c in row]),
            "B": np.stack([np.concatenate([c.b_x.reshape(-1), c.b_h.reshape(-1)]) for c in row]),
            "linear_before_reset": int(spec.reset_after),
            "hidden_size": H,
            "direction": "bidirectional" if spec.bidirectional else "forward",
        }

    # -- files --------------------------------------------------------------------------
    def save(self, path, *, format: str | None = None) -> Path:
        """Write an ``.npz`` (atomically: temp file then rename) that carries the spec, or a
        ``.safetensors`` file (``format="safetensors"`` or a path ending in ``.safetensors``;
        the spec goes into its metadata). Weights holding NaN or infinity are refused
        (:class:`~d2lgru.errors.NonFiniteError`) and the file at ``path`` is left as it was."""
        return save_params(path, FORMAT_GRU, self.spec, self.to_arrays(), format)

    @classmethod
    def load(cls, path, *, spec: GRUSpec | None = None) -> "GRUParams":
        """Read a file written by :meth:`save` (``.npz`` or ``.safetensors``, told apart by
        their contents); with ``spec``, also check it matches. Any file that is not one -- a
        ``.npy``, a foreign or damaged file, a header of the wrong shape -- raises
        :class:`ParamsFileError`; weights holding NaN or infinity raise
        :class:`NonFiniteParamsError` (a ``ParamsFileError`` and a ``NonFiniteError``)."""
        meta, arrays = load_container(path, FORMAT_GRU)
        params = _params_from_file(path, meta, arrays, "")
        check_loaded_finite(path, params.to_arrays())
        if spec is not None and params.spec != spec:
            raise ParamsFileError(f"{path} holds a {params.spec.describe()}, "
                                  f"expected a {spec.describe()}")
        return params


def _params_from_file(path, meta, arrays, prefix) -> GRUParams:
    if not isinstance(meta.get("spec"), dict):
        raise ParamsFileError(f"{path} is not a valid d2lgru parameter file (its header's 'spec' "
                              f"must be a JSON object, got {type(meta.get('spec')).__name__})")
    try:
        spec = GRUSpec.from_dict(meta["spec"])
        own = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        params = GRUParams.from_arrays(spec, own)
    except (KeyError, TypeError, ValueError) as exc:
        raise ParamsFileError(f"{path} is not a valid d2lgru parameter file ({exc})") from None
    extra = sorted(own.keys() - params.to_arrays().keys())
    if extra:  # e.g. a bidirectional GRU's arrays under a header that says one direction
        raise ParamsFileError(f"{path} is not a valid d2lgru parameter file (its header's spec, "
                              f"a {spec.describe()}, has no place for the arrays "
                              f"{', '.join(prefix + k for k in extra[:4])}"
                              f"{', ...' if len(extra) > 4 else ''})")
    return params


def check_flag(name: str, value) -> bool:
    """``value`` as a bool (a NumPy one too); a string such as ``"no"`` is refused, not True."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidTypeError(f"{name} must be True or False, got {value!r} "
                               f"({type(value).__name__})")
    return bool(value)


def check_seed(seed) -> int:
    """``seed`` as an int: a Python or NumPy integer >= 0 (not a bool), else
    :class:`~d2lgru.errors.InvalidTypeError` (not an integer) or
    :class:`~d2lgru.errors.InvalidArgumentError` (negative)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise InvalidTypeError(f"seed must be a non-negative integer, got {seed!r} "
                               f"({type(seed).__name__})")
    if seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative integer, got {seed}")
    return int(seed)


def init_params(spec: GRUSpec, seed: int = 0, *, dtype=np.float32, sigma: float = 0.01) -> GRUParams:
    """The book's initialisation: every weight from N(0, sigma=0.01), every bias zero,
    drawn from ``numpy.random.default_rng(seed)`` (float64 draws, then cast); ``seed`` is a
    non-negative integer (:func:`check_seed`)."""
    if not isinstance(spec, GRUSpec):
        raise InvalidTypeError(f"spec must be a d2lgru.GRUSpec, got {type(spec).__name__}")
    rng = np.random.default_rng(check_seed(seed))
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # e.g. "bogus"
        pass
    if dtype not in (np.float32, np.float64):
        raise InvalidTypeError(f"dtype must be float32 or float64, got "
                               f"{getattr(dtype, 'name', repr(dtype))}")
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(
            sigma, (int, float, np.integer, np.floating)) or not 0 <= sigma < np.inf:
        raise InvalidArgumentError(f"sigma must be a finite number >= 0, got {sigma!r}")
    cells = []
    for l in range(spec.num_layers):
        row = []
        for _ in range(spec.num_directions):
            shapes = spec.cell_shapes(l)
            row.append(CellParams(
                W_x=(rng.standard_normal(shapes["W_x"]) * sigma).astype(dtype),
                W_h=(rng.standard_normal(shapes["W_h"]) * sigma).astype(dtype),
                b_x=np.zeros(shapes["b_x"], dtype),
                b_h=np.zeros(shapes["b_h"], dtype)))
        cells.append(row)
    return GRUParams(spec, cells)


# -- finite weights ------------------------------------------------------------------------
def non_finite_count(a: np.ndarray) -> int:
    """How many NaN/inf values ``a`` holds; one ``isfinite`` pass when there are none."""
    finite = np.isfinite(a)
    return 0 if finite.all() else int(a.size - np.count_nonzero(finite))


def non_finite_report(arrays: Mapping[str, np.ndarray]) -> str | None:
    """``"l0.d0.W_h holds 3 NaN/inf values, ..."`` for the arrays that hold NaN or infinity;
    None when every value is finite."""
    counts = {name: non_finite_count(a) for name, a in arrays.items()}
    return ", ".join(f"{name} holds {n} NaN/inf value{'' if n == 1 else 's'}"
                     for name, n in counts.items() if n) or None


def save_params(path, fmt: str, spec: GRUSpec, arrays: Mapping[str, np.ndarray],
                format: str | None = None) -> Path:
    """:func:`save_npz` or :func:`save_safetensors` (``format``, else the path's suffix) for a
    parameter set, which must be finite: a diverged run must not overwrite a good file with
    NaN."""
    check_path(path)
    format = file_format(path, format)
    problems = non_finite_report(arrays)
    if problems:
        raise NonFiniteError(f"refusing to save {path}: {problems}; every weight must be finite")
    save = save_safetensors if format == "safetensors" else save_npz
    return save(path, fmt, {"spec": spec.to_dict()}, arrays)


def check_loaded_finite(path, arrays: Mapping[str, np.ndarray]) -> None:
    problems = non_finite_report(arrays)
    if problems:
        raise NonFiniteParamsError(f"{path} cannot be used: {problems}; every weight must be finite")


# -- the containers shared by every saved parameter set: .npz and .safetensors -------------
#: the file formats of saved parameters, the default first
FILE_FORMATS = ("npz", "safetensors")


def check_path(path, what: str = "a parameter file's path") -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidTypeError(f"{what} must be a str or a pathlib.Path, got "
                               f"{type(path).__name__}")


def file_format(path, format: str | None = None) -> str:
    """``format`` when given (checked), else ``"safetensors"`` for a path ending in
    ``.safetensors`` and ``"npz"`` for any other."""
    if format is None:
        return "safetensors" if Path(path).suffix == ".safetensors" else "npz"
    if format not in FILE_FORMATS:
        raise InvalidArgumentError(f"the file format must be one of {', '.join(FILE_FORMATS)}, "
                                   f"got {format!r}")
    return format


def load_container(path, fmt: str) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`load_npz` or :func:`load_safetensors`, chosen by the file's first bytes (a zip
    archive is an ``.npz``; a safetensors file starts with its header's length and ``{``)."""
    check_path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        head = b""
    if len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK"):
        return load_safetensors(path, fmt)
    return load_npz(path, fmt)


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError as exc:
        raise ExtraNotInstalledError(f"safetensors files need the safetensors package ({exc}); "
                                     + pip_extra("safetensors")) from None
    return safetensors.numpy


def save_safetensors(path, fmt: str, meta: dict, arrays: Mapping[str, np.ndarray]) -> Path:
    """A ``.safetensors`` file: the arrays under their own names, and in its string-to-string
    metadata ``format`` and every entry of ``meta`` as JSON."""
    st = _safetensors_numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": fmt, **{k: json.dumps(v, sort_keys=True) for k, v in meta.items()}}
    data = st.save({k: np.ascontiguousarray(a) for k, a in arrays.items()}, metadata=metadata)
    return write_atomic(path, lambda f: f.write(data))


def load_safetensors(path, fmt: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(header, arrays)`` of a file written by :func:`save_safetensors` in format ``fmt``,
    the header as :func:`load_npz` returns it; any other file raises :class:`ParamsFileError`."""
    st = _safetensors_numpy()
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParamsFileError(f"cannot read the parameter file {path} ({exc.strerror or exc})") from None
    try:
        # the header is read here because safetensors.numpy.load returns the arrays only
        size = struct.unpack("<Q", data[:8])[0]
        if size > len(data) - 8:
            raise ValueError(f"its header claims {size} bytes, the file has {len(data) - 8}")
        header = json.loads(data[8:8 + size].decode("utf-8"))
        arrays = st.load(data)
    except Exception as exc:  # SafetensorError has no public base class but Exception
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ParamsFileError(f"{path} is not a readable .safetensors file (truncated or "
                              f"foreign: {why})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != fmt:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ParamsFileError(f"{path} holds {found!r}, expected {fmt!r} (no d2lgru metadata)"
                              if found is None else f"{path} holds {found!r}, expected {fmt!r}")
    meta = {"format": fmt}
    for key, value in metadata.items():
        if key == "format":
            continue
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError, RecursionError):
            raise ParamsFileError(f"{path} is not a valid d2lgru parameter file (its metadata "
                                  f"{key!r} is not JSON)") from None
    return meta, arrays

#: what numpy and zipfile raise on a damaged or foreign file: a bad archive, a bad CRC
#: (BadZipFile), bad compressed data (zlib.error), an unknown compression method
#: (NotImplementedError), an "encrypted" flag (RuntimeError), a short or garbled header
#: (ValueError, EOFError, struct.error)
_UNREADABLE = (zipfile.BadZipFile, zlib.error, struct.error, OSError, ValueError, EOFError,
               KeyError, NotImplementedError, RuntimeError, OverflowError)


def save_npz(path, fmt: str, meta: dict, arrays: Mapping[str, np.ndarray]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"format": fmt, **meta}, sort_keys=True)
    return write_atomic(path, lambda f: np.savez(f, __meta__=np.array(header), **arrays))


def load_npz(path, fmt: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``(header, arrays)`` of an ``.npz`` written by :func:`save_npz` in format ``fmt``; any
    other file raises :class:`ParamsFileError` saying what it is."""
    path = Path(path)
    if not path.is_file():
        raise ParamsFileError(f"no parameter file at {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            raise ParamsFileError(f"{path} is a .npy array file; d2lgru loads the .npz files it "
                                  f"writes (GRUParams.save, LMParams.save)")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ParamsFileError:
        raise
    except _UNREADABLE as exc:
        raise ParamsFileError(f"{path} is not a readable .npz file (truncated or foreign: "
                              f"{exc})") from None
    try:
        meta = json.loads(str(arrays.pop("__meta__")[()]))
    except (KeyError, ValueError, TypeError, RecursionError):
        raise ParamsFileError(f"{path} is not a d2lgru parameter file (no d2lgru header)") from None
    if not isinstance(meta, dict):
        raise ParamsFileError(f"{path} is not a d2lgru parameter file (its header is a JSON "
                              f"{type(meta).__name__}, not an object)")
    if meta.get("format") != fmt:
        raise ParamsFileError(f"{path} holds {meta.get('format')!r}, expected {fmt!r}")
    return meta, arrays
