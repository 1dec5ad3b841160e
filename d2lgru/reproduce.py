"""The chapter's experiment on every backend, and the table that compares them.

``d2lgru reproduce --backend B --impl I --out DIR`` trains the book's configuration with a fixed
seed into ``DIR/B-I/`` (a normal checkpoint directory plus ``result.json``);
``d2lgru reproduce --collect DIR`` gathers every ``DIR/*/result.json`` into ``DIR/results.md``
(the book's closing lines, one row per backend and impl) and ``DIR/perplexity.png`` (every
perplexity curve overlaid).
"""

from __future__ import annotations

import json
from pathlib import Path

from .train import RESULT_FILE, STATE_FILE, CheckpointError

PREFIXES = ("time traveller", "traveller")


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


def _cell(run) -> str:
    cfg = run["config"]
    gates = cfg.get("gates", "both")
    if gates == "none":
        return "plain RNN"
    cell = "reset-after" if cfg.get("reset_after") else "reset-before"
    return cell if gates == "both" else f"{cell}, {gates}"


def markdown_table(runs: list[dict]) -> str:
    lines = [
        "| backend | impl | mode | cell | framework | epochs | perplexity | tokens/s | device | "
        "`time traveller` … | `traveller` … |",
        "|---|---|---|---|---|--:|--:|--:|---|---|---|",
    ]
    for r in runs:
        preds = [r["predictions"].get(p, "") for p in PREFIXES]
        preds = [p.replace("|", "\\|") for p in preds]
        lines.append(
            f"| {r['backend']} | {r['impl']} | {r.get('mode', '')} | {_cell(r)} | {r['framework_version']} | "
            f"{r['epochs']} | {r['perplexity']:.2f} | {r['tokens_per_sec']:,.0f} | {r['device']} | "
            f"{preds[0]} | {preds[1]} |")
    def who(r):
        exercise = r["config"].get("gates", "both") != "both"
        return f"{r['backend']} {r['impl']}" + (f" ({_cell(r)})" if exercise else "")

    book_lines = [f"- **{who(r)}**: perplexity {r['perplexity']:.1f}, "
                  f"{r['tokens_per_sec']:.1f} tokens/sec on {r['device']}" for r in runs]
    return "\n".join(lines) + "\n\nIn the book's words:\n\n" + "\n".join(book_lines) + "\n"


def plot_runs(runs: list[dict], path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(runs) + 1) // 2
    fig, ax = plt.subplots(figsize=(8, 4.4 + 0.17 * rows), dpi=120)
    for r in runs:
        exercise = r["config"].get("gates", "both") != "both"  # the book's exercises: dashed
        ax.plot(range(1, len(r["history"]) + 1), r["history"], lw=1.0,
                ls="--" if exercise else "-",
                label=f"{r['backend']} {r['impl']} {r.get('mode', '')} {_cell(r)} ({r['perplexity']:.2f})")
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
    runs = collect(directory)
    table = directory / "results.md"
    table.write_text("# The chapter's experiment on every backend\n\n" + markdown_table(runs))
    return table, plot_runs(runs, directory / "perplexity.png")
