"""The chapter's experiment on every backend, and the table that compares them.

``d2lgru reproduce --backend B --impl I [--seed S] --out DIR`` trains the book's configuration
into ``DIR/B-I[-seedS]/`` (a normal checkpoint directory plus ``result.json``);
``d2lgru reproduce --collect DIR`` gathers every ``DIR/*/result.json`` into ``DIR/results.md``
and ``DIR/perplexity.png`` (or ``OUT/...`` with ``--out OUT``), and records the runs in
``DIR/runs.json.gz`` (``OUT/runs.json.gz``): per run what the table
and the figure need (result.json and the per-epoch perplexity; no checkpoint, no paths of the
machine), so the run directories need not be kept. ``--collect`` reads that file too: a folder's
runs are those of its runs file, then of its run directories (which replace a recorded run of the
same name), and ``--collect DIR/runs.json.gz`` reads the file alone. Runs that differ only in
their seed make one row: SGD at the book's learning rate of 1 makes the loss spike late in
training, so one run's last epoch is a draw, and the row's perplexity is the median of its
seeds' last epochs (each seed's is listed beside it). The table keeps the book's closing lines,
then how the runs ended; the figure overlays one curve per row. Runs of the book's own code
that ``docs/reproduce/book.py`` left in ``DIR/book/seed-S.json`` join the second table and the
figure as the reference.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np

from ._io import round_floats, save_png
from .train import RESULT_FILE, SETTLED_EPOCHS, STATE_FILE, CheckpointError, settled
from .errors import InvalidArgumentError

PREFIXES = ("time traveller", "traveller")
#: the book's bar: it prints perplexity 1.0-1.1 for this experiment
BAR = 1.15
#: where docs/reproduce/book.py leaves the book's own runs, and their format
BOOK_DIR, BOOK_FORMAT = "book", "d2lgru.BookRun/1"
#: the compact record of a folder's runs, beside results.md, and its format
RUNS_FILE, RUNS_FORMAT = "runs.json.gz", "d2lgru.Runs/1"


def run_name(backend: str, impl: str, exercise: str = "", seed: int = 0) -> str:
    """``B-I[-EXERCISE][-seedS]``: seed 0's run keeps the short name."""
    return f"{backend}-{impl}" + (f"-{exercise}" if exercise else "") + (f"-seed{seed}" if seed else "")


def collect(directory) -> list[dict]:
    """Every finished run directory under ``directory``: result.json merged with its history.

    A run whose result.json records other epochs than its state.json holds (an earlier finish,
    then a ``--resume`` to more epochs that was interrupted) is not finished as recorded: its
    history and its result belong to different models, so it is left out, with one line on
    stderr that says how to finish it."""
    directory = Path(directory)
    runs = []
    for result_file in sorted(directory.glob(f"*/{RESULT_FILE}")):
        run_dir = result_file.parent
        try:
            result = json.loads(result_file.read_text())
            state = json.loads((run_dir / STATE_FILE).read_text())
            result["history"] = [h["perplexity"] for h in state["history"]]
            result["run"] = run_dir.name
            recorded, trained = result["epochs"], state["epoch"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{run_dir} is not a finished run ({exc})") from None
        if recorded != trained:
            print(f"reproduce --collect: leaving out {run_dir}: its {RESULT_FILE} records "
                  f"{recorded} epoch(s) but its {STATE_FILE} holds {trained} (a --resume that "
                  f"did not finish); `d2lgru train --resume {run_dir} --backend "
                  f"{result.get('backend', 'NAME')} --impl {result.get('impl', 'scratch')}` "
                  f"finishes it and writes {RESULT_FILE}", file=sys.stderr)
            continue
        runs.append(result)
    return runs


def read_runs(path) -> tuple[list[dict], list[dict]]:
    """A runs file (:data:`RUNS_FILE`): d2lgru's runs and the book's own, as :func:`collect`
    and :func:`collect_book` return them."""
    try:
        record = json.loads(gzip.decompress(Path(path).read_bytes()))
        if record.get("format") != RUNS_FORMAT:
            raise InvalidArgumentError(f"format is {record.get('format')!r}, "
                                       f"expected {RUNS_FORMAT!r}")
        book = [dict(run, history=[float(v) for v in run["perplexity"]]) for run in record["book"]]
        return record["runs"], book
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path} is not a runs file of `d2lgru reproduce --collect` "
                              f"({exc})") from None


def write_runs(path, runs: list[dict], book: list[dict]) -> Path:
    """``runs`` and ``book`` into the runs file ``path``, without the absolute path of the text
    they trained on (``config.data``: the machine's, not the experiment's); gzip without a
    timestamp, so the same runs make the same bytes; floats to 6 significant digits."""
    def portable(run):
        return dict(run, config={k: v for k, v in run["config"].items() if k != "data"})
    record = round_floats({"format": RUNS_FORMAT, "runs": [portable(r) for r in runs],
                           "book": [{k: v for k, v in r.items() if k != "history"} for r in book]})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(record, separators=(",", ":")).encode(), mtime=0))
    tmp.replace(path)
    return path


