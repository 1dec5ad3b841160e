"""Contention: one training alone, then two identical ones started together, per backend.

    python -m benchmarks.contention --backends numpy,torch,tensorflow [--seconds 6]
                                    [--repeats 2] [--settings policy,all-passive,old] [--quick]
                                    [--out DIR] [--tox-dir DIR] [--data DIR]

For each backend, in its own environment (found like ``benchmarks/all.py`` finds them), the
book's config (hidden 256, batch 32, 35 steps; the default impl and mode) trains for
``--seconds`` after one warm-up epoch, under two thread settings:

* ``policy``: d2lgru's defaults (d2lgru/threads.py: the policy's count, passive OpenMP waiting);
* ``all-passive``: one thread per CPU with d2lgru's passive waiting -- what the policy picks for
  torch on an idle machine, so this is the case of a second training that starts later;
* ``old``: the frameworks' old defaults -- one thread per CPU (``D2LGRU_THREADS``), GNU OpenMP
  spinning 300000 rounds before it sleeps (``GOMP_SPINCOUNT``, its default when
  ``OMP_WAIT_POLICY`` is unset) and Intel OpenMP's default 200 ms block time.

Each setting runs once alone, then twice at once (both trainings warm up, wait for each other,
then measure over the same seconds); the settings alternate, ``--repeats`` rounds, medians
kept. The report gives tokens/s and each contended run's ratio to the solo run: 0.5 means two
trainings share the machine without losing anything, the target is >= 0.4. Measurements, never
tests: note the machine's load (printed, and kept in the JSON). Writes ``contention.json`` into
``--out`` (default ``benchmarks/results/<machine-label>/``), where ``benchmarks.compare`` puts it
into ``results.md``; a run of some backends keeps the other backends' rows of an earlier run
with the same settings (each row says when it was made). ``benchmarks.all`` runs it after the
per-backend runs. Run it from the
repository root as ``python -m``; standard library only in this process.
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
from benchmarks.all import can_import, interpreter
from benchmarks.run import BACKENDS, RESULTS, write_result
from d2lgru.backends import framework_of

REPO = _machine.REPO
FORMAT = "d2lgru.Contention/1"
SETTINGS = ("policy", "all-passive", "old")
TARGET = 0.4  # issue #20: each of two trainings at once >= 0.4x one alone
QUICK = {"seconds": 1.0, "repeats": 1, "settings": "policy"}  # a smoke run: not measurements


def old_defaults_env(cpus: int) -> dict:
    """What the frameworks did before d2lgru chose: a thread per CPU, spinning waits."""
    return {"D2LGRU_THREADS": str(cpus), "GOMP_SPINCOUNT": "300000", "KMP_BLOCKTIME": "200",
            "MXNET_OMP_MAX_THREADS": str(cpus)}


# -- one training (runs in the backend's own environment) --------------------------------------
def worker(backend: str, seconds: float, barrier: Path, peers: int, data: str | None) -> dict:
    import d2lgru
    from d2lgru.data import load_data_time_machine
    from d2lgru.model import init_lm

    be = d2lgru.get_backend(backend)
    loader, vocab = load_data_time_machine(32, 35, False, 10000, path=data)
    trainer = be.make_trainer(init_lm(len(vocab), 256, seed=0))
    loader.set_epoch(0)
    batches = list(loader)
    tokens_per_epoch = sum(X.size for X, _ in batches)
    trainer.train_epoch(batches)  # warm-up: compilation, first-touch allocations
    barrier.joinpath(f"ready-{os.getpid()}").touch()
    while len(list(barrier.glob("ready-*"))) < peers:
        time.sleep(0.01)
    epochs, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < seconds:
        trainer.train_epoch(batches)
        epochs += 1
    elapsed = time.perf_counter() - tic
    return {"tokens_per_sec": epochs * tokens_per_epoch / elapsed, "epochs": epochs,
            "threads": be.threads, "threads_source": be.threads_source,
            "impl": trainer.impl, "mode": trainer.mode,
            # the user's, else PASSIVE where the adapter gave it to its framework as it loaded
            # (and took the variable back after)
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")
            or ("PASSIVE" if be.waits_passively else None)}


# -- the driver ------------------------------------------------------------------------------
def run_together(python: Path, backend: str, setting: str, copies: int, args) -> list[dict]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("D2LGRU_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cpus = _machine.machine()["cpus_usable"]
    if setting == "all-passive":
        env.update(D2LGRU_THREADS=str(cpus), MXNET_OMP_MAX_THREADS=str(cpus))
    elif setting == "old":
        env.update(old_defaults_env(cpus))
    with tempfile.TemporaryDirectory(prefix="d2lgru-contention-") as barrier:
        cmd = [str(python), "-m", "benchmarks.contention", "--worker", backend,
               "--seconds", str(args.seconds), "--barrier", barrier, "--peers", str(copies)]
        if args.data:
            cmd += ["--data", args.data]
        procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  preexec_fn=_machine.dies_with_parent())
                 for _ in range(copies)]
        results = []
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"{backend} ({setting}) worker failed:\n{err[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def measure(python: Path, backend: str, args) -> dict:
    """Every setting's solo run and pair, alternated ``--repeats`` times (so a change in the
    machine's load hits every setting alike); the medians are reported."""
    runs = {setting: {"solo": [], "pair": []} for setting in args.settings}
    row = {"backend": backend}
    for _ in range(args.repeats):
        for setting in args.settings:
            solo = run_together(python, backend, setting, 1, args)[0]
            pair = run_together(python, backend, setting, 2, args)
            runs[setting]["solo"].append(solo["tokens_per_sec"])
            runs[setting]["pair"].append(sorted(r["tokens_per_sec"] for r in pair))
            row[setting] = {"threads": solo["threads"], "threads_source": solo["threads_source"],
                            "omp_wait_policy": solo["omp_wait_policy"]}
            row["impl"], row["mode"] = solo["impl"], solo["mode"]
            print(f"  {backend} {setting}: solo {solo['tokens_per_sec']:,.0f} tokens/s "
                  f"({solo['threads']} thread(s), {solo['threads_source']}); two at once "
                  + ", ".join(f"{r['tokens_per_sec']:,.0f}" for r in pair), flush=True)
    for setting, r in runs.items():
        solo = statistics.median(r["solo"])
        pair = [statistics.median(p[i] for p in r["pair"]) for i in range(2)]
        row[setting].update(solo=solo, pair=pair, ratio=[x / solo for x in pair], runs=r)
    return row


