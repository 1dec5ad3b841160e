"""Benchmark one d2lgru backend in the environment that holds its framework; write one JSON file.

    python -m benchmarks.run --backend torch [--quick] [--out DIR] [--device cpu|gpu]

Run it from the repository root with the environment's interpreter (``.venv/bin/python`` for numpy,
``.tox/<name>/bin/python`` for the others); ``python -m benchmarks.all`` does that for every
backend. ``-m`` puts the repository first on the path, so the checkout's d2lgru is benchmarked (its
commit is recorded), not a copy installed in the environment.

Every case runs in its own worker process (fresh interpreter: its own peak RSS, no framework state
shared between cases), sequentially, and every figure is min / median / max over repeats after
warm-up. At the book's configuration the cases run in ``--rounds`` interleaved rounds (see
:func:`run_rounds`), so that ratios between them are taken side by side. What is measured, for every impl x execution mode the backend declares:

* training throughput (tokens/s of whole steps: forward, loss, backward, clipping, SGD) through
  ``backend.make_trainer(...).train_epoch(batches)``, at the book's configuration (vocab 28,
  hidden 256, batch 32, 35 steps) and one axis at a time around it (hidden 64/1024, batch 1/256,
  140 steps), on sequentially partitioned batches of The Time Machine;
* forward latency of ``backend.gru`` (T=35, input 28, hidden 256) at batch 1 and 32;
* the same training step written bare against the framework (``benchmarks/bare/<name>.py``), in
  every mode it has, at the book's configuration (``--bare-sweep``: the sweep too);
* the alternatives a user would pick, at the book's configuration: Keras 3 on the run's
  framework (``benchmarks/bare/keras3.py``, where keras imports; ``--keras-only jax`` for an
  environment with no d2lgru backend) and, in the torch run, the book's own PyTorch code
  (``docs/reproduce/book.py``);
* a large float32 GEMM with NumPy and with the framework (the machine's FLOP limit);
* the data pipeline (numpy run only, or ``--pipeline``): d2lgru.data against the book's
  per-character Python on a generated corpus of ``--pipeline-mb`` MB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _machine, _metrics  # standard library only
from benchmarks.bare import KERAS_BACKENDS, KERAS_MODES  # no keras imported
from d2lgru._io import round_floats, write_atomic
from d2lgru.backends import BACKENDS  # the registry: no framework imported

FORMAT = "d2lgru.Benchmark/1"
RESULTS = _machine.REPO / "benchmarks" / "results"
LATENCY = ({"input": 28, "hidden": 256, "num_steps": 35, "batch_size": 1},
           {"input": 28, "hidden": 256, "num_steps": 35, "batch_size": 32})
PARTS = ("train", "sweep", "latency", "bare", "gemm", "pipeline", "keras", "book")


def write_result(path: Path, record: dict) -> Path:
    """``record`` as compact JSON, floats to 8 significant digits, written whole (a temporary
    file renamed over ``path``): the one format of every file in a results folder, which a
    committed snapshot counts against the repository's size."""
    text = json.dumps(round_floats(record, 8), separators=(",", ":")) + "\n"
    return write_atomic(path, lambda f: f.write(text), "w")

FULL = {"repeats": 6, "rounds": 3, "target_s": 1.0, "warmup_batches": 2, "max_batches": 1000, "gemm_n": 4096,
        "latency_s": 1.0, "latency_min_calls": 10, "latency_max_calls": 5000, "timeout_s": 1800}
