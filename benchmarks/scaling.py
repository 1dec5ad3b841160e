"""Scaling: data-parallel training's tokens/s at W=1 and W=2 workers, one thread each.

    python -m benchmarks.scaling --backends torch,tensorflow --out DIR [--hidden 256,1024]
                                 [--nproc 1,2] [--epochs 12] [--warmup 2] [--tox-dir DIR]
                                 [--data DIR]

Each case is one ``d2lgru train --nproc W --threads 1`` (``--nproc`` omitted at W=1) in the
backend's own environment (found like ``benchmarks/all.py`` finds it), at the book's config
(batch 32, 35 steps, 10000 tokens; the default impl and mode) with the hidden size of the case,
into a temporary directory; its ``result.json`` history gives each epoch's tokens/s (every
worker's tokens over rank 0's epoch time). The first ``--warmup`` epochs (compilation,
first-touch allocations, the workers meeting) are dropped and the median of the rest is kept.
Writes ``DIR/scaling.json`` (one entry per backend, replacing that backend's entry of an earlier
run): the machine, its load before and after, every case, the speed-up of W=2 over W=1 per hidden
size, and what a step all-reduces (the trained parameters' float32 bytes) beside the step's time
at W=1 and W=2, from which ``benchmarks.compare`` estimates larger worlds. A measurement, never a test: 2 workers on a
2-core machine that other jobs share measure the load as much as the scaling.

This process imports the standard library, NumPy and d2lgru's registry and model only; the
framework runs in the cases' subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _machine
from benchmarks.all import interpreter
from benchmarks.run import write_result
from d2lgru.backends import BACKENDS  # the registry: no framework imported

FORMAT = "d2lgru.Scaling/1"
BATCH, STEPS = 32, 35


def grad_bytes(vocab: int, hidden: int, reset_after: bool) -> int:
    """float32 bytes of the book's one-layer model's trained parameters (``model.trained``):
    what every step all-reduces."""
    from d2lgru.model import init_lm, trained
    model = init_lm(vocab, hidden, reset_after=reset_after)
    keep = trained(model.spec)
    return 4 * sum(a.size for k, a in model.to_arrays().items() if k in keep)

REPO = _machine.REPO


def run_case(python: Path, backend: str, hidden: int, nproc: int, args) -> dict:
    """One training; raises RuntimeError with its stderr's tail when it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("D2LGRU_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="d2lgru-scaling-") as tmp:
        out = Path(tmp) / "run"
        cmd = [str(python), "-m", "d2lgru", "train", "--backend", backend, "--threads", "1",
               "--hidden", str(hidden), "--epochs", str(args.epochs), "--out", str(out),
               "--quiet"]
        if nproc > 1:
            cmd += ["--nproc", str(nproc)]
        if args.data:
            cmd += ["--data", args.data]
        tic = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=args.timeout, preexec_fn=_machine.dies_with_parent())
        wall = time.perf_counter() - tic
        if proc.returncode != 0:
            raise RuntimeError(f"{backend} H={hidden} W={nproc} failed (status "
                               f"{proc.returncode}): {proc.stderr[-1500:]}")
        result = json.loads((out / "result.json").read_text())
        state = json.loads((out / "state.json").read_text())
        history, config = state["history"], state["config"]
        vocab = len(json.loads((out / "vocab.json").read_text())["idx_to_token"])
    speeds = [h["tokens_per_sec"] for h in history[args.warmup:]]
    speed = statistics.median(speeds)
    return {"hidden": hidden, "nproc": nproc, "threads_per_worker": result["threads"],
            "impl": result["impl"], "mode": result["mode"],
            "tokens_per_sec": round(speed, 1),
            "step_ms": round(1000 * BATCH * STEPS / speed, 3),
            "allreduce_bytes": grad_bytes(vocab, hidden, bool(config.get("reset_after"))),
            "tokens_per_sec_epochs": [round(s, 1) for s in speeds],
            "perplexity": round(result["perplexity"], 3), "wall_s": round(wall, 1)}


def measure(backend: str, args) -> dict:
    """Every case of one backend, in its environment."""
    python = interpreter(backend, args.tox_dir)
    if python is None:
        raise RuntimeError(f"no environment for {backend} under {args.tox_dir or REPO / '.tox'}")
    hiddens = [int(h) for h in args.hidden.split(",") if h.strip()]
    nprocs = [int(w) for w in args.nproc.split(",") if w.strip()]
    report = {"epochs": args.epochs, "warmup": args.warmup,
              "config": f"batch {BATCH}, {STEPS} steps, max-tokens 10000, default impl and mode",
              "load_before": [round(x, 2) for x in os.getloadavg()], "cases": []}
    for hidden in hiddens:
        for nproc in nprocs:
            case = run_case(python, backend, hidden, nproc, args)
            report["cases"].append(case)
            print(f"{backend} H={hidden} W={nproc}: {case['tokens_per_sec']:,.0f} tokens/s "
                  f"({case['impl']}/{case['mode']}, {case['threads_per_worker']} thread(s) per "
                  f"worker)", flush=True)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    speed = {(c["hidden"], c["nproc"]): c["tokens_per_sec"] for c in report["cases"]}
    report["speedup"] = {str(h): {str(w): round(speed[h, w] / speed[h, nprocs[0]], 3)
                                  for w in nprocs} for h in hiddens}
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling",
                                description=__doc__.split("\n")[0])
    p.add_argument("--backends", "--backend", required=True,
                   help=f"comma-separated, of {', '.join(BACKENDS)}")
    p.add_argument("--out", required=True, help="the folder of scaling.json")
    p.add_argument("--hidden", default="256,1024", help="hidden sizes (default 256,1024)")
    p.add_argument("--nproc", default="1,2", help="worker counts (default 1,2)")
    p.add_argument("--epochs", type=int, default=12, help="epochs per case (default 12)")
    p.add_argument("--warmup", type=int, default=2, help="first epochs left out (default 2)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case (1800)")
    p.add_argument("--tox-dir", type=Path, help="where the per-backend environments are "
                   "(default .tox here)")
    p.add_argument("--data", default=os.environ.get("D2LGRU_DATA_DIR"),
                   help="the book's text (default $D2LGRU_DATA_DIR)")
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in BACKENDS:
            p.error(f"unknown backend {b!r}; valid: {', '.join(BACKENDS)}")
    if not 0 <= args.warmup < args.epochs:
        p.error(f"--warmup must be below --epochs ({args.epochs}), got {args.warmup}")
    out = Path(args.out)
    path = out / "scaling.json"
    info = _machine.machine()
    doc = {"format": FORMAT, "label": _machine.label(info), "cpus": info["cpus_usable"],
           "backends": {}}
    if path.exists():
        doc["backends"] = json.loads(path.read_text()).get("backends", {})
    failed = []
    for backend in backends:
        try:
            doc["backends"][backend] = measure(backend, args)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failed.append(backend)
            print(f"{backend}: {exc}", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_result(path, doc)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
