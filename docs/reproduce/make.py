"""Rerun the chapter's experiment on every installed backend and rebuild this folder's table.

    python -m docs.reproduce.make [--out DIR] [--backends numpy,torch] [--seeds 0-4] [--jobs 2]
                                [--no-exercises] [--no-book]

Each run is ``d2lgru reproduce --backend B --impl I --seed S`` (the book's config, 500 epochs, the
impl's default mode) in the environment that holds B's framework (``.venv`` or ``.tox/numpy`` for
numpy, ``.tox/<name>`` for the others, as ``tox -e <name> --notest`` builds them), run as
``python -m`` from the repository root so that this checkout's ``d2lgru`` is the one imported, for
every seed in ``--seeds``: a chaotic run's last epoch can land in one of SGD's late loss spikes,
so each row of the table stands on several seeds. Seed 0's runs go one at a time with the
frameworks' default threads (the table's tokens/s and predictions are theirs); the other seeds run
``--jobs`` at a time with one thread each (``OMP_NUM_THREADS=1``). The book's exercises (``--cell
rnn``, ``--gates reset-only``, ``--gates update-only``) run on numpy and torch. Then the book's own
code for seeds 0-9 (``docs.reproduce.book`` in torch's environment, two runs at a time: the
reference for how runs end), and ``d2lgru reproduce --collect`` writes ``results.md``,
``perplexity.png`` and ``runs.json.gz`` (the runs already recorded there, replaced by this run's
of the same name). Run it on a quiet machine: the table reports tokens/s. About three hours here.
Needs d2lgru's registry (numpy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.all import can_import, interpreter
from d2lgru.backends import BACKENDS
from docs.reproduce.book import parse_seeds

REPO = Path(__file__).resolve().parents[2]

EXERCISES = (("--cell", "rnn"), ("--gates", "reset-only"), ("--gates", "update-only"))
EXERCISE_BACKENDS = ("numpy", "torch")


def declared_impls(python, backend: str) -> list[str] | None:
    """The impls ``backend`` declares, as d2lgru reports them in the environment of ``python``
    (None: that environment cannot load the backend)."""
    proc = subprocess.run([str(python), "-m", "d2lgru.cli", "backends", "--json"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        return None
    row = next((r for r in json.loads(proc.stdout) if r["name"] == backend), {})
    return list(row["impls"]) if row.get("installed") else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m docs.reproduce.make",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "reproduce"),
                   help="runs go to OUT/<backend>-<impl>[-<exercise>]/ (default: this folder)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    p.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3 (default 0-4)")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs at once for the seeds other than 0, one thread each (2)")
    p.add_argument("--no-exercises", action="store_true", help="only the GRU rows")
    p.add_argument("--no-book", action="store_true",
                   help="skip the book's own code (book.py, seeds 0-9, needs torch)")
    p.add_argument("--data", default=os.environ.get("D2LGRU_DATA_DIR", str(REPO.parent / "shared" / "data")),
                   help="The Time Machine (file or directory)")
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError:
        p.error(f"--seeds takes numbers and ranges like 0-4 or 0,3, got {args.seeds!r}")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    for b in backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}; valid: {', '.join(BACKENDS)}")

    env = dict(os.environ)  # every command runs as `python -m` in REPO: the checkout's d2lgru
    runs, failed = [], []
    for b in backends:
        python = interpreter(b)
        impls = None if python is None else declared_impls(python, b)
        if not impls:
            failed.append(f"{b}: no environment that imports it (build it with `tox -e {b} --notest`)")
            continue
        runs += [(b, python, ["--impl", impl]) for impl in impls]
        if b in EXERCISE_BACKENDS and not args.no_exercises:
            runs += [(b, python, ["--impl", "scratch", *ex]) for ex in EXERCISES]
    # the GRU rows before the exercises, MindSpore (the slowest) first among them
    runs.sort(key=lambda run: (len(run[2]) > 2, run[0] != "mindspore"))

    def one(b, python, extra, seed, threads=None):
        cmd = [str(python), "-m", "d2lgru.cli", "reproduce", "--backend", b, *extra,
               "--seed", str(seed), "--data", args.data, "--out", args.out, "--quiet",
               "--resume"]  # a rerun continues unfinished runs and keeps finished ones
        print(f"== {' '.join(cmd[1:])}", flush=True)
        tic = time.perf_counter()
        run_env = env if threads is None else dict(env, OMP_NUM_THREADS=str(threads))
        status = subprocess.run(cmd, cwd=REPO, env=run_env).returncode
        print(f"== {'done' if status == 0 else f'FAILED (status {status})'} in "
              f"{(time.perf_counter() - tic) / 60:.1f} min: {b} {' '.join(extra)} seed {seed}",
              flush=True)
        if status:
            failed.append(f"{b} {' '.join(extra)} seed {seed}: status {status}")

    if 0 in seeds:
        for b, python, extra in runs:
            one(b, python, extra, 0)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        later = sorted(((run, seed) for seed in seeds if seed for run in runs),
                       key=lambda job: (len(job[0][2]) > 2, job[1], job[0][0] != "mindspore"))
        for future in [pool.submit(one, *run, seed, 1) for run, seed in later]:
            future.result()
    if not args.no_book:
        python = interpreter("torch")
        if python is None or not can_import(python, "torch"):
            failed.append("the book's own code: no environment that imports torch "
                          "(build it with `tox -e torch --notest`)")
        else:
            cmd = [str(python), "-m", "docs.reproduce.book", "--seeds", "0-9",
                   "--data", args.data, "--out", args.out]
            print(f"== {' '.join(cmd[1:])}", flush=True)
            if subprocess.run(cmd, cwd=REPO, env=env).returncode:
                failed.append("the book's own code (docs.reproduce.book) failed")
    collector = interpreter("numpy") or Path(sys.executable)
    status = subprocess.run([str(collector), "-m", "d2lgru.cli", "reproduce", "--collect", args.out],
                            cwd=REPO, env=env).returncode
    for note in failed:
        print(f"failed or skipped: {note}")
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