QUICK = {"repeats": 2, "rounds": 1, "target_s": 0.0, "warmup_batches": 2, "max_batches": 2, "gemm_n": 512,
         "latency_s": 0.0, "latency_min_calls": 3, "latency_max_calls": 3, "timeout_s": 900}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    # a worker of a --keras-only run gets the Keras backend's name (e.g. jax)
    p.add_argument("--backend", choices=tuple(dict.fromkeys((*BACKENDS, *KERAS_BACKENDS))),
                   help="a d2lgru backend; required unless --keras-only")
    p.add_argument("--keras-backend", choices=KERAS_BACKENDS,
                   help="KERAS_BACKEND of the Keras 3 rows (default: the run's backend, where "
                        "Keras has it)")
    p.add_argument("--keras-only", choices=KERAS_BACKENDS,
                   help="only the Keras 3 rows on this backend, into <name>.json (for an "
                        "environment with no d2lgru backend, e.g. jax)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 2 repeats of 2 batches, small GEMM and corpus (figures "
                        "are not measurements); default --out benchmarks/results/<label>-quick")
    p.add_argument("--out", help="directory for <backend>.json (default benchmarks/results/<label>)")
    p.add_argument("--label", help="machine label (default: from the CPU model, CPUs and GPU)")
    p.add_argument("--device", default="cpu", help="cpu (default) or gpu / cuda")
    p.add_argument("--threads", type=int,
                   help="threads for NumPy's BLAS and the framework (default: their own default)")
    p.add_argument("--impl", action="append", help="only this impl (repeatable)")
    p.add_argument("--mode", action="append",
                   help="only this d2lgru execution mode (repeatable; bare runs all its modes "
                        "unless --skip bare)")
    p.add_argument("--skip", action="append", default=[], choices=PARTS,
                   help="leave out a part (repeatable)")
    p.add_argument("--bare-sweep", action="store_true", help="time the bare model on the sweep too")
    p.add_argument("--pipeline", dest="pipeline", action="store_true", default=None,
                   help="measure the data pipeline (default: in the numpy run only)")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    p.add_argument("--pipeline-mb", type=float, help="corpus size in MB (100; quick: 2)")
    p.add_argument("--data", help="The Time Machine (file or directory; default $D2LGRU_DATA_DIR, "
                                  "then ../shared/data, then d2lgru's cache)")
    p.add_argument("--repeats", type=int, help="timed repeats per figure, over all rounds (6; "
                                               "quick: 2)")
    p.add_argument("--rounds", type=int, help="the book config's cases (d2lgru, bare, Keras 3, "
                   "the book's code) run in this many interleaved rounds, a fresh worker each, "
                   "so that ratios between them are taken side by side (3; quick: 1)")
    p.add_argument("--target-s", type=float, help="seconds per timed repeat (1.0; quick: one "
                                                  "2-batch epoch)")
    return p.parse_args(argv)


# -- the corpus ----------------------------------------------------------------------------
def find_text(data: str | None) -> Path | None:
    """The Time Machine, or None (then a generated text stands in)."""
    from d2lgru import data as d2data
    candidates = [data, os.environ.get(d2data.DATA_DIR_ENV),
                  str(_machine.REPO.parent / "shared" / "data")]
    for candidate in [c for c in candidates if c]:
        try:
            return d2data.find_time_machine(candidate)
        except d2data.DataError:
            continue
    try:
        return d2data.find_time_machine(None)  # d2lgru's cache, else a download
    except d2data.DataError:
        return None


def generated_text(size: int, seed: int = 0) -> bytes:
    """Random lower-case words, lines of about 60 characters: a stand-in for The Time Machine."""
    import numpy as np
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", np.uint8)
    p = 1.0 / np.arange(1, 27)
    chars = letters[rng.choice(26, size=size, p=p / p.sum())]
    chars[rng.random(size) < 0.18] = ord(" ")
    chars[59::60] = ord("\n")
    return chars.tobytes()