def table(report: dict) -> list[str]:
    """Per backend and setting: threads, solo tokens/s, each of the two at once, their ratios,
    and whether both reach :data:`TARGET` (``benchmarks.compare`` puts it into results.md)."""
    lines = ["| backend | impl/mode | setting | threads | solo tokens/s | two at once, "
             f"tokens/s each | ratio | ≥ {TARGET} |", "|---|---|---|---|--:|--:|--:|---|"]
    for row in report["rows"]:
        for setting in report["settings"]:
            r = row[setting]
            lines.append(f"| {row['backend']} | {row['impl']}/{row['mode']} | {setting} | "
                         f"{r['threads']} ({r['threads_source']}) | {r['solo']:,.0f} | "
                         f"{' / '.join(f'{x:,.0f}' for x in r['pair'])} | "
                         f"{' / '.join(f'{x:.2f}' for x in r['ratio'])} | "
                         f"{'met' if min(r['ratio']) >= TARGET else '**missed**'} |")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    return lines


def describe(report: dict) -> str:
    """What the table measured, in one paragraph."""
    return (f"The book's config (hidden 256, batch 32, 35 steps), default impl and mode, "
            f"trained {report['seconds']:g} s alone and then twice at once (two processes, "
            f"measured over the same seconds) after a warm-up epoch; medians of "
            f"{report['repeats']} alternated round(s) on {report['label']}"
            f"{' (a --quick smoke run: not measurements)' if report.get('quick') else ''}. "
            f"*Ratio*: each of the two contended runs' tokens/s over the solo run's (0.5: the "
            f"two share the machine without loss); target ≥ {TARGET}. Thread settings: *policy* "
            f"is d2lgru's default (`d2lgru/threads.py`), *all-passive* one thread per CPU with "
            f"passive waiting, *old* the frameworks' old defaults (a thread per CPU, spinning "
            f"waits). Load average before / after: {report['load_before']} / "
            f"{report.get('load_after')} on {report['cpus']} CPU(s).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.contention",
                                description=__doc__.split("\n")[0])
    p.add_argument("--backends", default="numpy,torch,tensorflow",
                   help=f"comma-separated (known: {', '.join(BACKENDS)})")
    p.add_argument("--seconds", type=float, help="measured seconds per training (default 6)")
    p.add_argument("--repeats", type=int,
                   help="rounds of every setting, alternated (default 2; medians reported)")
    p.add_argument("--settings", help=f"comma-separated, of {', '.join(SETTINGS)} (default all)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK['seconds']:g} s, {QUICK['repeats']} round, "
                        f"{QUICK['settings']} only (each unless given)")
    p.add_argument("--out", help="results folder (default benchmarks/results/<machine-label>, "
                                 "<machine-label>-quick with --quick)")
    p.add_argument("--label", help="machine label (default: from the CPU model and count)")
    p.add_argument("--tox-dir", type=Path, help="where the per-backend environments are "
                   "(default .tox here)")
    p.add_argument("--data", default=os.environ.get("D2LGRU_DATA_DIR"),
                   help="the book's text (default $D2LGRU_DATA_DIR)")
    p.add_argument("--worker", metavar="BACKEND", help=argparse.SUPPRESS)
    p.add_argument("--barrier", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--peers", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else {"seconds": 6.0, "repeats": 2,
                                         "settings": ",".join(SETTINGS)}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for setting in args.settings:
        if setting not in SETTINGS:
            p.error(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
    if args.worker:
        print(json.dumps(worker(args.worker, args.seconds, args.barrier, args.peers, args.data)))
        return 0

    info = _machine.machine()
    label = args.label or _machine.label(info)
    out = Path(args.out) if args.out else RESULTS / (label + ("-quick" if args.quick else ""))
    report = {"format": FORMAT, "label": label, "quick": args.quick, "machine": info,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "seconds": args.seconds, "cpus": info["cpus_usable"],
              "settings": args.settings, "repeats": args.repeats,
              "load_before": [round(x, 2) for x in os.getloadavg()], "rows": [], "skipped": []}
    print(f"load average {report['load_before']} on {report['cpus']} CPU(s)", flush=True)
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in BACKENDS:
            p.error(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        python = interpreter(backend, args.tox_dir)
        if python is None or not can_import(python, framework_of(backend)):
            report["skipped"].append(f"{backend}: no environment that imports it")
            continue
        row = measure(python, backend, args)
        row["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        report["rows"].append(row)
    report["load_after"] = [round(x, 2) for x in os.getloadavg()]
    out.mkdir(parents=True, exist_ok=True)
    kept = _earlier_rows(out / "contention.json", report)
    if kept:
        report["rows"] = sorted(report["rows"] + kept, key=lambda r: _order(r["backend"]))
    write_result(out / "contention.json", report)
    print("\n".join([describe(report), ""] + table(report)))
    print(f"wrote {out / 'contention.json'}")
    return 0


def _order(backend: str) -> int:
    return BACKENDS.index(backend) if backend in BACKENDS else len(BACKENDS)


def _earlier_rows(path: Path, report: dict) -> list[dict]:
    """The rows of an earlier run in ``path`` for backends this run did not measure, with the
    same settings and seconds (one entry per backend: a later run of a backend replaces it)."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    measured = {r["backend"] for r in report["rows"]}
    if (earlier.get("quick") != report["quick"] or earlier.get("seconds") != report["seconds"]
            or earlier.get("settings") != report["settings"]):
        dropped = sorted({r.get("backend") for r in earlier.get("rows", [])} - measured)
        if dropped:
            print(f"note: {path} held rows of {', '.join(dropped)} measured with other settings "
                  f"(settings {','.join(earlier.get('settings') or [])}, {earlier.get('seconds')} s"
                  f"{', quick' if earlier.get('quick') else ''}); they are replaced, not merged: "
                  "rerun with those settings to keep them", file=sys.stderr)
        return []
    return [{"created": earlier.get("created"), **r} for r in earlier.get("rows", [])
            if r.get("backend") not in measured]


if __name__ == "__main__":
    sys.exit(main())
