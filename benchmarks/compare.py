"""Turn benchmark result files into one Markdown report and PNG charts.

    python -m benchmarks.compare benchmarks/results/<label>/*.json [--out DIR]
    python -m benchmarks.compare benchmarks/results/<label>          # every JSON in the folder

Writes ``results.md``, ``throughput.png`` and ``sweep.png`` into ``--out`` (default: the folder of
the first file). Needs only the standard library and matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import _metrics, contention as _contention, scaling as _scaling
from benchmarks._metrics import median, side_by_side
from benchmarks.run import FORMAT as BENCHMARK_FORMAT
from benchmarks.bare import KERAS_BACKENDS
from d2lgru._io import save_png
from d2lgru.backends import BACKENDS as ORDER

SWEEP_COLUMNS = [("book", None, None), ("H=64", "hidden", 64), ("H=1024", "hidden", 1024),
                 ("N=1", "batch_size", 1), ("N=256", "batch_size", 256),
                 ("T=140", "num_steps", 140)]
TARGET_BARE = 0.95  # #20: a default mode against its framework's fastest bare mode (#18: JAX)
TARGET_SPREAD = 4.0  # #20: the slowest backend's default against the fastest's
TARGET_FLOP = 0.50  # #20: the fastest backend against the machine's limit
TARGET_NUMPY_VS_TORCH = 0.5
TARGET_PIPELINE = 100.0
TARGET_VS_KERAS = 1.0


LIMITS_FORMAT = "d2lgru.Limits/1"  # benchmarks/limits.py


def load(paths, limits=None, contention=None, scaling=None) -> list[dict]:
    """Benchmark results, ordered by backend; ``limits.py``'s figures (a result's key
    ``limits``, or a ``limits-<backend>.json`` file of the older layout) go to the ``limits``
    list, ``contention.py``'s ``contention.json`` (with or without its format) to
    ``contention``, ``scaling.py``'s ``scaling.json`` to ``scaling``."""
    files = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    results = []
    for f in files:
        r = json.loads(f.read_text())
        if r.get("format") == LIMITS_FORMAT:
            if limits is not None:
                limits.append(dict(r, _file=f.name))
            continue
        if r.get("format") == _contention.FORMAT or f.name == "contention.json":
            if contention is not None:
                contention.append(dict(r, _file=f.name))
            continue
        if r.get("format") == _scaling.FORMAT:
            if scaling is not None:
                scaling.append(dict(r, _file=f.name))
            continue
        if r.get("format") != BENCHMARK_FORMAT:
            print(f"skipping {f}: not a d2lgru benchmark result", file=sys.stderr)
            continue
        r["_file"] = f.name
        lim = r.pop("limits", None)
        if lim is not None and limits is not None:
            limits.append(dict(lim, _file=f"{f.name} (limits)"))
        results.append(_metrics.derive(r))
    order = {name: i for i, name in enumerate(ORDER)}
    return sorted(results, key=lambda r: (order.get(r["backend"], 99), r["label"]))


# -- the machine's limit -------------------------------------------------------------------
def machine_limit(results, limits) -> dict | None:
    """The best float32 GEMM rate any library reached in any of these files (every run's GEMM
    case, NumPy's and the framework's, and every ``limits.py`` large GEMM): the machine's limit,
    taken at report time so that no library's slower BLAS stands for the machine."""
    best = None
    for r in results:
        for lib, m in (r.get("gemm") or {}).items():
            if isinstance(m, dict) and "gflops" in m and (
                    best is None or m["gflops"]["median"] > best["gflops"]):
                best = {"gflops": m["gflops"]["median"], "library": lib, "file": r["_file"]}
    for lim in limits:
        for lib in dict.fromkeys(("numpy", lim["backend"])):
            for key, g in (lim.get(lib) or {}).get("gemm", {}).items():
                if key.startswith("large") and (best is None or g["gflops"] > best["gflops"]):
                    best = {"gflops": g["gflops"], "library": lib,
                            "file": lim["_file"]}
    return best


def step_limit(limits) -> dict | None:
    """The limit at one training step's shapes (``[N, H] @ [H, 3H]`` and its two backward
    products, ``limits.py``): the best library's GFLOP/s over the three together."""
    best = None
    for lim in limits:
        for lib in dict.fromkeys(("numpy", lim["backend"])):
            small = [g for key, g in (lim.get(lib) or {}).get("gemm", {}).items()
                     if not key.startswith("large")]
            if not small:
                continue
            flop = sum(2 * g["shape"][0] * g["shape"][1] * g["shape"][2] for g in small)
            gflops = flop / sum(g["us"] for g in small) / 1e3
            if best is None or gflops > best["gflops"]:
                best = {"gflops": gflops, "library": lib}
    return best


def theoretical_peak(machine: dict) -> dict:
    """cores x clock x float32 FLOPs per cycle, from the recorded SIMD flags and clock."""
    simd = set(machine.get("simd") or [])
    lanes, width = (16, "AVX-512") if "avx512f" in simd else \
        (8, "AVX2") if {"avx", "avx2"} & simd else (4, "SSE")
    per_cycle = lanes * 2 * 2  # 2 vector units, each an FMA (2 FLOPs) per lane
    if "fma" not in simd:
        per_cycle //= 2
    clock = machine.get("cpu_max_mhz") or {}
    cores = min(c for c in (machine.get("physical_cores"), machine.get("cpus_usable")) if c) \
        if machine.get("physical_cores") or machine.get("cpus_usable") else None
    out = {"flops_per_cycle": per_cycle, "cores": cores, "mhz": clock.get("mhz"),
           "how": f"{cores} cores × {num(clock.get('mhz'), '{:,.0f}')} MHz × {per_cycle} "
                  f"FLOPs/cycle ({width}: {lanes} float32 lanes × "
                  f"{'2 (FMA)' if 'fma' in simd else '1'} × 2 vector units per core)",
           "assumed": "two vector FMA units per core (the CPU flags do not say how many) at "
                      "full vector width; the clock from "
                      + (clock.get("source") or "nowhere (not recorded in these result files)")}
    out["gflops"] = cores * clock["mhz"] / 1e3 * per_cycle if cores and clock.get("mhz") else None
    return out


