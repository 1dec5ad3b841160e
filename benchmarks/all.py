"""Benchmark every installed backend, one after the other, then write the report and charts.

    python -m benchmarks.all [--quick] [--device gpu] [--backends numpy,torch] [--out DIR]
                             [--tox-dir DIR] [--no-contention] [--no-scaling]
                             [-- any benchmarks.run option, e.g. --threads 2 --skip sweep]

Each backend runs in its own environment: ``.venv`` (or ``.tox/numpy``) for numpy and
``.tox/<name>`` for the others, as ``tox -e <name>`` builds them. A backend whose environment is
missing is skipped with a note. Results go to ``benchmarks/results/<machine-label>/`` (quick runs:
``<machine-label>-quick``), with ``limits.py``'s figures inside each (key ``limits``; CPU runs,
``--quick`` ones small); then, on CPU, ``contention.py`` for every backend that ran (one training
alone against two at once, ``contention.json``) and ``scaling.py`` for those that train
data-parallel (W=1 and 2 workers, ``scaling.json``); then ``compare.py`` turns every result
there into ``results.md``, ``throughput.png`` and ``sweep.png``. Run it from the repository root with any Python that
imports numpy (d2lgru's registry names the backends); every step runs as ``python -m`` there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _machine
from benchmarks.run import RESULTS
from d2lgru.backends import BACKENDS, framework_of

REPO = _machine.REPO


def interpreter(backend: str, tox_dir: Path | None = None) -> Path | None:
    """The Python of the environment that holds ``backend``'s framework, or None; ``tox_dir``:
    where tox built them (default ``.tox`` here; a git worktree can point at the main copy's)."""
    # absolute: the workers run in other folders, where a relative path names nothing
    tox_dir = REPO / ".tox" if tox_dir is None else Path(tox_dir).resolve()
    if backend == "numpy":
        candidates = [REPO / ".venv", tox_dir / "numpy"]
    else:
        candidates = [tox_dir / backend]
    for env in candidates:
        for name in ("bin/python", "Scripts/python.exe"):
            if (env / name).exists():
                return env / name
    return None


def can_import(python: Path, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                          cwd="/").returncode == 0


def trains_data_parallel(python: Path, backend: str) -> bool:
    """Whether ``backend`` declares data-parallel training in the environment of ``python``."""
    proc = subprocess.run([str(python), "-m", "d2lgru", "backends", "--json"], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        return False
    row = next((r for r in json.loads(proc.stdout) if r["name"] == backend), {})
    return bool(row.get("distributed", {}).get("supported"))


def _step(cmd: list[str]) -> int:
    """Run one step in the checkout; its exit status. It ends with this driver (see
    :func:`benchmarks._machine.dies_with_parent`)."""
    return subprocess.run(cmd, cwd=REPO, preexec_fn=_machine.dies_with_parent()).returncode


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run (see run.py --quick)")
    p.add_argument("--device", default="cpu", help="cpu (default) or gpu")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated, in this order (default: every registered backend)")
    p.add_argument("--out", help="results folder (default benchmarks/results/<machine-label>)")
    p.add_argument("--label", help="machine label (default: from the CPU model, CPUs and GPU)")
    p.add_argument("--tox-dir", type=Path, help="where the per-backend environments are "
                   "(default .tox here; a git worktree can point at the main copy's)")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip scaling.py (W=1 and 2 workers) after the per-backend runs")
    p.add_argument("--no-contention", action="store_true",
                   help="skip contention.py (two trainings at once) after the per-backend runs")
    p.add_argument("--no-compare", action="store_true", help="only write the JSON files")
    args = p.parse_args(argv)

    label = args.label or _machine.label(_machine.machine(), args.device)
    out = Path(args.out) if args.out else RESULTS / (label + ("-quick" if args.quick else ""))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in BACKENDS:
            p.error(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    ran, skipped = [], []
    for backend in backends:
        python = interpreter(backend, args.tox_dir)
        if python is None:
            env = ".venv or .tox/numpy" if backend == "numpy" else f".tox/{backend}"
            skipped.append(f"{backend}: no environment ({env}); build it with "
                           f"`tox -e {backend} --notest`")
            continue
        if not can_import(python, framework_of(backend)):
            skipped.append(f"{backend}: {python} cannot import its framework")
            continue
        cmd = [str(python), "-m", "benchmarks.run", "--backend", backend,
               "--out", str(out), "--label", label, "--device", args.device, *passthrough]
        if args.quick:
            cmd.append("--quick")
        print(f"== {backend}: {' '.join(cmd)}", flush=True)
        tic = time.perf_counter()
        status = _step(cmd)
        if status == 0 and args.device == "cpu":  # what bounds the speed
            status = _step([str(python), "-m", "benchmarks.limits", "--backend", backend,
                            "--out", str(out), *(["--quick"] if args.quick else [])])
        print(f"== {backend}: {'done' if status == 0 else f'FAILED (status {status})'} in "
              f"{(time.perf_counter() - tic) / 60:.1f} min", flush=True)
        (ran if status == 0 else skipped).append(backend if status == 0 else
                                                  f"{backend}: run.py failed (status {status})")
    for note in skipped:
        print(f"skipped {note}")
    if ran and args.device == "cpu" and not args.no_contention:
        cmd = [sys.executable, "-m", "benchmarks.contention", "--backends", ",".join(ran),
               "--out", str(out), "--label", label, *(["--quick"] if args.quick else []),
               *(["--tox-dir", str(args.tox_dir)] if args.tox_dir else [])]
        print(f"== contention: {' '.join(cmd)}", flush=True)
        if _step(cmd) != 0:
            print("skipped contention: contention.py failed", flush=True)
    parallel = [b for b in ran if trains_data_parallel(interpreter(b, args.tox_dir), b)]
    if parallel and args.device == "cpu" and not args.no_scaling:
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--backends", ",".join(parallel),
               "--out", str(out), *(["--tox-dir", str(args.tox_dir)] if args.tox_dir else []),
               *(["--hidden", "32", "--epochs", "3", "--warmup", "1"] if args.quick else [])]
        print(f"== scaling: {' '.join(cmd)}", flush=True)
        if _step(cmd) != 0:
            print("scaling: a backend failed (see above)", flush=True)
    if args.no_compare or not ran:
        return 0 if ran else 1
    compare_python = sys.executable
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        compare_python = str(interpreter("numpy", args.tox_dir) or sys.executable)
    return _step([compare_python, "-m", "benchmarks.compare", str(out)])


if __name__ == "__main__":
    sys.exit(main())
