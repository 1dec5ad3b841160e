"""Compare a backend's array with the oracle's, and say exactly how they differ.

The rule and the message follow ``torch.testing.assert_close``: an element matches when
``|actual - expected| <= atol + rtol * |expected|``; a failure names the quantity and the case,
how many elements mismatch out of how many, and the greatest absolute and relative differences,
each with its index. NaN or infinity in ``actual`` never matches a finite ``expected``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


class ConformanceMismatch(AssertionError):
    """A backend's result is not close to the oracle's."""


@dataclasses.dataclass
class Comparison:
    """The outcome of comparing one quantity of one case."""

    quantity: str              # e.g. "Y", "dparams.l0.d1.W_h", "grads.head.W_hq", "losses"
    group: str                 # the summary line it counts in, e.g. "dparams"
    kind: str                  # the tolerance kind: output, gradient, train_loss, ...
    rtol: float
    atol: float
    numel: int = 0
    mismatched: int = 0
    max_abs: float = 0.0
    max_abs_index: tuple = ()
    max_rel: float = 0.0
    max_rel_index: tuple = ()
    worst_ratio: float = 0.0    # the largest |actual - expected| / (atol + rtol*|expected|)
    problem: str | None = None  # wrong shape/dtype/type: the comparison could not be made as asked

    @property
    def passed(self) -> bool:
        return self.problem is None and self.mismatched == 0

    def message(self, context: str = "") -> str:
        where = f"{context}: " if context else ""
        if self.problem is not None and self.numel == 0:
            return f"{where}{self.quantity}: {self.problem}"
        lines = [f"{where}{self.quantity} is not close to the oracle's!"]
        if self.problem is not None:
            lines.append(self.problem)
        pct = 100.0 * self.mismatched / self.numel if self.numel else 0.0
        lines.append(f"Mismatched elements: {self.mismatched} / {self.numel} ({pct:.1f}%)")
        lines.append(f"Greatest absolute difference: {_num(self.max_abs)} at index "
                     f"{_index(self.max_abs_index)} (up to {_num(self.atol)} allowed)")
        lines.append(f"Greatest relative difference: {_num(self.max_rel)} at index "
                     f"{_index(self.max_rel_index)} (up to {_num(self.rtol)} allowed)")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"quantity": self.quantity, "group": self.group, "kind": self.kind,
                "passed": self.passed, "numel": self.numel, "mismatched": self.mismatched,
                "max_abs": json_float(self.max_abs), "max_abs_index": list(self.max_abs_index),
                "max_rel": json_float(self.max_rel), "max_rel_index": list(self.max_rel_index),
                "worst_ratio": json_float(self.worst_ratio), "rtol": self.rtol, "atol": self.atol,
                "problem": self.problem}


def compare(actual, expected, *, rtol: float, atol: float, quantity: str, group: str | None = None,
            kind: str = "output", dtype=None) -> Comparison:
    """Compare ``actual`` (the backend's) with ``expected`` (the oracle's, any float dtype).
    With ``dtype``, ``actual`` must also have exactly that dtype."""
    result = Comparison(quantity, group or quantity.split(".")[0], kind, rtol, atol)
    if not isinstance(actual, (np.ndarray, np.generic, float, int)) or isinstance(actual, bool):
        result.problem = f"expected a NumPy array, got {type(actual).__name__}"
        return result
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        result.problem = f"shape {actual.shape}, but the oracle's is {expected.shape}"
        return result
    if dtype is not None and actual.dtype != np.dtype(dtype):
        result.problem = f"dtype {actual.dtype}, expected {np.dtype(dtype).name}"
    if actual.dtype.kind not in "fiu":
        result.problem = f"dtype {actual.dtype} is not numeric"
        return result
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    result.numel = int(e.size)
    if e.size == 0:
        return result
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        diff = np.abs(a - e)
        same = (a == e) | (np.isnan(a) & np.isnan(e))  # equal infinities and NaNs match, as torch
        diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
        allowed = atol + rtol * np.abs(e)
        ok = diff <= allowed
        rel = np.where(diff == 0, 0.0, diff / np.abs(e))
        ratio = np.where(diff == 0, 0.0, diff / allowed)
    result.mismatched = int(e.size - np.count_nonzero(ok))
    i_abs, i_rel = int(np.argmax(diff)), int(np.argmax(rel))
    result.max_abs = float(diff.flat[i_abs])
    result.max_rel = float(rel.flat[i_rel])
    result.max_abs_index = tuple(int(i) for i in np.unravel_index(i_abs, e.shape))
    result.max_rel_index = tuple(int(i) for i in np.unravel_index(i_rel, e.shape))
    result.worst_ratio = float(np.max(ratio))
    return result


def assert_close(actual, expected, *, rtol: float, atol: float, quantity: str = "value",
                 context: str = "", dtype=None) -> Comparison:
    """:func:`compare`, raising :class:`ConformanceMismatch` with the full message on failure."""
    result = compare(actual, expected, rtol=rtol, atol=atol, quantity=quantity, dtype=dtype)
    if not result.passed:
        raise ConformanceMismatch(result.message(context))
    return result


def json_float(x: float):
    """A float JSON can hold: infinities and NaN become strings."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _num(x: float) -> str:
    return f"{x:.6g}"


def _index(index: tuple) -> str:
    return "()" if not index else "(" + ", ".join(str(i) for i in index) + (
        ",)" if len(index) == 1 else ")")