def with_limits(results, limit, steplimit) -> None:
    """Each entry's share of the limit (``fraction_of_limit``) and, at the book's config, of the
    step limit (``fraction_of_step_limit``), in place."""
    for r in results:
        for e in r.get("train", []) + r.get("bare", []) + r.get("alternatives", []):
            rate, cfg = median(e), e["config"]
            if rate is None:
                continue
            flop = _metrics.flops_per_token(cfg["vocab"], cfg["hidden"])
            if limit:
                e["fraction_of_limit"] = rate / (limit["gflops"] * 1e9 / flop)
            if steplimit and _metrics.is_book(cfg):
                e["fraction_of_step_limit"] = rate / (steplimit["gflops"] * 1e9 / flop)


def limit_lines(limit, steplimit, peak) -> list[str]:
    lines = ["## The machine's limit", ""]
    if limit:
        lines.append(f"**Limit: {limit['gflops']:,.1f} GFLOP/s**, the best float32 GEMM rate any "
                     f"library reached in these files ({limit['library']}, `{limit['file']}`); "
                     f"*% limit* = tokens/s ÷ (limit ÷ FLOPs per token).")
    else:
        lines.append("Limit: no GEMM measured in these files.")
    if steplimit:
        lines.append(f"**Step limit: {steplimit['gflops']:,.1f} GFLOP/s**, the best library's "
                     f"({steplimit['library']}) rate over the three products one time step runs "
                     "at the book's config (`[32,256]@[256,768]`, `[32,768]@[768,256]`, "
                     "`[256,32]@[32,768]`, `benchmarks/limits.py`); *% step limit* applies it to "
                     "all of a token's FLOPs, book config only.")
    else:
        lines.append("Step limit: not measured (no `benchmarks/limits.py` figures here).")
    if peak["gflops"]:
        beyond = (" The measured limit is above it: the clock used is below the one the cores "
                  "ran at." if limit and limit["gflops"] > peak["gflops"] else "")
        lines.append(f"Theoretical peak: {peak['gflops']:,.1f} GFLOP/s = {peak['how']}. "
                     f"Assumed: {peak['assumed']}.{beyond}")
    else:
        lines.append(f"Theoretical peak: not computed ({peak['assumed']}).")
    return [x for line in lines for x in (line, "")]  # one paragraph each


# -- formatting -----------------------------------------------------------------------------
def rate(entry) -> str:
    if not entry:
        return "—"
    if "error" in entry:
        return "error: " + entry["error"].splitlines()[0][:80].replace("|", "/")
    s = entry["tokens_per_s"]
    return f"{s['median']:,.0f} ({s['min']:,.0f}–{s['max']:,.0f})"


def num(x, fmt="{:,.2f}", none="—") -> str:
    return none if x is None else fmt.format(x)


def pct(x) -> str:
    return num(None if x is None else 100 * x, "{:.1f}%")


def book_entries(result, kind="train"):
    return [e for e in result.get(kind, []) if _metrics.is_book(e["config"])]


def latency_ms(result, impl, batch):
    for e in result.get("latency", []):
        if e["impl"] == impl and e["config"]["batch_size"] == batch:
            return "error" if "error" in e else f"{e['ms']['median']:.2f}"
    return "—"


def _warmup_s(entry):
    if "build_s" not in entry:
        return None
    return entry["build_s"] + entry["first_epoch_s"]


def _ratio_note(results, multi, what: str, without: str) -> str:
    """How the ratios between rows were taken (ending in a space; ``without``, or nothing, for
    runs without rounds): round by round where the runs interleaved their cases (``run.py
    --rounds``), naming the runs (:func:`name`) that had another number of rounds than most."""
    per_run = {name(r, multi): max((len(e.get("round_medians") or ()) for kind in
                                  ("train", "bare", "alternatives") for e in r.get(kind, [])),
                                 default=0) for r in results}
    counts = [n for n in per_run.values() if n > 1]
    if not counts:
        return without + " " if without else ""
    rounds = max(set(counts), key=counts.count)
    others = ", ".join(f"{b}: {n}" for b, n in per_run.items() if n > 1 and n != rounds)
    many = f"{rounds} interleaved rounds" + (f" ({others})" if others else "")
    ratios = f"the {rounds} ratios" if not others else "the ratios of its rounds"
    return (f"The book config's cases ran in {many} (`run.py --rounds`), a fresh process each; "
            f"{what} the median of {ratios} taken round by round, so a machine whose speed "
            "drifts between cases moves both sides alike. ")


def fastest_bare(result):
    ok = [e for e in book_entries(result, "bare") if median(e)]
    return max(ok, key=median, default=None)


def name(result, multi_label) -> str:
    return result["backend"] + (f" @ {result['label']}" if multi_label else "")


