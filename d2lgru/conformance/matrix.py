"""The cross-framework matrix: every implementation against every other on identical inputs.

Reads ``DIR/*/report.json`` and ``DIR/*/outputs.npz`` (one backend or every one), and writes
``DIR/matrix.md`` and ``DIR/matrix.png``. Rows and columns are the float32 runs of each
backend's implementations (``torch/native``, ...) plus the oracle (NumPy, float64); a cell is
the largest absolute difference over every case and quantity both ran on the same inputs (the
reports' input fingerprints must agree).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from .._io import save_png
from ..spec import ParamsFileError, load_npz
from .runner import FORMAT_OUTPUTS, FORMAT_REPORT, ORACLE, OUTPUTS_FILE, REPORT_FILE
from ..errors import D2lgruError

ORACLE_LABEL = "oracle"
CATEGORIES = {
    "outputs": ("Outputs", "Y and h_n of the layer; loss, logits and state of the language model"),
    "gradients": ("Gradients", "The layer's dparams, dX and dh0; every gradient of the language "
                               "model"),
    "training": ("Training losses", "Each of the 10 SGD steps' losses (default mode)"),
}


class MatrixError(D2lgruError, ValueError):
    """No usable report in the directory, or a report that cannot be read."""


def category(quantity: str) -> str:
    if quantity == "losses":
        return "training"
    head = quantity.split(".")[0]
    return "gradients" if head in ("dX", "dh0", "dparams", "grads") else "outputs"


#: the fields of report.json that the matrix reads, and their JSON types (all required)
REPORT_FIELDS = {"backend": str, "framework": str, "framework_version": str,
                 "d2lgru_version": str, "python": str, "platform": str, "timestamp": str,
                 "ran": int}


def _json_type(value) -> str:
    """``value``'s type in JSON's words (what a user sees in the file)."""
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"),
                       (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def check_report_shape(report) -> None:
    """Raise ``ValueError`` naming the first part of a parsed report.json the matrix cannot use:
    not an object, another format, a field of :data:`REPORT_FIELDS` missing or of another type,
    ``counts`` not an object of integers, ``checks`` not an array of objects with a string
    ``case`` (and a string or null ``inputs_sha1``)."""
    if not isinstance(report, dict):
        raise ValueError(f"{REPORT_FILE} holds {_json_type(report)}, expected an object")
    if report.get("format") != FORMAT_REPORT:
        raise ValueError(f"format {report.get('format')!r}, expected {FORMAT_REPORT!r}")
    for key, kind in REPORT_FIELDS.items():
        if key not in report:
            raise ValueError(f"{REPORT_FILE} has no {key!r}, expected "
                             f"{_json_type(kind())} there")
        if not isinstance(report[key], kind) or isinstance(report[key], bool):
            raise ValueError(f"{REPORT_FILE}'s {key!r} is {_json_type(report[key])}, expected "
                             f"{_json_type(kind())}")
    counts = report.get("counts", {})
    if not isinstance(counts, dict) or any(not isinstance(n, int) or isinstance(n, bool)
                                           for n in counts.values()):
        raise ValueError(f"{REPORT_FILE}'s 'counts' is {json.dumps(counts)[:60]}, expected an "
                         f"object of integers (status: number of checks)")
    checks = report.get("checks", [])
    if not isinstance(checks, list):
        raise ValueError(f"{REPORT_FILE}'s 'checks' is {_json_type(checks)}, expected an array "
                         f"of checks")
    for i, check in enumerate(checks):
        if not isinstance(check, dict) or not isinstance(check.get("case"), str) or \
                not isinstance(check.get("inputs_sha1"), (str, type(None))):
            raise ValueError(f"{REPORT_FILE}'s checks[{i}] is {json.dumps(check)[:60]}, expected "
                             f"an object with a string 'case' and a string or null "
                             f"'inputs_sha1'")


def load_reports(directory) -> list[dict]:
    directory = Path(directory)
    found = []
    for report_path in sorted(directory.glob(f"*/{REPORT_FILE}")):
        outputs_path = report_path.parent / OUTPUTS_FILE
        if not outputs_path.is_file():
            continue
        try:
            report = json.loads(report_path.read_text())
            check_report_shape(report)
            _, arrays = load_npz(outputs_path, FORMAT_OUTPUTS)
        except (ValueError, OSError, ParamsFileError) as exc:
            raise MatrixError(f"cannot read the report in {report_path.parent}: {exc}") from None
        fingerprints = {c["case"]: c.get("inputs_sha1") for c in report.get("checks", [])}
        found.append({"report": report, "arrays": arrays, "fingerprints": fingerprints,
                      "dir": report_path.parent})
    if not found:
        raise MatrixError(f"no conformance reports in {directory} (looked for */{REPORT_FILE} "
                          f"with {OUTPUTS_FILE}); run `tox -e <backend>` or `d2lgru conformance "
                          f"--backend NAME --out {directory}` first")
    return found


def entries(reports: list[dict]) -> list[dict]:
    """The oracle, then every backend/impl. The oracle's outputs are merged over the reports,
    the numpy report's first (every report saves the oracle on the cases it ran)."""
    rows, oracle_values, oracle_prints, oracle_from = [], {}, {}, []
    for rep in sorted(reports, key=lambda r: r["report"]["backend"] != "numpy"):
        by_impl: dict[str, dict] = {}
        for key, array in rep["arrays"].items():
            impl, dtype, rest = key.split("/", 2)
            case, quantity = rest.rsplit("/", 1)
            if impl == ORACLE:
                if (case, quantity) not in oracle_values:
                    oracle_values[(case, quantity)] = array
                    oracle_prints.setdefault(case, rep["fingerprints"].get(case))
                    if rep["report"]["backend"] not in oracle_from:
                        oracle_from.append(rep["report"]["backend"])
            elif dtype == "float32":
                by_impl.setdefault(impl, {})[(case, quantity)] = array
        for impl, values in by_impl.items():
            rows.append({"label": f"{rep['report']['backend']}/{impl}", "values": values,
                         "fingerprints": rep["fingerprints"]})
    rows.sort(key=lambda e: e["label"])
    if not oracle_values:
        return rows
    oracle = {"label": ORACLE_LABEL, "values": oracle_values, "fingerprints": oracle_prints,
              "from": oracle_from}
    return [oracle] + rows