def gather(directory) -> tuple[list[dict], list[dict]]:
    """A folder's runs and the book's: its runs file's, replaced and joined by its run
    directories and ``book/`` files (by run name, by seed), in the order of their names; or a
    runs file's alone when ``directory`` is one."""
    directory = Path(directory)
    if directory.is_file():
        return read_runs(directory)
    runs, book = read_runs(directory / RUNS_FILE) if (directory / RUNS_FILE).is_file() else ([], [])
    by_name = {r["run"]: r for r in runs} | {r["run"]: r for r in collect(directory)}
    by_seed = {r["seed"]: r for r in book} | {r["seed"]: r for r in collect_book(directory)}
    if not by_name:
        raise CheckpointError(f"no finished runs (*/{RESULT_FILE} or {RUNS_FILE}) under "
                              f"{directory}; run `d2lgru reproduce --backend NAME --out "
                              f"{directory}` first")
    return ([by_name[name] for name in sorted(by_name)],
            [by_seed[seed] for seed in sorted(by_seed)])


def rows(runs: list[dict]) -> list[list[dict]]:
    """The runs grouped by everything but their seed (backend, impl, mode, framework, device,
    config), each group in seed order, the groups in the order of their first run."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        config = {k: v for k, v in r["config"].items() if k not in ("seed", "data")}
        key = json.dumps([r["backend"], r["impl"], r.get("mode"), r["framework_version"],
                          r["device"], config], sort_keys=True)
        groups.setdefault(key, []).append(r)
    out = []
    for group in groups.values():
        group.sort(key=_seed)
        for a, b in zip(group, group[1:]):
            if _seed(a) == _seed(b):
                raise CheckpointError(f"{a['run']} and {b['run']} are the same run (seed "
                                      f"{_seed(a)}, same config); keep one of them")
        out.append(group)
    return out


def _seed(run) -> int:
    return int(run["config"].get("seed", 0))


def row_perplexity(group: list[dict]) -> float:
    """A row's perplexity: the median over its seeds of the last epoch's."""
    return float(np.median([r["history"][-1] for r in group]))


def collect_book(directory) -> list[dict]:
    """The book's own runs under ``directory/book/`` (none is fine), by seed."""
    runs = []
    for path in Path(directory, BOOK_DIR).glob("seed-*.json"):
        try:
            run = json.loads(path.read_text())
            if run.get("format") != BOOK_FORMAT:
                raise InvalidArgumentError(f"format is {run.get('format')!r}, expected {BOOK_FORMAT!r}")
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


def _seeds(runs) -> str:
    seeds = [r["seed"] if "seed" in r else _seed(r) for r in runs]
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _spread(values, fmt: str) -> str:
    """One value as it is; several as their median and range."""
    if len(values) == 1:
        return format(values[0], fmt)
    median = float(np.median(values))
    middle = f"{median:g}" if fmt == "d" else format(median, fmt)  # a median of counts may be x.5
    return f"{middle} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def ending_table(groups: list[list[dict]], book: list[dict]) -> str:
    """How every row's runs ended, the book's own runs last; for several seeds, each column
    gives the median over the seeds and their range."""
    lines = [f"| run | seeds | last epoch | last {SETTLED_EPOCHS} (median) | first epoch ≤ {BAR} | "
             f"epochs > {BAR} of the last 100 | highest of the last 100 |",
             "|---|---|--:|--:|--:|--:|--:|"]
    named = [(_who(g[0]), g) for g in groups] + ([("the book's own code", book)] if book else [])
    for name, runs in named:
        ends = [ending(r["history"]) for r in runs]
        firsts = [e["first_below"] for e in ends if e["first_below"] is not None]
        first = _spread(firsts, "d") if len(firsts) == len(ends) else \
            "never" if not firsts else f"{_spread(firsts, 'd')}; never in {len(ends) - len(firsts)}"
        lines.append(
            f"| {name} | {_seeds(runs)} | {_spread([e['last'] for e in ends], '.3f')} | "
            f"{_spread([e['settled'] for e in ends], '.3f')} | {first} | "
            f"{_spread([e['above_last_100'] for e in ends], 'd')} | "
            f"{max(e['peak_last_100'] for e in ends):.2f} |")
    runs = [r for g in groups for r in g]
    return "\n".join(lines) + "\n" + spike_windows(runs, book) + shared_spikes(runs)


def _pairs(values) -> str:
    return f"{len(values)} pair" + ("" if len(values) == 1 else "s")