# -- the report -----------------------------------------------------------------------------
def header(results) -> list[str]:
    lines = ["# d2lgru benchmark results", ""]
    unfinished = [r["_file"] for r in results if not r.get("complete", True)]
    if unfinished:
        lines += [f"> **Interrupted runs (partial results): {', '.join(unfinished)}.**", ""]
    if any(r["quick"] for r in results):
        lines += ["> **Quick smoke run (`--quick`): tiny repeats, small GEMM and corpus. These "
                  "figures are not measurements.**", ""]
    seen = {}
    for r in results:
        seen.setdefault(r["label"], r)
    for label, r in seen.items():
        m = r["machine"]
        gpu = f"; GPU {', '.join(m['gpus'])}" if m.get("gpus") else ""
        lines.append(f"Machine `{label}`: {m['cpu_model']}, {m['physical_cores']} cores / "
                     f"{m['cpus_usable']} CPUs usable, {m['memory_gb']} GB{gpu}; {m['os']}.")
    lines += ["", "| result file | backend version | device | threads | commit | created | "
                  "load at start | run time |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        sw = r.get("software", {})
        version = sw.get("framework_version") or sw.get("version") or "—"
        threads = r.get("threads_requested") or "default"
        co = r.get("checkout", {})
        commit = (co.get("commit") or "?")[:10] + (" (dirty)" if co.get("dirty") else "")
        load = r["machine"].get("load_average_at_start")
        others, cpus = r["machine"].get("busy_cpus_at_start"), r["machine"].get("cpus_usable")
        if others is None:  # older files: the load average only
            others = 1 if load and cpus and load[0] > 0.5 * cpus else 0
        busy = " ⚠ busy" if others > 0 else ""
        lines.append(f"| `{r['_file']}` | {r['backend']} {version} | {r['device']} | {threads} | "
                     f"`{commit}` | {r['created']} | {num(load[0] if load else None, '{:.2f}')}"
                     f"{busy} | {r.get('wall_s', 0) / 60:.1f} min |")
    lines += ["", f"FLOPs: {results[0]['flops_formula']}. The limit is the best float32 GEMM "
                  "rate any library reached in these files (see *The machine's limit*).", ""]
    return lines


def main_table(results, multi) -> list[str]:
    lines = ["## Training throughput at the book's configuration", "",
             "Vocab 28, hidden 256, batch 32, 35 steps; tokens/s of whole training steps "
             "(forward, loss, backward, clipping, SGD), median (min–max) over repeats. `*` marks "
             "the impl's default mode; `bare` rows are the book's concise model written straight "
             "against the framework (`benchmarks/bare/`). " + _ratio_note(
                 results, multi, "*× bare*: against the fastest bare mode,",
                 "*× bare*: median over the fastest bare mode's median in the same run.")
             + "*cell*: each impl trains the CLI's cell (the "
             "book's reset-before where the impl has it); every bare model is its framework's "
             "default GRU, the reset-after cell, which fuses the three recurrent products into "
             "one, so a reset-before row against bare compares two cells, not just overhead.", "",
             "*warm-up s*: building the trainer and its first 2-batch epoch (tracing, "
             "compiling).", "",
             "*keras3* rows: Keras 3 on that framework (`benchmarks/bare/keras3.py`: one-hot → "
             "`GRU` → `Dense`, SGD with `global_clipnorm`, `model.fit`, or Keras' custom torch "
             "loop where `fit` cannot carry the state); *book*: the book's own PyTorch GRU from "
             "scratch (`docs/reproduce/book.py`). *% limit*, *% step limit*: see *The machine's "
             "limit*.", "",
             "| backend | impl | mode | cell | tokens/s | × bare | % limit | % step limit | "
             "`gru` fwd b1 ms | `gru` fwd b32 ms | peak RSS MB | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        fb = fastest_bare(r)
        for e in book_entries(r) + book_entries(r, "bare") + book_entries(r, "alternatives"):
            is_bare = e in r.get("bare", [])
            is_alt = "script" in e
            ratio = side_by_side(e, fb) if fb else None
            impl = "bare" if is_bare else _alt_name(e) if is_alt else e["impl"]
            mode = e["mode"] + ("" if is_bare or not e.get("default_mode") else " *")
            lat1 = "" if is_bare or is_alt else latency_ms(r, e["impl"], 1)
            lat32 = "" if is_bare or is_alt else latency_ms(r, e["impl"], 32)
            cell = "reset-before" if e.get("script") == "book" else \
                "reset-after" if is_bare or is_alt or e.get("reset_after") else "reset-before"
            lines.append(f"| {name(r, multi)} | {impl} | {mode} | {cell} | {rate(e)} | "
                         f"{num(ratio)} | {pct(e.get('fraction_of_limit'))} | "
                         f"{pct(e.get('fraction_of_step_limit'))} | {lat1} | "
                         f"{lat32} | {num(e.get('peak_rss_mb'), '{:,.0f}')} | "
                         f"{num(_warmup_s(e), '{:,.1f}')} |")
        if r.get("software", {}).get("device_refused"):
            lines.append(f"| {name(r, multi)} | — | — | | {r['software']['device_refused']} "
                         "| | | | | | |")
        if "error" in r.get("software", {}):
            lines.append(f"| {name(r, multi)} | — | — | | d2lgru backend unavailable: "
                         f"{r['software']['error'].splitlines()[0][:100]} | | | | | | |")
    return lines + [""]


def gemm_table(results, multi, limit, steplimit, peak) -> list[str]:
    lines = limit_lines(limit, steplimit, peak) + [
        "Each run's float32 GEMM:", "",
        "| run | n | NumPy GFLOP/s | framework GFLOP/s |", "|---|---|---|---|"]
    for r in results:
        g = r.get("gemm")
        if not g or "error" in g:
            if g or r.get("train") or r.get("bare"):
                lines.append(f"| {name(r, multi)} | | {'error' if g else 'not measured'} | |")
            continue
        fw = g.get(r["backend"]) if r["backend"] != "numpy" else None

        def gf(x):
            return f"{x['gflops']['median']:,.1f} ({x['gflops']['min']:,.1f}–{x['gflops']['max']:,.1f})"
        lines.append(f"| {name(r, multi)} | {g['n']} | {gf(g['numpy'])} | {gf(fw) if fw else '—'} |")
    return lines + [""]


def _alt_name(e) -> str:
    return f"keras3 ({e['keras_backend']})" if e["script"] == "keras3" else e["script"]


def _why_slower(ours: dict, alt: dict) -> str:
    """The known cause of a d2lgru row slower than the alternative, or ''."""
    if ours.get("reset_after") is False and alt.get("reset_after", True):
        return ("another cell: d2lgru trains the book's reset-before cell, two recurrent "
                "products a step, the second waiting on the reset gate; Keras' GRU is the "
                "reset-after cell, one fused product a step")
    return ""


def alternatives_section(results, multi) -> list[str]:
    """d2lgru's default per framework against Keras 3 on that framework (and the book's code)."""
    rows = []
    for r in results:
        ours = [e for e in book_entries(r) if e.get("default_mode") and median(e)]
        for alt in book_entries(r, "alternatives"):
            if not alt.get("default_mode"):
                continue
            if not median(alt):
                rows.append(f"| {r['backend']} | {_alt_name(alt)} {alt['mode']} | "
                            f"{rate(alt)} | | | | |")
                continue
            if not ours:
                rows.append(f"| {r['backend']} | {_alt_name(alt)} {alt['mode']} | "
                            f"{median(alt):,.0f} | no d2lgru backend measured here | — | n/a | |")
            for e in ours:
                x = side_by_side(e, alt)
                why = _why_slower(e, alt) if x < TARGET_VS_KERAS else ""
                rows.append(f"| {r['backend']} | {_alt_name(alt)} {alt['mode']} | "
                            f"{median(alt):,.0f} | {e['impl']} {e['mode']} {median(e):,.0f} | "
                            f"{x:.2f}× | {'**met**' if x >= TARGET_VS_KERAS else '**missed**'} | "
                            f"{why} |")
    if not rows:
        return []
    return ["## d2lgru against what a user would pick instead", "",
            f"Book config, default modes, tokens/s medians of the same run. "
            + _ratio_note(results, multi, "*d2lgru / it*:", "") + f"Target: d2lgru ≥ "
            f"{TARGET_VS_KERAS:.1f}× the alternative. *why*: what the two rows compute "
            "differently, where a missed target has a known cause.", "",
            "| framework | alternative | its tokens/s | d2lgru default | d2lgru / it | "
            f"≥ {TARGET_VS_KERAS:.1f}× | why |", "|---|---|---|---|---|---|---|"] + rows + [""]


def sweep_table(results, multi) -> list[str]:
    heading = ["## Sweep: one axis at a time around the book's configuration", ""]
    if not any(e.get("sweep_axis") for r in results for kind in ("train", "bare")
               for e in r.get(kind, [])):  # a table of dashes says less than one line
        return heading + ["Not measured in these files (`run.py --skip sweep`); `python -m "
                          "benchmarks.run --backend B` runs it.", ""]
    lines = heading + [
        "Median tokens/s (% of the limit). H: hidden units, N: batch size, T: steps.",
        "", "| backend | impl | mode | " + " | ".join(c[0] for c in SWEEP_COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(SWEEP_COLUMNS)]
    for r in results:
        rows = {}
        for kind in ("train", "bare"):
            for e in r.get(kind, []):
                key = ("bare" if kind == "bare" else e["impl"], e["mode"])
                rows.setdefault(key, {})[_column(e["config"])] = e
        for (impl, mode), cells in rows.items():
            if impl == "bare" and len(cells) == 1:
                continue  # bare at the book config only: already in the main table
            out = []
            for col, _, _ in SWEEP_COLUMNS:
                e = cells.get(col)
                if not e:
                    out.append("—")
                elif "error" in e:
                    out.append("error")
                else:
                    out.append(f"{median(e):,.0f} ({pct(e.get('fraction_of_limit'))})")
            lines.append(f"| {name(r, multi)} | {impl} | {mode} | " + " | ".join(out) + " |")
    return lines + [""]


def _column(cfg) -> str | None:
    for col, axis, value in SWEEP_COLUMNS:
        if axis is None and _metrics.is_book(cfg):
            return col
        if axis and cfg[axis] == value and all(cfg[k] == v for k, v in _metrics.BOOK.items()
                                               if k != axis):
            return col
    return None


def pipeline_section(results) -> tuple[list[str], dict | None]:
    pipe = next((r["pipeline"] for r in results if r.get("pipeline")), None)
    if not pipe:
        return [], None
    lines = ["## Data pipeline", "",
             f"Tokenise (read, clean, split into characters, vocabulary, corpus of ids) and batch "
             f"one epoch (sequential partitioning, batch {pipe['batch_size']}, "
             f"{pipe['num_steps']} steps) of a generated corpus (`{Path(pipe['source']).name}` "
             "repeated). `book`: the book's per-character Python code "
             "(`benchmarks/_book_pipeline.py`). Each run in its own process; peak RSS includes "
             "the interpreter; bytes/token = (peak RSS − RSS at start) / tokens.", "",
             "| implementation | corpus MB | tokens | tokenise s | batch s | total s | MB/s | "
             "peak RSS MB | bytes/token |", "|---|---|---|---|---|---|---|---|---|"]
    for run in pipe["runs"]:
        if "error" in run:
            lines.append(f"| {run['impl']} | {run['corpus_mb']} | error: "
                         f"{run['error'].splitlines()[0][:80]} | | | | | | |")
            continue
        lines.append(f"| {run['impl']} | {run['corpus_mb']:,.1f} | {run['tokens']:,} | "
                     f"{run['tokenise_s']:.2f} | {run['batch_s']:.2f} | {run['total_s']:.2f} | "
                     f"{run['mb_per_s']:,.1f} | {run['peak_rss_mb']:,.0f} | "
                     f"{num(run['bytes_per_token'], '{:.1f}')} |")
    if "same_output" in pipe:
        lines += ["", f"Same vocabulary, corpus and batches: **{'yes' if pipe['same_output'] else 'NO'}**"
                      f" (SHA-256 of the corpus and of every batch). d2lgru is "
                      f"**{pipe['speedup']:,.1f}×** faster and uses "
                      f"{1 / pipe['memory_ratio']:.2f}× the book's peak memory."]
    return lines + [""], pipe


def _verdict(ratios: dict, target: float) -> str:
    """met, missed, or missed for the keys under ``target``."""
    missed = [k for k, x in ratios.items() if x < target]
    return ("**met**" if not missed else "**missed**"
            + (f" for {', '.join(missed)}" if len(missed) < len(ratios) else ""))


def contention_section(contention) -> list[str]:
    """Two trainings at once against one alone (``benchmarks/contention.py``'s
    ``contention.json``), per backend and thread setting."""
    lines = ["## Under contention", ""] if contention else []
    for c in contention:
        lines += [f"`{c['_file']}`: " + _contention.describe(c), ""] + _contention.table(c) + [""]
    return lines


#: a link between nodes for the on-paper estimate: 10 Gb/s Ethernet, 50 µs per message (TCP)
LINK_BYTES_PER_S, LINK_LATENCY_S = 10e9 / 8, 50e-6


def scaling_section(scaling) -> list[str]:
    """Data-parallel tokens/s at W = 1 and 2 (``benchmarks/scaling.py``), and W = 8 and 64
    estimated on paper from what a step all-reduces and how long a step takes."""
    if not scaling:
        return []
    doc = scaling[-1]
    lines = ["## Data-parallel scaling", "",
             f"`{doc['_file']}` (`python -m benchmarks.scaling`): `d2lgru train --nproc W "
             f"--threads 1` on {doc['cpus']} CPUs, global batch {_scaling.BATCH} split by rows "
             f"over the W workers, the gradients averaged by each framework's own all-reduce. "
             f"*step*: the global batch's time (B·T over tokens/s); *overhead*: a W=2 step "
             f"beyond half a W=1 step (what the all-reduce, the workers waiting for each other "
             f"and sharing the machine cost); *all-reduce*: the float32 gradient every step "
             f"sums.", "",
             "| backend | impl / mode | hidden | W=1 tokens/s | W=2 tokens/s | speed-up | step W=1 "
             "| step W=2 | overhead | all-reduce | load |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    estimates = []
    for backend, rep in doc["backends"].items():
        cases = {(c["hidden"], c["nproc"]): c for c in rep["cases"]}
        for hidden in sorted({h for h, _ in cases}):
            one, two = cases.get((hidden, 1)), cases.get((hidden, 2))
            if not (one and two):
                continue
            over = two["step_ms"] - one["step_ms"] / 2
            mb = one["allreduce_bytes"] / 2**20
            lines.append(
                f"| {backend} | {one['impl']} / {one['mode']} | {hidden} | "
                f"{one['tokens_per_sec']:,.0f} | {two['tokens_per_sec']:,.0f} | "
                f"{two['tokens_per_sec'] / one['tokens_per_sec']:.2f}× | {one['step_ms']:.1f} ms | "
                f"{two['step_ms']:.1f} ms | {over:.1f} ms | {mb:.2f} MiB | "
                f"{rep['load_before'][0]:.1f} → {rep['load_after'][0]:.1f} |")
            estimates.append((backend, hidden, one, over))
    lines.append("")
    if estimates:
        lines += ["**W = 8 and 64, on paper.** A ring all-reduce moves 2(W−1)/W of the gradient "
                  "through every worker per step. Taking a W=1 step's compute as divisible by "
                  "rows (optimistic: small GEMMs run below the large ones' rate) and the "
                  "communication as (a) what W=2 cost here per byte, scaled by 2(W−1)/W, or (b) "
                  f"a {LINK_BYTES_PER_S * 8 / 1e9:.0f} Gb/s link between nodes with "
                  f"{LINK_LATENCY_S * 1e6:.0f} µs per message (the ring's 2(W−1) messages a "
                  "step): the global batch of 32 rows splits over W=8 (4 rows each) "
                  "but not over 64, which needs a global batch of 64 or more (1 row each: a "
                  "different training than the book's).", "",
                  "| backend | hidden | W=8, B=32: step (a) / (b) | tokens/s (a) / (b) | W=64, B=64: "
                  "step (a) / (b) | tokens/s (a) / (b) |", "|---|--:|--:|--:|--:|--:|"]
        for backend, hidden, one, over in estimates:
            row_ms = one["step_ms"] / _scaling.BATCH
            cells = []
            for W, B in ((8, 32), (64, 64)):
                ring = 2 * (W - 1) / W
                a = row_ms * B / W + ring * max(over, 0.0)
                b = row_ms * B / W + 1000 * (ring * one["allreduce_bytes"] / LINK_BYTES_PER_S
                                             + 2 * (W - 1) * LINK_LATENCY_S)
                tok = lambda ms: f"{B * _scaling.STEPS / (ms / 1000):,.0f}"  # noqa: E731
                cells.append(f"{a:.1f} / {b:.1f} ms | {tok(a)} / {tok(b)}")
            lines.append(f"| {backend} | {hidden} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def targets(results, pipe, contention=(), limit=None, steplimit=None) -> list[str]:
    """Issue #20's targets (and #18's), each with what these files say about it."""
    lines = ["## Targets", ""]
    by_backend = {r["backend"]: r for r in results}

    def status(ok):
        return "**met**" if ok else "**missed**"

    # 1. contention, d2lgru's own thread policy
    policy = {row["backend"]: min(row["policy"]["ratio"]) for c in contention
              for row in c["rows"] if "policy" in row}
    if policy:
        missing = [r["backend"] for r in results if r["backend"] not in policy]
        lines.append(f"1. Two trainings at once each ≥ {_contention.TARGET}× one alone, every "
                     f"backend (d2lgru's thread policy; the lower of the two): "
                     + ", ".join(f"{b} {x:.2f}" for b, x in policy.items()) + " — "
                     + _verdict(policy, _contention.TARGET)
                     + (f"; not measured: {', '.join(missing)}" if missing else ""))
    else:
        lines.append(f"1. Two trainings at once each ≥ {_contention.TARGET}× one alone: not "
                     "measured (no contention.json: `python -m benchmarks.contention`)")
    # 2. every row against the machine's limit
    entries = [e for r in results for e in book_entries(r) if median(e)]
    placed = [e for e in entries if e.get("fraction_of_limit")]
    lines.append(f"2. Every row against the machine's limit (*% limit*): {len(placed)} of "
                 f"{len(entries)} book-config rows — {status(entries and len(placed) == len(entries))}")
    # 3. d2lgru's default against Keras 3 on the same framework
    keras = {}
    for r in results:
        alts = [a for a in book_entries(r, "alternatives")
                if a["script"] == "keras3" and a.get("default_mode") and median(a)]
        ours = [e for e in book_entries(r) if e.get("default_mode") and median(e)]
        if alts and ours:
            alt = max(alts, key=median)
            keras[r["backend"]] = ({e["impl"]: side_by_side(e, alt) for e in ours}, alt)
    if keras:
        lines.append(f"3. d2lgru's default ≥ {TARGET_VS_KERAS:.1f}× Keras 3 on its framework:")
        for backend, (ratios, alt) in keras.items():
            lines.append(f"   - {backend}: " + ", ".join(f"{impl} {x:.2f}×"
                                                       for impl, x in ratios.items())
                         + f" (keras3 {alt['mode']} {median(alt):,.0f} tokens/s) — "
                         + _verdict(ratios, TARGET_VS_KERAS))
        unmeasured = [r["backend"] for r in results if r["backend"] not in keras
                      and r["backend"] in KERAS_BACKENDS]
        if unmeasured:
            lines.append(f"   - not measured: {', '.join(unmeasured)} (no Keras 3 rows: "
                         "keras does not import in that environment, or an older result)")
    else:
        lines.append(f"3. d2lgru's default ≥ {TARGET_VS_KERAS:.1f}× Keras 3: not measured (no "
                     "Keras 3 rows in these files)")
    # 4. default modes against the framework's fastest bare mode, and the spread of defaults
    lines.append(f"4. Each backend's default mode ≥ {TARGET_BARE}× the fastest bare mode of its "
                 "framework:")
    for r in results:
        fb = fastest_bare(r)
        rows = [e for e in book_entries(r) if e.get("default_mode") and median(e)]
        if not fb or not rows:
            why = "NumPy has no GRU layer to use bare" if r["backend"] == "numpy" else \
                "not measured" if not rows else "bare model failed"
            lines.append(f"   - {r['backend']}: n/a ({why})")
            continue
        ratios = {e["impl"]: side_by_side(e, fb) for e in rows}
        parts = [f"{e['impl']} {e['mode']} {ratios[e['impl']]:.2f}×" for e in rows]
        lines.append(f"   - {r['backend']}: {', '.join(parts)} (bare {fb['mode']} "
                     f"{median(fb):,.0f} tokens/s) — {_verdict(ratios, TARGET_BARE)}")
    defaults = {r["backend"]: x for r in results if (x := _default_rate(r, "scratch"))}
    if len(defaults) > 1:
        (slow, s), (fast, f) = (min(defaults.items(), key=lambda kv: kv[1]),
                                max(defaults.items(), key=lambda kv: kv[1]))
        lines.append(f"   Slowest default (scratch, default mode) within {TARGET_SPREAD:g}× of "
                     f"the fastest: {slow} {s:,.0f} vs {fast} {f:,.0f} tokens/s, "
                     f"{f / s:.2f}× — {status(f / s <= TARGET_SPREAD)}")
    # 5. the data pipeline
    if pipe and "speedup" in pipe:
        lines.append(f"5. Data pipeline ≥ {TARGET_PIPELINE:.0f}× the book's per-character "
                     f"Python: {pipe['speedup']:,.1f}× — "
                     f"{status(pipe['speedup'] >= TARGET_PIPELINE)}"
                     f"{'' if pipe['same_output'] else ' (OUTPUTS DIFFER)'}")
        small, large = pipe.get("bytes_per_token_small_vs_large") or (None, None)
        marginal = pipe.get("marginal_bytes_per_token")
        if small and large and marginal:
            ok = 0.75 <= marginal / large <= 1.25
            lines.append(f"   Memory proportional to the token count: {small:.1f} bytes/token at "
                         f"a quarter of the corpus, {large:.1f} at the whole, {marginal:.1f} per "
                         f"added token (slope between the two) — {status(ok)} (slope within ±25% "
                         "of the whole corpus' bytes/token, i.e. little fixed overhead)")
    else:
        lines.append(f"5. Data pipeline ≥ {TARGET_PIPELINE:.0f}×: not measured (the numpy run "
                     "measures it)")
    # 6. the fastest backend against the machine's limit
    fractions = [(e.get("fraction_of_limit"), r["backend"], e["impl"], e["mode"],
                  e.get("fraction_of_step_limit"))
                 for r in results for e in book_entries(r) if e.get("fraction_of_limit")]
    if fractions:
        f, b, i, m, fs = max(fractions)
        lines.append(f"6. Fastest backend ≥ {TARGET_FLOP:.0%} of the machine's limit: {b} {i} {m} "
                     f"at {f:.1%} ({pct(fs)} of the step limit) — {status(f >= TARGET_FLOP)}")
        if limit and steplimit:
            ceiling = steplimit["gflops"] / limit["gflops"]
            lines.append(f"   The step limit is {ceiling:.1%} of the machine's limit: a step doing "
                         "all its FLOPs at the best rate any library reached at the step's own "
                         f"shapes would reach {ceiling:.1%}"
                         + (f"; {TARGET_FLOP:.0%} needs faster products at those shapes (only the "
                            "weights' gradients can be batched over all steps; the two state "
                            "products of each step cannot)" if ceiling < TARGET_FLOP else ""))
    else:
        lines.append(f"6. Fastest backend ≥ {TARGET_FLOP:.0%} of the machine's limit: not measured")
    pairs = [f"{r['backend']} {x}" for r in results if (x := _scratch_vs_native(r))]
    lines.append("   Scratch fast path (all-step input projection, fused gates, row lookup): scratch "
                 "/ native throughput at the book config, default modes: "
                 + (", ".join(pairs) if pairs else "no backend with both measured")
                 + " (identical results are the conformance suite's to check)")
    # #18: JAX
    jax_r = by_backend.get("jax")
    jax_fb = fastest_bare(jax_r) if jax_r else None
    jax_rows = [e for e in book_entries(jax_r) if e.get("default_mode") and median(e)] \
        if jax_r else []
    if jax_fb and jax_rows:
        ratios = {e["impl"]: side_by_side(e, jax_fb) for e in jax_rows}
        lines.append(f"- (#18) JAX's default ≥ {TARGET_BARE}× the fastest bare JAX: "
                     + ", ".join(f"{e['impl']} {e['mode']} {ratios[e['impl']]:.2f}×"
                                 for e in jax_rows)
                     + f" (bare {jax_fb['mode']} {median(jax_fb):,.0f} tokens/s) — "
                     + _verdict(ratios, TARGET_BARE))
    else:
        lines.append(f"- (#18) JAX's default ≥ {TARGET_BARE}× the fastest bare JAX: not measured")
    numpy_r, torch_r = by_backend.get("numpy"), by_backend.get("torch")
    np_rate = _default_rate(numpy_r, "scratch") if numpy_r else None
    t_rate = _default_rate(torch_r, "native") if torch_r else None
    if np_rate and t_rate:
        lines.append(f"- NumPy ≥ {TARGET_NUMPY_VS_TORCH}× torch native: {np_rate / t_rate:.2f}× "
                     f"({np_rate:,.0f} vs {t_rate:,.0f} tokens/s) — "
                     f"{status(np_rate / t_rate >= TARGET_NUMPY_VS_TORCH)}")
    else:
        lines.append(f"- NumPy ≥ {TARGET_NUMPY_VS_TORCH}× torch native: not measured (needs "
                     "numpy.json and torch.json)")
    return lines + [""]


def limits_section(limits) -> list[str]:
    """What bounds the speed (``benchmarks/limits.py``'s figures): each library's GEMM rate at the
    shapes of one time step, against its large GEMM, and the cost of one small op."""
    if not limits:
        return []
    lines = ["## What bounds the speed", "",
             "`benchmarks/limits.py` in each environment: GFLOP/s of the three products one "
             "time step runs at the book's config, as a share of the same library's 4096 GEMM; "
             "*recurrent-only tokens/s*: the rate if a step did nothing but 35 × those three "
             "products; *add µs*: one `[32,256]` element-wise add, the floor of every op a "
             "step launches.", "",
             "| library | 4096 GEMM GFLOP/s | `[32,256]@[256,768]` | `[32,768]@[768,256]` | "
             "`[256,32]@[32,768]` | recurrent-only tokens/s | add µs |",
             "|---|---|---|---|---|---|---|"]
    # each library from its own run where there is one (numpy: the numpy run's)
    own = {lim["backend"]: lim for lim in limits}
    seen = set()
    for lim in [own["numpy"]] * ("numpy" in own) + limits:
        for lib in ("numpy", lim["backend"]):
            m = lim.get(lib)
            if not m or lib in seen:
                continue
            seen.add(lib)
            large = next(g for key, g in m["gemm"].items() if key.startswith("large"))
            small = [g for key, g in m["gemm"].items() if not key.startswith("large")]
            cells = [f"{g['gflops']:,.0f} ({g['share_of_large']:.0%})" for g in small]
            lines.append(f"| {lib} | {large['gflops']:,.0f} | " + " | ".join(cells) +
                         f" | {m['tokens_per_s_if_only_recurrent_products']:,.0f} | "
                         f"{m['add_us']:.1f} |")
    return lines + [""]


def _default_rate(result, impl):
    for e in book_entries(result):
        if e["impl"] == impl and e.get("default_mode") and median(e):
            return median(e)
    return None


def _scratch_vs_native(result):
    s, n = _default_rate(result, "scratch"), _default_rate(result, "native")
    return f"{s / n:.2f}×" if s and n else None


# -- charts ---------------------------------------------------------------------------------
def charts(results, out: Path, multi) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {b: plt.get_cmap("tab10")(i) for i, b in enumerate(ORDER)}
    written = []
    bars = []
    for r in results:
        for kind in ("train", "bare"):
            for e in book_entries(r, kind):
                if median(e):
                    label = (f"{name(r, multi)} bare {e['mode']}" if kind == "bare" else
                             f"{name(r, multi)} {e['impl']} {e['mode']}"
                             f"{' *' if e.get('default_mode') else ''}")
                    bars.append((label, e["tokens_per_s"], r["backend"], kind == "bare"))
    if bars:
        # points, not bars: the scale is logarithmic (the backends span three decades)
        fig, ax = plt.subplots(figsize=(8, 0.3 * len(bars) + 1.4), dpi=110)
        for yi, (label, s, backend, is_bare) in zip(range(len(bars))[::-1], bars):
            color = colors.get(backend, "grey")
            ax.errorbar([s["median"]], [yi], xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
                        fmt="s" if is_bare else "o", color=color, capsize=3, markersize=6,
                        markerfacecolor="white" if is_bare else color)
        ax.set_yticks(list(range(len(bars))[::-1]), [b[0] for b in bars], fontsize=7)
        ax.set_ylim(-0.7, len(bars) - 0.3)
        ax.set_xscale("log")
        ax.set_xlabel("tokens/s, log scale (median, whiskers min–max; hollow squares: bare "
                      "framework; *: default mode)", fontsize=8)
        ax.set_title("Training throughput, book config (V 28, H 256, N 32, T 35)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        save_png(fig, out / "throughput.png")
        plt.close(fig)
        written.append("throughput.png")

    fig, axes = plt.subplots(1, 3, figsize=(12, 4), dpi=110, sharey=True)
    any_line = False
    for ax, (axis, values) in zip(axes, _metrics.SWEEP.items()):
        for r in results:
            for kind in ("train", "bare"):
                series = {}
                for e in r.get(kind, []):
                    cfg = e["config"]
                    if not median(e) or not all(cfg[k] == v for k, v in _metrics.BOOK.items()
                                                if k != axis):
                        continue
                    if kind == "train" and not e.get("default_mode"):
                        continue
                    key = "bare " + e["mode"] if kind == "bare" else e["impl"]
                    series.setdefault(key, []).append((cfg[axis], median(e)))
                for key, pts in series.items():
                    if len(pts) < 2:
                        continue
                    pts.sort()
                    style = {"scratch": "-", "native": "--"}.get(key, ":")
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o",
                            markersize=3, color=colors.get(r["backend"], "grey"),
                            label=f"{name(r, multi)} {key}")
                    any_line = True
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(values, [str(v) for v in values])
        ax.set_xlabel({"hidden": "hidden units H", "batch_size": "batch size N",
                       "num_steps": "steps T"}[axis])
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("tokens/s (default mode; log scale)")
    if any_line:
        handles, labels = axes[0].get_legend_handles_labels()
        for ax in axes[1:]:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in labels:
                    handles.append(h)
                    labels.append(l)
        fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
        fig.suptitle("Sweep around the book config (solid: scratch, dashed: native, dotted: bare)",
                     fontsize=9)
        fig.tight_layout(rect=(0, 0.06 + 0.025 * (len(labels) // 4), 1, 1))
        save_png(fig, out / "sweep.png")
        written.append("sweep.png")
    plt.close(fig)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare",
                                description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="+", help="result JSON files or folders holding them")
    p.add_argument("--out", help="folder for results.md and the charts (default: the first "
                                 "file's folder)")
    p.add_argument("--no-charts", action="store_true")
    args = p.parse_args(argv)
    limits, contention, scaling = [], [], []
    results = load(args.results, limits, contention, scaling)
    if not results:
        p.error("no d2lgru benchmark results found in " + ", ".join(args.results))
    first = Path(args.results[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent)
    out.mkdir(parents=True, exist_ok=True)
    multi = len({r["label"] for r in results}) > 1
    pipe_lines, pipe = pipeline_section(results)
    limit, steplimit = machine_limit(results, limits), step_limit(limits)
    with_limits(results, limit, steplimit)
    peak = theoretical_peak(results[0]["machine"])
    lines = (header(results) + main_table(results, multi)
             + gemm_table(results, multi, limit, steplimit, peak)
             + alternatives_section(results, multi)
             + sweep_table(results, multi) + pipe_lines + contention_section(contention)
             + scaling_section(scaling)
             + targets(results, pipe, contention, limit, steplimit) + limits_section(limits))
    written = [] if args.no_charts else charts(results, out, multi)
    if written:
        lines += ["## Charts", ""] + [f"![{w[:-4]}]({w})" for w in written] + [""]
    (out / "results.md").write_text("\n".join(lines))
    print(f"wrote {out / 'results.md'}" + "".join(f", {w}" for w in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