def pair_difference(a: dict, b: dict, cat: str):
    """``(max abs difference, where, cases compared)`` over the quantities of ``cat`` that both
    ran on inputs with the same fingerprint."""
    worst, where, cases = None, None, set()
    fa, fb = a["fingerprints"], b["fingerprints"]
    for key, va in a["values"].items():
        vb = b["values"].get(key)
        if vb is None or category(key[1]) != cat or va.shape != vb.shape:
            continue
        if fa.get(key[0]) != fb.get(key[0]):
            continue
        with np.errstate(invalid="ignore"):
            d = np.abs(va.astype(np.float64) - vb.astype(np.float64))
        d = float(np.max(np.where(np.isnan(d), np.inf, d))) if d.size else 0.0
        cases.add(key[0])
        if worst is None or d > worst:
            worst, where = d, f"{key[0]} {key[1]}"
    return worst, where, len(cases)


def mismatched_inputs(reports: list[dict]) -> list[str]:
    notes, seen = [], {}
    for rep in reports:
        for case, sha in rep["fingerprints"].items():
            if sha is None:
                continue
            other = seen.setdefault(case, (sha, rep["report"]["backend"]))
            if other[0] != sha:
                notes.append(f"{case}: {rep['report']['backend']} and {other[1]} saw different "
                             f"inputs (reports from different versions of the suite, or NumPy "
                             f"random streams that differ); not compared")
    return notes


def build(directory) -> tuple[Path, Path]:
    """Write ``matrix.md`` and ``matrix.png`` in ``directory``; returns their paths."""
    directory = Path(directory)
    reports = load_reports(directory)
    rows = entries(reports)
    tables = {cat: [[pair_difference(a, b, cat) for b in rows] for a in rows] for cat in CATEGORIES}
    md = directory / "matrix.md"
    md.write_text(render_markdown(directory, reports, rows, tables))
    png = render_png(directory / "matrix.png", rows, tables)
    return md, png


