"""Before/after: d2lgru's training speed at two revisions, measured side by side in one run.

    python -m benchmarks.ab --before REV [--after REV] [--backends numpy,torch]
                            [--rounds 3] [--threads 1] [--pipeline-mb MB] [--out FILE]
                            [--tox-dir DIR]

For every backend (each in its own environment, found as ``benchmarks/all.py`` finds them) and
every impl, the default mode of each revision trains the book's config (hidden 256, batch 32,
35 steps) through the ``train`` case of ``benchmarks/run.py``, timed as the snapshot times it.
Each revision runs from its own copy of ``d2lgru/`` (``git archive``; ``--after`` defaults to
the working tree) with *this* checkout's ``benchmarks/`` beside it, so only the library
differs; before and after alternate, ``--rounds`` times, and the medians are compared. A
refactoring is judged by the ratio after/before of runs made minutes apart on one machine,
not by figures from different days (this machine's GEMM rate moves 3x from day to day).

``--pipeline-mb MB`` times the data pipeline too (the ``pipeline`` case of ``benchmarks/run.py``
on a text of MB megabytes, d2lgru's side only, in the numpy environment): seconds to tokenise
and batch one epoch, and peak RSS, before and after alternated; ``--backends ""`` leaves the
trainings out.

``--threads`` (default 1) fixes the thread count of both (``OMP_NUM_THREADS`` and the
frameworks' own variables), so the figure is the library's code, not the thread policy of one
revision; ``--threads 0`` leaves each revision its own default. Writes a JSON file (``--out``,
default ``ab.json`` under ``benchmarks/results/<machine-label>/``) and prints the table.
Measurements, never tests: check ``uptime`` first, the load is kept in the file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import _machine, _metrics
from benchmarks.all import interpreter
from benchmarks.run import FULL, RESULTS, corpus_text, find_text, run_case
from d2lgru._io import round_floats
from d2lgru.backends import BACKENDS


def _tree(rev: str | None, root: Path) -> Path:
    """A directory holding ``d2lgru/`` at ``rev`` (None: the working tree) and this checkout's
    ``benchmarks/``: what a worker imports when it runs there."""
    tree = root / (rev or "worktree").replace("/", "_")
    tree.mkdir()
    if rev is None:
        shutil.copytree(_machine.REPO / "d2lgru", tree / "d2lgru",
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(_machine.REPO), "archive", rev, "d2lgru"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    shutil.copytree(_machine.REPO / "benchmarks", tree / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__", "results"))
    return tree


def _rev_parse(rev: str) -> str:
    return subprocess.run(["git", "-C", str(_machine.REPO), "rev-parse", rev], check=True,
                          capture_output=True, text=True).stdout.strip()


def _case(python: Path, tree: Path, task: dict, threads: int, workdir: Path) -> dict:
    """``task`` (its backend in it) run by ``python`` in ``tree``, as benchmarks.run runs one."""
    who = argparse.Namespace(backend=task["backend"], device="cpu", threads=threads or None)
    return run_case(task, who, workdir, FULL["timeout_s"], python=python, cwd=tree)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="the revision to compare against")
    p.add_argument("--after", help="the revision measured against it (default: the working tree)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of before and after (3)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads of both revisions (default 1; 0: each revision's own default)")
    p.add_argument("--out", type=Path, help="JSON file (default results/<label>/ab.json)")
    p.add_argument("--tox-dir", type=Path, help="where the per-backend environments are")
    p.add_argument("--data", help="The Time Machine (file or directory)")
    p.add_argument("--pipeline-mb", type=float,
                   help="also time the data pipeline on a text of this many MB")
    args = p.parse_args(argv)

    import numpy as np
    from d2lgru import data as d2data

    revs = {"before": args.before, "after": args.after}
    out = args.out or RESULTS / _machine.label(_machine.machine(), "cpu") / "ab.json"
    report = {"revisions": {k: _rev_parse(v or "HEAD") for k, v in revs.items()},
              "after_is_worktree": args.after is None, "threads": args.threads or "default",
              "rounds": args.rounds, "load_before": os.getloadavg(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="d2lgru-ab-") as tmp:
        workdir = Path(tmp)
        trees = {k: _tree(v, workdir) for k, v in revs.items()}
        ids, vocab = d2data.load_corpus(find_text(args.data), "char")
        np.save(workdir / "ids.npy", ids.astype(np.int64))
        base = {"case": "train",
                "config": {**_metrics.BOOK, "vocab": len(vocab)},
                "corpus_ids": str(workdir / "ids.npy"),
                "timing": {k: FULL[k] for k in ("repeats", "target_s", "warmup_batches",
                                                "max_batches")}}
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            python = interpreter(backend, args.tox_dir)
            if python is None:
                print(f"{backend}: no environment, skipped", flush=True)
                continue
            probes = {k: _case(python, t, {"case": "probe", "backend": backend}, args.threads,
                               workdir) for k, t in trees.items()}
            if any("error" in pr for pr in probes.values()):
                print(f"{backend}: probe failed, skipped", flush=True)
                continue
            for impl in probes["after"]["impls"]:
                modes = {k: pr["impls"].get(impl, {}).get("modes", [None])[0]
                         for k, pr in probes.items()}
                rates = {k: [] for k in revs}
                for _ in range(args.rounds):
                    for k in revs:
                        if modes[k] is None:
                            continue
                        r = _case(python, trees[k], {**base, "backend": backend, "impl": impl,
                                                     "mode": modes[k]}, args.threads, workdir)
                        if "error" not in r:
                            rates[k].append(r["tokens_per_s"]["median"])
                med = {k: statistics.median(v) if v else None for k, v in rates.items()}
                ratio = med["after"] / med["before"] if all(med.values()) else None
                report["rows"].append({"backend": backend, "impl": impl, "modes": modes,
                                       "tokens_per_s": rates, "median": med, "ratio": ratio})
                print(f"{backend:>10} {impl:>7} {modes['before'] or '-':>8} -> "
                      f"{modes['after'] or '-':<8} "
                      + " ".join(f"{med[k]:>9,.0f}" if med[k] else f"{'-':>9}" for k in revs)
                      + (f"  {ratio:.2f}x" if ratio else ""), flush=True)
        if args.pipeline_mb:
            report["pipeline"] = _pipeline(args, trees, workdir)
    report["load_after"] = os.getloadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(round_floats(report, 6), indent=1) + "\n")
    print(f"wrote {_machine.portable(out)}")
    return 0


def _pipeline(args, trees: dict, workdir: Path) -> dict | None:
    """The ``pipeline`` case (d2lgru's side) of each revision, alternated ``--rounds`` times."""
    python = interpreter("numpy", args.tox_dir)
    if python is None:
        print("pipeline: no numpy environment, skipped", flush=True)
        return None
    path = workdir / "pipeline.txt"
    path.write_bytes(corpus_text(find_text(args.data), int(args.pipeline_mb * 2 ** 20)))
    task = {"case": "pipeline", "impl": "d2lgru", "backend": "numpy", "path": str(path),
            "bytes": path.stat().st_size, "batch_size": 32, "num_steps": 35, "offset": None}
    runs = {k: [] for k in trees}
    for _ in range(args.rounds):
        for k, tree in trees.items():
            r = _case(python, tree, task, args.threads, workdir)
            if "error" not in r:
                runs[k].append({"total_s": r["total_s"], "tokenise_s": r["tokenise_s"],
                                "batch_s": r["batch_s"], "peak_rss_mb": r["peak_rss_mb"],
                                "corpus_sha256": r["corpus_sha256"]})
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("total_s", "peak_rss_mb")}
           if v else None for k, v in runs.items()}
    same = len({x["corpus_sha256"] for v in runs.values() for x in v}) == 1
    ratio = (med["before"]["total_s"] / med["after"]["total_s"]
             if med["before"] and med["after"] else None)
    print(f"  pipeline {args.pipeline_mb:g} MB: "
          + " ".join(f"{k} {m['total_s']:.3f} s ({m['peak_rss_mb']:,.0f} MB)"
                     for k, m in med.items() if m)
          + (f"  {ratio:.2f}x as fast" if ratio else "") + f"; same corpus: {same}", flush=True)
    return {"mb": args.pipeline_mb, "runs": runs, "median": med, "speedup": ratio,
            "same_corpus": same}


if __name__ == "__main__":
    sys.exit(main())