def shared_spikes(runs: list[dict], span: int = 100) -> str:
    """Whether spikes follow the data: a seed fixes every epoch's batches on every backend, so
    compare the epochs above :data:`BAR` among the last ``span`` of two runs of the same seed
    with those of two runs of different seeds (the share of either's that both have)."""
    curves = [(_seed(r), np.asarray(r["history"], dtype=float)[-span:] > BAR)
              for r in runs if r["config"].get("gates", "both") == "both" and len(r["history"]) >= span]
    same, other = [], []
    for i, (seed_a, a) in enumerate(curves):
        for seed_b, b in curves[i + 1:]:
            if (a | b).any():
                (same if seed_a == seed_b else other).append((a & b).sum() / (a | b).sum())
    if not same or not other:
        return ""
    return (f"\nRuns of the same seed see the same batches in every epoch, whatever the backend. "
            f"Of the epochs above {BAR} among the last {span} of either of two runs, both runs "
            f"are above it in {np.mean(same):.0%} when they share the seed ({_pairs(same)}) "
            f"and in {np.mean(other):.0%} when they do not ({_pairs(other)}).\n")


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
    groups = rows(runs)
    lines = [
        "| backend | impl | mode | cell | framework | epochs | seeds | perplexity | by seed | "
        "tokens/s | device | `time traveller` … | `traveller` … |",
        "|---|---|---|---|---|--:|---|--:|---|--:|---|---|---|",
    ]
    for g in groups:
        r = g[0]
        by_seed = " · ".join(f"{x['history'][-1]:.2f}" for x in g)
        preds = [r["predictions"].get(p, "") for p in PREFIXES]
        preds = [p.replace("|", "\\|") for p in preds]
        lines.append(
            f"| {r['backend']} | {r['impl']} | {r.get('mode', '')} | {_cell(r)} | {r['framework_version']} | "
            f"{r['epochs']} | {_seeds(g)} | {row_perplexity(g):.2f} | "
            f"{by_seed} | "
            f"{r['tokens_per_sec']:,.0f} | {r['device']} | "
            f"{preds[0]} | {preds[1]} |")
    first = "seed 0's" if all(_seed(g[0]) == 0 for g in groups) else "the first seed's"
    book_lines = [f"- **{_who(g[0])}**: perplexity {row_perplexity(g):.1f}, "
                  f"{g[0]['tokens_per_sec']:.1f} tokens/sec on {g[0]['device']}" for g in groups]
    reference = (f" and {len(book)} runs of the book's own code (`docs/reproduce/book.py`, "
                 f"seeds {_seeds(book)})") if book else ""
    return ("*perplexity*: the median over the row's seeds of the last epoch's perplexity (what "
            "the book prints for its one run); *by seed*: each seed's, in seed order; tokens/s "
            f"and the predictions: {first} run.\n\n"
            + "\n".join(lines) + "\n\nIn the book's words:\n\n" + "\n".join(book_lines) + "\n"
            f"\n## How each run ended\n\nEvery run above{reference}: SGD at lr 1 makes the loss "
            f"spike for a few epochs at a time late in training, so the last epoch alone can land "
            f"in a spike; the median of the last {SETTLED_EPOCHS} epochs is where a run "
            f"settled. Where a row has several seeds, each column gives the median over them and "
            f"their range.\n\n" + ending_table(groups, book))


def _ended(r) -> str:
    """The last epoch's perplexity, and where the run settled when a spike holds the last."""
    last, median = r["history"][-1], settled(r["history"])
    return f"{last:.2f}" if last <= 1.1 * median else f"{last:.2f}; last {SETTLED_EPOCHS}: {median:.2f}"


def plot_runs(runs: list[dict], path, book: list[dict] = ()) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [g[0] for g in rows(runs)]  # one curve per row: its first seed
    lines = (len(runs) + bool(book) + 1) // 2
    fig, ax = plt.subplots(figsize=(8, 4.4 + 0.17 * lines), dpi=120)
    for i, r in enumerate(book):  # the reference band, under d2lgru's curves
        ax.plot(range(1, len(r["history"]) + 1), r["history"], lw=0.6, color="0.6", alpha=0.6,
                label=f"the book's own code, seeds {_seeds(book)}" if i == 0 else None)
    for r in runs:
        exercise = r["config"].get("gates", "both") != "both"  # the book's exercises: dashed
        ax.plot(range(1, len(r["history"]) + 1), r["history"], lw=1.0,
                ls="--" if exercise else "-",
                label=f"{r['backend']} {r['impl']} {r.get('mode', '')} {_cell(r)}"
                      + (f" seed {_seed(r)}" if _seed(r) else "") + f" ({_ended(r)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    seeds = {_seed(r) for r in runs}
    ax.set_title("GRU on The Time Machine, the book's config, every backend"
                 + (f" (seed {seeds.pop()})" if len(seeds) == 1 else ""))
    fig.tight_layout()
    path = save_png(fig, path)
    plt.close(fig)
    return path


def write_report(directory, out=None) -> tuple[Path, Path]:
    """``results.md`` and ``perplexity.png`` of :func:`gather`'s runs, in ``out`` (made if
    missing), else beside the runs; a folder's runs are recorded in its :data:`RUNS_FILE` too,
    and ``out`` receives one of its own, so that it rebuilds the report alone."""
    directory = Path(directory)
    runs, book = round_floats(gather(directory))  # the table says what the runs file records
    source = directory.parent if directory.is_file() else directory
    out = source if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not directory.is_file() or out.resolve() != source.resolve():
        write_runs(out / RUNS_FILE, runs, book)
    table = out / "results.md"
    table.write_text("# The chapter's experiment on every backend\n\n" + markdown_table(runs, book))
    return table, plot_runs(runs, out / "perplexity.png", book)
