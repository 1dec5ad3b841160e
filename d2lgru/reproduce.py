"""The chapter's experiment on every backend, and the table that compares them.

``d2lgru reproduce --backend B --impl I --out DIR`` trains the book's configuration with a fixed
seed into ``DIR/B-I/`` (a normal checkpoint directory plus ``result.json``);
``d2lgru reproduce --collect DIR`` gathers every ``DIR/*/result.json`` into ``DIR/results.md``
(the book's closing lines, one row per backend and impl, and how each run ended) and
``DIR/perplexity.png`` (every perplexity curve overlaid). Runs of the book's own code that
``docs/reproduce/book.py`` left in ``DIR/book/seed-S.json`` join the second table and the figure
as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .train import RESULT_FILE, SETTLED_EPOCHS, STATE_FILE, CheckpointError, settled

PREFIXES = ("time traveller", "traveller")
#: the book's bar: it prints perplexity 1.0-1.1 for this experiment
BAR = 1.15
#: where docs/reproduce/book.py leaves the book's own runs, and their format
BOOK_DIR, BOOK_FORMAT = "book", "d2lgru.BookRun/1"


def run_name(backend: str, impl: str) -> str:
    return f"{backend}-{impl}"


def collect(directory) -> list[dict]:
    """Every finished run under ``directory``: result.json merged with its history."""
    directory = Path(directory)
    runs = []
    for result_file in sorted(directory.glob(f"*/{RESULT_FILE}")):
        try:
            result = json.loads(result_file.read_text())
            state = json.loads((result_file.parent / STATE_FILE).read_text())
            result["history"] = [h["perplexity"] for h in state["history"]]
            result["run"] = result_file.parent.name
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{result_file.parent} is not a finished run ({exc})") from None
        runs.append(result)
    if not runs:
        raise CheckpointError(f"no finished runs (*/{RESULT_FILE}) under {directory}; "
                              f"run `d2lgru reproduce --backend NAME --out {directory}` first")
    return runs


def collect_book(directory) -> list[dict]:
    """The book's own runs under ``directory/book/`` (none is fine), by seed."""
    runs = []
    for path in Path(directory, BOOK_DIR).glob("seed-*.json"):
        try:
            run = json.loads(path.read_text())
            if run.get("format") != BOOK_FORMAT:
                raise ValueError(f"format is {run.get('format')!r}, expected {BOOK_FORMAT!r}")
            run["history"] = [float(v) for v in run["perplexity"]]
            run["seed"] = int(run["seed"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path} is not a run of docs/reproduce/book.py ({exc})") from None
        runs.append(run)
    return sorted(runs, key=lambda r: r["seed"])


def ending(history) -> dict:
    """How a perplexity curve ended: its last value, where it settled (:func:`settled`), the
    first epoch at or below :data:`BAR`, and the epochs above it among the last 100."""
    h = np.asarray(history, dtype=float)
    below = np.flatnonzero(h <= BAR)
    tail = h[-100:]
    return {"last": float(h[-1]), "settled": settled(h),
            "first_below": int(below[0]) + 1 if below.size else None,
            "above_last_100": int((tail > BAR).sum()), "peak_last_100": float(tail.max())}


def _cell(run) -> str:
    cfg = run["config"]
    gates = cfg.get("gates", "both")
    if gates == "none":
        return "plain RNN"
    cell = "reset-after" if cfg.get("reset_after") else "reset-before"
    return cell if gates == "both" else f"{cell}, {gates}"


def _who(r) -> str:
    exercise = r["config"].get("gates", "both") != "both"
    return f"{r['backend']} {r['impl']}" + (f" ({_cell(r)})" if exercise else "")


def _seeds(book) -> str:
    seeds = [r["seed"] for r in book]
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def ending_table(runs: list[dict], book: list[dict]) -> str:
    """How every run ended, the book's own runs last."""
    lines = [f"| run | last epoch | last {SETTLED_EPOCHS} (median) | first epoch ≤ {BAR} | "
             f"epochs > {BAR} of the last 100 | highest of the last 100 |",
             "|---|--:|--:|--:|--:|--:|"]
    rows = [(_who(r), r["history"]) for r in runs]
    rows += [(f"the book's own code, seed {r['seed']}", r["history"]) for r in book]
    for name, history in rows:
        e = ending(history)
        first = "never" if e["first_below"] is None else e["first_below"]
        lines.append(f"| {name} | {e['last']:.3f} | {e['settled']:.3f} | {first} | "
                     f"{e['above_last_100']} | {e['peak_last_100']:.2f} |")
    return "\n".join(lines) + "\n" + spike_windows(runs, book)


def spike_windows(runs: list[dict], book: list[dict], windows: int = 10, width: int = 10) -> str:
    """How often the GRU runs (both gates, the book's included) stand above :data:`BAR` in
    each of their last ``windows`` stretches of ``width`` epochs: where a last epoch lands."""
    curves = [r["history"] for r in runs if r["config"].get("gates", "both") == "both"]
    curves += [r["history"] for r in book]
    span = windows * width
    if not curves or len({len(h) for h in curves}) != 1 or len(curves[0]) < span:
        return ""  # runs of different lengths: no common window
    above = np.asarray(curves, dtype=float)[:, -span:] > BAR
    end = len(curves[0])
    heads = [f"{end - span + k * width + 1}–{end - span + (k + 1) * width}" for k in range(windows)]
    shares = [f"{above[:, k * width:(k + 1) * width].mean():.0%}" for k in range(windows)]
    return (f"\nShare of epochs above {BAR}, over all {len(curves)} GRU runs with both gates "
            f"above, by stretch of {width} epochs:\n\n| " + " | ".join(heads) + " |\n|"
            + "--:|" * windows + "\n| " + " | ".join(shares) + " |\n")


def markdown_table(runs: list[dict], book: list[dict] = ()) -> str:
    lines = [
        "| backend | impl | mode | cell | framework | epochs | perplexity | last 10 (median) | "
        "tokens/s | device | `time traveller` … | `traveller` … |",
        "|---|---|---|---|---|--:|--:|--:|--:|---|---|---|",
    ]
    for r in runs:
        preds = [r["predictions"].get(p, "") for p in PREFIXES]
        preds = [p.replace("|", "\\|") for p in preds]
        lines.append(
            f"| {r['backend']} | {r['impl']} | {r.get('mode', '')} | {_cell(r)} | {r['framework_version']} | "
            f"{r['epochs']} | {r['perplexity']:.2f} | {settled(r['history']):.2f} | "
            f"{r['tokens_per_sec']:,.0f} | {r['device']} | "
            f"{preds[0]} | {preds[1]} |")
    book_lines = [f"- **{_who(r)}**: perplexity {r['perplexity']:.1f}, "
                  f"{r['tokens_per_sec']:.1f} tokens/sec on {r['device']}" for r in runs]
    reference = (f" and {len(book)} runs of the book's own code (`docs/reproduce/book.py`, "
                 f"seeds {_seeds(book)})") if book else ""
    return ("\n".join(lines) + "\n\nIn the book's words:\n\n" + "\n".join(book_lines) + "\n"
            f"\n## How each run ended\n\nEvery run above{reference}: SGD at lr 1 makes the loss "
            f"spike for a few epochs at a time late in training, so the last epoch alone can land "
            f"in a spike; the median of the last {SETTLED_EPOCHS} epochs is where the run "
            f"settled.\n\n" + ending_table(runs, book))


def _ended(r) -> str:
    """The last epoch's perplexity, and where the run settled when a spike holds the last."""
    last, median = r["history"][-1], settled(r["history"])
    return f"{last:.2f}" if last <= 1.1 * median else f"{last:.2f}; last {SETTLED_EPOCHS}: {median:.2f}"


def plot_runs(runs: list[dict], path, book: list[dict] = ()) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(runs) + bool(book) + 1) // 2
    fig, ax = plt.subplots(figsize=(8, 4.4 + 0.17 * rows), dpi=120)
    for i, r in enumerate(book):  # the reference band, under d2lgru's curves
        ax.plot(range(1, len(r["history"]) + 1), r["history"], lw=0.6, color="0.6", alpha=0.6,
                label=f"the book's own code, seeds {_seeds(book)}" if i == 0 else None)
    for r in runs:
        exercise = r["config"].get("gates", "both") != "both"  # the book's exercises: dashed
        ax.plot(range(1, len(r["history"]) + 1), r["history"], lw=1.0,
                ls="--" if exercise else "-",
                label=f"{r['backend']} {r['impl']} {r.get('mode', '')} {_cell(r)} ({_ended(r)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.set_title("GRU on The Time Machine, the book's config, every backend")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(directory) -> tuple[Path, Path]:
    directory = Path(directory)
    runs, book = collect(directory), collect_book(directory)
    table = directory / "results.md"
    table.write_text("# The chapter's experiment on every backend\n\n" + markdown_table(runs, book))
    return table, plot_runs(runs, directory / "perplexity.png", book)