def corpus_text(source: Path | None, size: int) -> bytes:
    """At least ``size`` bytes: The Time Machine repeated, or generated words."""
    if source is None:
        return generated_text(size)
    text = source.read_bytes()
    if not text.endswith(b"\n"):
        text += b"\n"
    return text * max(1, -(-size // len(text)))


# -- workers ---------------------------------------------------------------------------------
def worker_env(args) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("GLOG_minloglevel", "2")
    # Not GLOG_v: it means opposite things to the two frameworks that read it. MindSpore's log
    # level (3: errors only), which its adapter and bare/mindspore.py set themselves; glog's
    # verbosity to Paddle, whose VLOG(3) lines, printed or not, made every Paddle op slower
    # (scratch trained at 31-34k tokens/s with GLOG_v=3 against 47-59k without, 2026-12-04)
    if args.threads:
        from benchmarks._cases import THREAD_ENV
        for var in THREAD_ENV:
            env[var] = str(args.threads)
    return env


#: a worker process: benchmarks._cases alone (not this module, which imports parts of d2lgru
#: that an older revision measured by benchmarks.ab may lack)
_WORKER = "import sys; from benchmarks._cases import run_worker; run_worker(*sys.argv[1:])"


def run_case(task: dict, args, workdir: Path, timeout: float, *, python=None,
             cwd: Path | None = None) -> dict:
    """Run one case in a fresh worker process (``python``, default this one, in ``cwd``,
    default the checkout: the ``d2lgru`` and ``benchmarks`` there are what it imports)."""
    import subprocess
    task = {**task, "backend": args.backend, "device": args.device, "threads": args.threads}
    name = "-".join(str(task.get(k)) for k in ("case", "impl", "mode") if task.get(k))
    result = workdir / f"{name}-{time.monotonic_ns()}.json"
    log = result.with_suffix(".log")
    with open(log, "w") as out:
        try:
            proc = subprocess.run([str(python or sys.executable), "-c", _WORKER,
                                   json.dumps(task), str(result)], stdout=out,
                                  stderr=subprocess.STDOUT, env=worker_env(args),
                                  cwd=cwd or _machine.REPO, timeout=timeout,
                                  preexec_fn=_machine.dies_with_parent())
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
    if result.is_file():
        return json.loads(result.read_text())
    tail = log.read_text(errors="replace")[-1500:]
    return {"error": f"worker exited with status {status}", "log_tail": tail}


def fmt_rate(entry: dict) -> str:
    if "error" in entry:
        return "ERROR " + entry["error"].splitlines()[0][:160]
    s = entry["tokens_per_s"]
    return f"{s['median']:>10,.0f} tokens/s ({s['min']:,.0f}-{s['max']:,.0f})"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.keras_only:
        args.backend = args.backend or args.keras_only
        args.keras_backend = args.keras_only
        args.skip = list(PARTS[:-2]) + ["book"]
    elif args.backend not in BACKENDS:
        sys.exit(f"python -m benchmarks.run: --backend must be one of {', '.join(BACKENDS)} "
                 f"(or pass --keras-only), got {args.backend!r}")
    preset = dict(QUICK if args.quick else FULL)
    if args.repeats:
        preset["repeats"] = args.repeats
    if args.rounds:
        preset["rounds"] = args.rounds
    if args.target_s is not None:
        preset.update(target_s=args.target_s, max_batches=FULL["max_batches"])
    if args.device.lower() in ("gpu", "cuda"):
        preset["gemm_n"] *= 2  # a GPU finishes a 4096^3 product in milliseconds
    skip = set(args.skip)
    want_pipeline = args.pipeline if args.pipeline is not None else args.backend == "numpy"
    if not want_pipeline:
        skip.add("pipeline")

    machine = _machine.machine()
    label = args.label or _machine.label(machine, args.device)
    out_dir = Path(args.out) if args.out else RESULTS / (label + ("-quick" if args.quick else ""))
    started = time.perf_counter()
    result = {"format": FORMAT, "backend": args.backend, "label": label, "quick": args.quick,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run",
                                   *(_machine.portable(a) if os.path.isabs(a) else a
                                     for a in (argv if argv is not None else sys.argv[1:]))]),
              "machine": machine, "python": _machine.python(),
              "checkout": _machine.checkout(), "device": args.device,
              "threads_requested": args.threads, "settings": preset,
              "flops_formula": _metrics.FLOPS_FORMULA,
              "train": [], "bare": [], "latency": [], "alternatives": []}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.backend}.json"

    def save(complete=False):
        """Written after every case (``complete`` false until the end): an interrupted run
        keeps what it measured."""
        result["complete"] = complete
        result["wall_s"] = time.perf_counter() - started
        write_result(path, _metrics.derive(result))

    def say(*a):
        print(*a, flush=True)
        save()
    say(f"d2lgru benchmark: backend {args.backend} on {label} "
        f"({machine['cpu_model']}, {machine['cpus_usable']} CPUs), device {args.device}"
        f"{', QUICK (smoke run, not measurements)' if args.quick else ''}")

    with tempfile.TemporaryDirectory(prefix="d2lgru-bench-") as tmp:
        workdir = Path(tmp)
        timeout = preset["timeout_s"]
        import numpy as np
        from d2lgru import data as d2data
        text_path = find_text(args.data)
        if text_path is not None:
            ids, vocab = d2data.load_corpus(text_path, "char")
        else:
            gen = workdir / "generated.txt"
            gen.write_bytes(generated_text(1 << 20))
            ids, vocab = d2data.load_corpus(gen, "char")
        np.save(workdir / "ids.npy", ids.astype(np.int64))  # batches are int64, as SeqDataLoader yields
        V = len(vocab)
        source = _machine.portable(text_path) if text_path else "generated words"
        result["corpus"] = {"source": source,
                            "tokens": int(ids.size), "vocab": V}
        timing = {k: preset[k] for k in ("repeats", "target_s", "warmup_batches", "max_batches")}
        base = {"corpus_ids": str(workdir / "ids.npy"), "timing": timing}

        probe = ({"error": "--keras-only: no d2lgru backend measured"} if args.keras_only else
                 run_case({"case": "probe"}, args, workdir, timeout))
        result["software"] = probe
        impls = {} if "error" in probe else probe["impls"]
        if args.keras_only:
            pass
        elif "error" in probe:
            say(f"  d2lgru backend unavailable: {probe['error'].splitlines()[0]}")
        elif not _has_device(probe["devices"], args.device):
            result["software"]["device_refused"] = (
                f"backend {args.backend!r} has no device {args.device!r} (it has "
                f"{', '.join(probe['devices'])}): its d2lgru cases are left out")
            say("  " + result["software"]["device_refused"])
            impls = {}
        if "gemm" not in skip:
            g = run_case({"case": "gemm", "gemm_n": preset["gemm_n"],
                          "repeats": preset["repeats"]}, args, workdir, timeout)
            if "error" not in g:
                sources = {k: v["gflops"]["median"] for k, v in g.items()
                           if isinstance(v, dict) and "gflops" in v}
                g["peak_source"] = max(sources, key=sources.get)
                g["peak_gflops"] = sources[g["peak_source"]]
                say("  GEMM %d: " % g["n"] + ", ".join(f"{k} {v:,.1f} GFLOP/s"
                                                      for k, v in sources.items()))
            else:
                say(f"  GEMM: ERROR {g['error']}")
            result["gemm"] = g

        combos = [(impl, mode, i == 0) for impl, info in impls.items()
                  for i, mode in enumerate(info["modes"])
                  if (not args.impl or impl in args.impl) and (not args.mode or mode in args.mode)]
        configs = [(axis, {**cfg, "vocab": V}) for axis, cfg in _metrics.sweep_configs()
                   if axis is None or "sweep" not in skip]

        if "latency" not in skip:
            for impl in dict.fromkeys(c[0] for c in combos):
                for cfg in LATENCY:
                    lat = run_case({"case": "latency", "impl": impl, "config": cfg,
                                    "timing": {"target_s": preset["latency_s"],
                                               "min_calls": preset["latency_min_calls"],
                                               "max_calls": preset["latency_max_calls"]}},
                                   args, workdir, timeout)
                    lat.update(impl=impl, config=cfg)
                    result["latency"].append(lat)
                    say(f"  gru forward {impl:>7} batch {cfg['batch_size']:>3}: " +
                        (f"{lat['ms']['median']:8.2f} ms" if "error" not in lat
                         else "ERROR " + lat["error"].splitlines()[0]))

        bare_modes = bare_modes_of(args.backend)
        for axis, cfg in configs:
            # (list in result, task, what the entry records, its line's label): the book
            # config's cases run in interleaved rounds (run_rounds), the sweep's once each
            cases = [("train", {"case": "train", "impl": impl, "mode": mode, "config": cfg,
                                **base},
                      {"impl": impl, "mode": mode, "default_mode": default, "config": cfg,
                       "sweep_axis": axis},
                      f"{impl:>7} {mode:>10}{'*' if default else ' '}")
                     for impl, mode, default in ([] if "train" in skip else combos)]
            if "bare" not in skip and (axis is None or args.bare_sweep):
                cases += [("bare", {"case": "bare", "mode": mode, "config": cfg, **base},
                           {"mode": mode, "config": cfg, "sweep_axis": axis},
                           f"{'bare':>7} {mode:>10} ") for mode in bare_modes]
            if axis is None:
                cases += [("alternatives", task, meta, f"{meta['script']:>7} {meta['mode']:>10} ")
                          for task, meta in alternatives(args, skip, cfg, base)]
            run_rounds(cases, preset["rounds"] if axis is None else 1, args, workdir, timeout,
                       result, lambda line: say(f"  {_cfg_name(axis, cfg):<12} {line}"))

        if "pipeline" not in skip:
            result["pipeline"] = {}
            run_pipeline(args, workdir, text_path, timeout, say, result["pipeline"])

    save(complete=True)
    print(f"wrote {path} ({result['wall_s'] / 60:.1f} min)")
    return 0