def _fmt(cell) -> str:
    value = cell[0]
    if value is None:
        return "—"
    return "0" if value == 0 else f"{value:.1e}"


def render_markdown(directory, reports, rows, tables) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = ["# d2lgru conformance matrix", "",
           f"Built {now} from {len(reports)} report(s) in `{directory}`. Each cell is the largest "
           f"absolute difference between two implementations over every case and quantity both "
           f"ran on identical inputs; `—` where they share none. Rows and columns are float32 "
           f"runs; `{ORACLE_LABEL}` is the NumPy backend in float64. Each backend's own "
           f"pass/fail against the oracle, with tolerances, is in its `report.json`.", "",
           "## Reports", "",
           "| backend | framework | version | d2lgru | numpy | python | platform | written | "
           "checks | passed | failed | known failures | complete |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for rep in reports:
        r = rep["report"]
        counts = r.get("counts", {})
        failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("unexpected-pass", 0)
        out.append(f"| {r['backend']} | {r['framework']} | {r['framework_version']} | "
                   f"{r['d2lgru_version']} | {r.get('numpy_version', '?')} | {r['python']} | "
                   f"{r['platform']} | {r['timestamp']} | {r['ran']} | {counts.get('passed', 0)} | "
                   f"{failed} | {counts.get('known-failure', 0)} | "
                   f"{'yes' if r.get('complete') else 'no'} |")
    if rows and rows[0]["label"] == ORACLE_LABEL:
        out += ["", f"The oracle's outputs come from the report(s) of: "
                    f"{', '.join(rows[0]['from'])} (the first one's wherever they overlap)."]
    labels = [e["label"] for e in rows]
    for cat, (title, what) in CATEGORIES.items():
        cells = tables[cat]
        out += ["", f"## {title}", "", f"{what}.", "",
                "| | " + " | ".join(f"`{l}`" for l in labels) + " |",
                "|---|" + "---|" * len(labels)]
        for label, row in zip(labels, cells):
            out.append(f"| `{label}` | " + " | ".join(_fmt(c) for c in row) + " |")
        if labels and labels[0] == ORACLE_LABEL:
            worst = [f"- `{l}`: {_fmt(c)} at {c[1]} ({c[2]} cases)"
                     for l, c in zip(labels[1:], cells[0][1:]) if c[0] is not None]
            if worst:
                out += ["", "Largest difference from the oracle:", ""] + worst
    notes = mismatched_inputs(reports)
    if notes:
        out += ["", "## Inputs that differ between reports", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def render_png(path: Path, rows, tables) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e["label"] for e in rows]
    n = len(labels)
    size = max(3.2, 0.55 * n + 1.6)
    fig, axes = plt.subplots(1, len(CATEGORIES), figsize=(size * len(CATEGORIES) + 1.5, size + 1.0),
                             dpi=110, squeeze=False, layout="constrained")
    floor = -17.0
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    image = None
    for k, (ax, (cat, (title, _))) in enumerate(zip(axes[0], CATEGORIES.items())):
        values = np.full((n, n), np.nan)
        for i in range(n):
            for j in range(n):
                v = tables[cat][i][j][0]
                if v is not None:  # exact agreement sits at the floor, NaN/inf at the top
                    values[i, j] = (floor if v == 0 else
                                    max(np.log10(v), floor) if np.isfinite(v) else 1.0)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=floor, vmax=0)
        for i in range(n):
            for j in range(n):
                text = _fmt(tables[cat][i][j])
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="black" if np.isnan(values[i, j]) or values[i, j] > -6 else "white")
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels if k == 0 else [], fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle("d2lgru conformance: largest absolute difference on identical inputs "
                 f"(float32 runs; {ORACLE_LABEL} = NumPy float64)", fontsize=10)
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8,
                 label="log10 max |difference|  (grey: no shared case)")
    save_png(fig, path)
    plt.close(fig)
    return path
