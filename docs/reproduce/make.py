"""Rerun the chapter's experiment on every installed backend and rebuild this folder's table.

    python docs/reproduce/make.py [--out DIR] [--backends numpy,torch] [--no-exercises] [--no-book]

Each run is ``d2lgru reproduce --backend B --impl I`` (the book's config, seed 0, 500 epochs, the
impl's default mode) in the environment that holds B's framework (``.venv`` or ``.tox/numpy`` for
numpy, ``.tox/<name>`` for the others, as ``tox -e <name> --notest`` builds them), one run at a
time, with this checkout's ``d2lgru`` first on the path. Then the book's exercises (``--cell rnn``,
``--gates reset-only``, ``--gates update-only``) on numpy and torch, then the book's own code for
seeds 0-9 (``book.py`` in torch's environment, two runs at a time: the reference for how runs
end), and ``d2lgru reproduce --collect`` writes ``results.md`` and ``perplexity.png``. Run it on
a quiet machine: the table reports tokens/s. About 50 minutes here. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.all import can_import, interpreter  # noqa: E402

BACKENDS = ("numpy", "torch", "tensorflow", "mxnet", "paddle", "mindspore")
IMPLS = {"numpy": ("scratch",)}
EXERCISES = (("--cell", "rnn"), ("--gates", "reset-only"), ("--gates", "update-only"))
EXERCISE_BACKENDS = ("numpy", "torch")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python docs/reproduce/make.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(REPO / "docs" / "reproduce"),
                   help="runs go to OUT/<backend>-<impl>[-<exercise>]/ (default: this folder)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    p.add_argument("--no-exercises", action="store_true", help="only the GRU rows")
    p.add_argument("--no-book", action="store_true",
                   help="skip the book's own code (book.py, seeds 0-9, needs torch)")
    p.add_argument("--data", default=os.environ.get("D2LGRU_DATA_DIR", str(REPO.parent / "shared" / "data")),
                   help="The Time Machine (file or directory)")
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}; valid: {', '.join(BACKENDS)}")

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    runs, failed = [], []
    for b in backends:
        python = interpreter(b)
        if python is None or not can_import(python, b):
            failed.append(f"{b}: no environment that imports it (build it with `tox -e {b} --notest`)")
            continue
        for impl in IMPLS.get(b, ("scratch", "native")):
            runs.append((b, python, ["--impl", impl]))
        if b in EXERCISE_BACKENDS and not args.no_exercises:
            runs += [(b, python, ["--impl", "scratch", *ex]) for ex in EXERCISES]
    for b, python, extra in runs:
        cmd = [str(python), "-m", "d2lgru.cli", "reproduce", "--backend", b, *extra,
               "--data", args.data, "--out", args.out, "--quiet"]
        print(f"== {' '.join(cmd[1:])}", flush=True)
        tic = time.perf_counter()
        status = subprocess.run(cmd, cwd=REPO, env=env).returncode
        print(f"== {'done' if status == 0 else f'FAILED (status {status})'} in "
              f"{(time.perf_counter() - tic) / 60:.1f} min", flush=True)
        if status:
            failed.append(f"{b} {' '.join(extra)}: status {status}")
    if not args.no_book:
        python = interpreter("torch")
        if python is None or not can_import(python, "torch"):
            failed.append("the book's own code: no environment that imports torch "
                          "(build it with `tox -e torch --notest`)")
        else:
            cmd = [str(python), str(Path(__file__).with_name("book.py")), "--seeds", "0-9",
                   "--data", args.data, "--out", args.out]
            print(f"== {' '.join(cmd[1:])}", flush=True)
            if subprocess.run(cmd, cwd=REPO, env=env).returncode:
                failed.append("the book's own code (book.py) failed")
    collector = interpreter("numpy") or Path(sys.executable)
    status = subprocess.run([str(collector), "-m", "d2lgru.cli", "reproduce", "--collect", args.out],
                            cwd=REPO, env=env).returncode
    for note in failed:
        print(f"failed or skipped: {note}")
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