def _has_device(devices, asked: str) -> bool:
    asked = asked.lower()
    return asked in devices or (asked in ("gpu", "cuda") and bool({"gpu", "cuda"} & set(devices)))


def _cfg_name(axis, cfg) -> str:
    short = {"hidden": "H", "batch_size": "N", "num_steps": "T"}
    return "book" if axis is None else f"{short[axis]}={cfg[axis]}"


def bare_modes_of(backend: str, constant: str = "MODES"):
    """``MODES`` (or another literal ``constant``) of ``benchmarks/bare/<backend>.py``, read
    without importing the framework."""
    import ast
    path = _machine.REPO / "benchmarks" / "bare" / f"{backend}.py"
    if not path.is_file():
        return ()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == constant
                                                for t in node.targets):
            value = ast.literal_eval(node.value)
            return tuple(value) if isinstance(value, (list, tuple)) else value
    return ()


def alternatives(args, skip, cfg, base):
    """What a user would pick instead of d2lgru, at the book's config, as ``(task, meta)``:
    Keras 3 on this environment's framework (where keras imports) and, in the torch run, the
    book's own code."""
    import importlib.util
    keras_backend = args.keras_backend or (args.backend if args.backend in KERAS_BACKENDS
                                           else None)
    if "keras" not in skip and keras_backend and importlib.util.find_spec("keras"):
        for i, mode in enumerate(KERAS_MODES[keras_backend]):
            yield ({"case": "keras3", "keras_backend": keras_backend, "mode": mode,
                    "config": cfg, **base},
                   {"script": "keras3", "keras_backend": keras_backend, "mode": mode,
                    "default_mode": i == 0, "config": cfg})
    if "book" not in skip and args.backend == "torch":
        yield ({"case": "book", "config": cfg, **base},
               {"script": "book", "mode": "eager", "default_mode": True, "config": cfg})


def run_rounds(cases, rounds: int, args, workdir, timeout, result, say) -> None:
    """Run ``cases`` (``(kind, task, meta, label)``) ``rounds`` times in turn, each time in a
    fresh worker with ``repeats / rounds`` repeats (rounded up), and keep one entry per case in
    ``result[kind]``, merged over the rounds so far (:func:`_metrics.merge_rounds`). The machine's
    speed drifts over minutes (another job, the host, the clock): interleaved, every case sees
    the same drift, and ratios between cases are taken round by round
    (:func:`_metrics.side_by_side`), so they compare the cases, not the minutes they ran in."""
    runs = [[] for _ in cases]
    slots = {}
    for r in range(rounds):
        for i, (kind, task, meta, label) in enumerate(cases):
            if rounds > 1:
                timing = dict(task["timing"])
                timing["repeats"] = -(-timing["repeats"] // rounds)
                task = {**task, "timing": timing}
            run = run_case(task, args, workdir, timeout)
            runs[i].append(run)
            cfg = meta["config"]
            entry = {**_metrics.merge_rounds(runs[i], cfg["batch_size"] * cfg["num_steps"]),
                     **meta}
            if i not in slots:
                slots[i] = len(result[kind])
                result[kind].append(entry)
            else:
                result[kind][slots[i]] = entry
            tag = f" round {r + 1}/{rounds}" if rounds > 1 else ""
            say(f"{label} {fmt_rate(run)}{tag}")


def run_pipeline(args, workdir: Path, text_path, timeout, say, out: dict) -> dict:
    """d2lgru.data at two corpus sizes (memory per token) and the book's code at the larger;
    filled into ``out`` as the runs finish."""
    mb = args.pipeline_mb or (2.0 if args.quick else 100.0)
    N, T = 32, 35
    out.update({"batch_size": N, "num_steps": T, "source": _machine.portable(text_path) if text_path
                else "generated words", "runs": []})
    sizes = [("d2lgru", mb / 4), ("d2lgru", mb), ("book", mb)]
    offset = None
    for impl, size_mb in sizes:
        path = workdir / f"corpus-{size_mb:g}MB.txt"
        if not path.exists():
            path.write_bytes(corpus_text(text_path, int(size_mb * 2 ** 20)))
        task = {"case": "pipeline", "impl": impl, "path": str(path), "bytes": path.stat().st_size,
                "batch_size": N, "num_steps": T, "offset": offset}
        # d2lgru's cases take a second, and one run of a 100 MB case varies 2-4x with the
        # kernel's memory state (huge-page compaction for the int64 corpus): the run with the
        # median total of 3 (quick: 1) stands for the case. The book's takes half a minute: 1.
        repeats = 1 if impl == "book" or args.quick else 3
        runs = [run_case(task, args, workdir, timeout) for _ in range(repeats)]
        good = sorted((r for r in runs if "error" not in r), key=lambda r: r["total_s"])
        run = good[len(good) // 2] if good else runs[0]
        run.update(impl=impl, corpus_mb=round(path.stat().st_size / 2 ** 20, 2),
                   total_s_each=[r["total_s"] for r in good])
        if impl == "d2lgru" and "error" not in run:
            offset = run["offset"]
        out["runs"].append(run)
        say(f"  pipeline {impl:>6} {run['corpus_mb']:7.1f} MB: " +
            (f"{run['total_s']:8.2f} s, peak RSS {run['peak_rss_mb']:,.0f} MB"
             if "error" not in run else "ERROR " + run["error"].splitlines()[0]))
    ours = [r for r in out["runs"] if r["impl"] == "d2lgru" and "error" not in r]
    book = [r for r in out["runs"] if r["impl"] == "book" and "error" not in r]
    if ours and book:
        a, b = ours[-1], book[-1]
        out["same_output"] = all(a[k] == b[k] for k in ("vocab", "corpus_sha256",
                                                         "batches_sha256", "batches"))
        out["speedup"] = b["total_s"] / a["total_s"]
        out["memory_ratio"] = b["peak_rss_mb"] / a["peak_rss_mb"]
        say(f"  pipeline: same output {out['same_output']}, d2lgru {out['speedup']:.0f}x faster")
    if len(ours) == 2:
        small, large = ours
        out["bytes_per_token_small_vs_large"] = (small["bytes_per_token"],
                                                 large["bytes_per_token"])
        # what one more token costs: the slope of peak RSS between the two sizes
        out["marginal_bytes_per_token"] = ((large["peak_rss_mb"] - small["peak_rss_mb"]) * 2 ** 20
                                           / (large["tokens"] - small["tokens"]))
    return out


if __name__ == "__main__":
    sys.exit(main())
