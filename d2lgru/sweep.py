"""A grid of training runs: the book's exercise 2 (hidden units, learning rate, ...), with
exercise 3's plain RNN as one more axis (``cell``).

``d2lgru sweep --vary hidden=64,128 --vary lr=0.5,1 --out DIR`` trains every setting of the
grid as a normal run of :func:`d2lgru.train.train` (checkpoint directory, lock, ``result.json``)
in ``DIR/<name=value,...>/``. Running the same command again keeps the finished settings and
resumes the others from their checkpoints; ``--jobs N`` trains N settings at once, each in a
subprocess with one thread (``python -m d2lgru.sweep JOB``). Then ``DIR/sweep.md`` (the table),
``DIR/sweep.png`` (perplexity per epoch and per second of training) and ``DIR/sweep.json``
(per setting what the table and figure need) compare them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import data as d2data
from ._io import end_with_parent, make_directory, save_png, write_atomic
from .checkpoint import (RESULT_FILE, STATE_FILE, CheckpointError, foreign_files, has_run,
                         model_format, read_state, run_config)
from .config import TrainConfig
from .backends import UnsupportedError, get_backend
from .errors import D2lgruError, InvalidArgumentError
from .spec import GATE_SETS, GRUSpec
from .train import (FIXED_ON_RESUME, TrainingDiverged, TrainingInterrupted, _resolve_corpus,
                    corpus_sha1, predict, resume_conflicts, settled, train, write_result)

FORMAT_SWEEP = "d2lgru.Sweep/1"
SWEEP_FILES = ("sweep.md", "sweep.png", "sweep.json")
PREFIXES = ("time traveller", "traveller")
#: what a --jobs child runs with: one thread in every library a backend may use
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                  "MXNET_CPU_WORKER_NTHREADS": "1", "FLAGS_paddle_num_threads": "1"}


def _number(kind, text):
    if not text.isascii():  # int() and float() also read other scripts' digits ('٣' is 3)
        return None
    try:
        value = kind(text)
    except ValueError:
        return None
    return value if 0 < value < math.inf else None


#: --vary NAME -> (TrainConfig field, the train option that fixes it, what a value must be,
#: value parser returning None for a bad value)
AXES = {
    "hidden": ("hidden_size", "hidden", "a positive integer", lambda t: _number(int, t)),
    "layers": ("num_layers", "layers", "a positive integer", lambda t: _number(int, t)),
    "lr": ("lr", "lr", "a positive number", lambda t: _number(float, t)),
    "clip": ("clip", "clip", "a positive number", lambda t: _number(float, t)),
    "batch-size": ("batch_size", "batch_size", "a positive integer", lambda t: _number(int, t)),
    "num-steps": ("num_steps", "num_steps", "a positive integer", lambda t: _number(int, t)),
    "cell": ("gates", "cell", "gru or rnn", lambda t: t if t in ("gru", "rnn") else None),
    "gates": ("gates", "gates", f"one of {', '.join(GATE_SETS)} (none: the plain RNN)",
              lambda t: t if t in GATE_SETS else None),
    "seed": ("seed", "seed", "a non-negative integer",
             lambda t: int(t) if t.isascii() and t.isdigit() else None),
}


class SweepError(D2lgruError):
    """Some settings of a sweep failed (others may have finished and are kept)."""


def _label(value) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def parse_vary(specs) -> dict[str, list]:
    """``["hidden=64,128", "lr=0.5,1"]`` -> ``{"hidden": [64, 128], "lr": [0.5, 1.0]}``, in the
    order given; every mistake is one :class:`InvalidArgumentError` saying what is valid."""
    names = ", ".join(AXES)
    vary: dict[str, list] = {}
    for spec in specs:
        name, sep, values = str(spec).partition("=")
        name = name.strip()
        if not sep or name not in AXES:
            what = f"unknown name {name!r}" if sep else "expected NAME=V1,V2,..."
            raise InvalidArgumentError(f"--vary {spec!r}: {what}; valid names: {names}")
        if name in vary:
            raise InvalidArgumentError(f"--vary {name} is given twice; list all its values in one "
                                       f"--vary {name}=V1,V2,...")
        _, _, kind, parse = AXES[name]
        parsed = []
        for text in values.split(","):
            value = parse(text.strip())
            if value is None:
                raise InvalidArgumentError(f"--vary {spec!r}: {name} {text.strip()!r} is not "
                                           f"{kind}")
            if value in parsed:
                raise InvalidArgumentError(f"--vary {spec!r}: {name} {_label(value)} is listed "
                                           f"twice")
            same = [v for v in parsed if _label(v) == _label(value)]
            if same:  # a setting's name (its directory) holds 6 significant digits
                raise InvalidArgumentError(f"--vary {spec!r}: {name} {same[0]!r} and {value!r} "
                                           f"both name the setting {name}={_label(value)}; give "
                                           f"values that differ in their first 6 digits")
            parsed.append(value)
        vary[name] = parsed
    if not vary:
        raise InvalidArgumentError(f"give at least one --vary NAME=V1,V2,...; valid names: {names}")
    if "cell" in vary and "gates" in vary:
        raise InvalidArgumentError("--vary cell and --vary gates cannot both be given (the plain "
                                   "RNN has no gates); use --vary gates=both,...,none instead")
    return vary


@dataclasses.dataclass
class Setting:
    """One cell of the grid: its name (its directory), values and the run's configuration."""

    name: str
    values: dict
    config: TrainConfig
    expect: dict


def grid(base: TrainConfig, expect: dict, vary: dict[str, list]) -> list[Setting]:
    """Every combination of ``vary`` on top of ``base``, in the order the axes were given;
    ``expect`` (the fields given explicitly) grows by the varied fields, which a resumed
    setting's checkpoint must agree with."""
    if base.gates == "none" and "gates" in vary:
        raise InvalidArgumentError("--vary gates with --cell rnn: the plain RNN has no gates")
    settings = []
    for combo in itertools.product(*vary.values()):
        values = dict(zip(vary, combo))
        fields = {}
        for name, value in values.items():
            field = AXES[name][0]
            if name == "cell":
                value = "none" if value == "rnn" else base.gates
            fields[field] = value
        name = ",".join(f"{n}={_label(v)}" for n, v in values.items())
        config = dataclasses.replace(base, **fields)
        # every field a run keeps, not only those given: the report's header states them all,
        # so a setting kept from an earlier sweep must have been trained with them
        settings.append(Setting(name, values, config,
                                {**expect, **{k: getattr(config, k) for k in FIXED_ON_RESUME}}))
    return settings


def check_settings(settings: list[Setting], backend, impl: str, mode, device) -> None:
    """Fail before training anything when the backend cannot run a setting."""
    info = backend.check_impl(impl)
    backend.check_mode(impl, mode)
    backend.check_device(device)
    for s in settings:
        c = s.config
        # the vocabulary's size is not known yet; no capability depends on it
        why = info.refusal(GRUSpec(1, c.hidden_size, c.num_layers, False, c.reset_after,
                                   c.gates), np.float32)
        if why:
            raise UnsupportedError(f"backend {backend.name!r} impl {impl!r} cannot train "
                                   f"setting {s.name}: {why}")
    # every setting trains on the same corpus (no axis changes it): one that cannot fill a
    # batch fails here, not hours later at its turn
    base = settings[0].config
    corpus, _ = d2data.load_corpus_time_machine(base.max_tokens, token=base.token,
                                                path=_resolve_corpus(base))
    too_big = []
    for s in settings:
        try:
            d2data._check_shape(len(corpus), s.config.batch_size, s.config.num_steps,
                                s.config.use_random_iter)
        except InvalidArgumentError as exc:
            too_big.append(f"{s.name}: {exc}")
    if too_big:
        raise InvalidArgumentError(f"{len(too_big)} of {len(settings)} settings cannot train on "
                                   f"this corpus, so none was started (drop them, or raise "
                                   f"--max-tokens): {'; '.join(too_big)}")


def _is_setting_name(name: str) -> bool:
    """Whether ``name`` reads as a setting's directory (``NAME=VALUE,...`` of :data:`AXES`)."""
    return all(sep and axis in AXES for axis, sep, _ in (p.partition("=") for p in name.split(",")))


def saved_sweep(out) -> dict | None:
    """``OUT/sweep.json`` of the sweep already in ``out`` (its cells' names and grid checked),
    or None when there is none; one that is not d2lgru's is an :class:`InvalidArgumentError`."""
    path = Path(out) / "sweep.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or record.get("format") != FORMAT_SWEEP:
            raise ValueError(f"its format is not {FORMAT_SWEEP!r}")
        if not isinstance(record.get("vary"), dict) or not isinstance(record.get("cells"), list) \
                or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                           for c in record["cells"]):
            raise ValueError("it lists no grid or settings")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgumentError(f"--out {out} holds a sweep.json that is not a d2lgru sweep's "
                                   f"({exc}); choose a new or empty directory") from None
    return record


def dropped_settings(saved: dict, settings: list[Setting]) -> list[str]:
    """The settings of the saved sweep (:func:`saved_sweep`) that ``settings`` lacks: what a
    report of this grid would leave out of the summary."""
    names = {s.name for s in settings}
    return [c["name"] for c in saved["cells"] if c["name"] not in names]


def saved_grid(saved: dict) -> str:
    """The ``--vary`` options of the saved sweep, as its command gave them."""
    return " ".join(f"--vary {n}={','.join(map(str, vs))}" for n, vs in saved["vary"].items())


def foreign_entries(out) -> list[str]:
    """The names in ``out`` that no sweep writes, when it holds no d2lgru sweep yet (a
    sweep.json, or a setting's directory that holds a run): what a sweep there would mix its
    files with. ``[]`` for a missing or empty directory and for a sweep's own."""
    out = Path(out)
    if not out.is_dir():
        return []
    entries = list(out.iterdir())
    settings = [p for p in entries if p.is_dir() and _is_setting_name(p.name)]
    if (out / "sweep.json").exists() or any(has_run(p) for p in settings):
        return []
    return sorted(p.name for p in entries
                  if not (p in settings and not foreign_files(p)) and p.name not in SWEEP_FILES
                  and not any(p.name.startswith(f".{f}.") and p.name.endswith(".tmp")
                              for f in SWEEP_FILES))


def settings_to_train(settings: list[Setting], out, overwrite: bool = False) -> int:
    """How many of ``settings`` will train in ``out``: all with ``overwrite``, else those not
    kept as finished."""
    if overwrite:
        return len(settings)
    return sum(_finished(Path(out) / s.name, s.config.epochs) is None for s in settings)


def run_sweep(settings: list[Setting], out, *, backend, impl="scratch", mode=None, device=None,
              jobs: int = 1, overwrite: bool = False, data_changed_ok: bool = False,
              log=None, threads: int | None = None, format: str | None = None) -> list[dict]:
    """Train every setting into ``out/<name>/`` (finished ones are kept, unfinished ones
    resumed) and return their records (:func:`read_setting`). Settings that fail for a reason
    of their own (not divergence, which is recorded) do not stop the others; they are raised
    together at the end as one :class:`SweepError`."""
    out = make_directory(out, "the sweep directory")
    work = [{"name": s.name, "values": s.values, "config": dataclasses.asdict(s.config),
              "expect": s.expect, "dir": str(out / s.name), "backend": backend.name,
              "impl": impl, "mode": mode, "device": device, "overwrite": overwrite,
              "data_changed_ok": data_changed_ok, "threads": threads, "format": format}
             for s in settings]
    log = log or (lambda line: None)
    records, failed = {}, []

    def done(job, record, error):
        if error is not None:
            failed.append(f"{job['name']}: {error}")
            log(f"[{len(records) + len(failed)}/{len(work)}] {job['name']}: failed: {error}")
            return
        records[job["name"]] = record
        log(f"[{len(records) + len(failed)}/{len(work)}] {describe(record)}")

    if jobs == 1:
        for job in work:
            try:
                done(job, run_setting(job), None)
            except TrainingInterrupted:
                raise
            except D2lgruError as exc:
                done(job, None, str(exc))
    else:
        children = _Children()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                for job, (record, error) in zip(work, pool.map(children.run, work)):
                    done(job, record, error)
            except BaseException:  # Ctrl-C, SIGTERM: stop the children, or the pool waits for them
                pool.shutdown(wait=False, cancel_futures=True)
                children.stop()
                raise
    if failed:
        raise SweepError(f"{len(failed)} of {len(work)} settings failed (the others are kept; "
                         f"fix and re-run the same command to resume): {'; '.join(failed)}")
    return [records[job["name"]] for job in work]


class _Children:
    """The ``--jobs`` children, each ``python -m d2lgru.sweep JOB`` with one thread and the
    same d2lgru as this process; :meth:`stop` ends those running and starts no more."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live: set[subprocess.Popen] = set()
        self._stopped = False

    def run(self, job) -> tuple[dict | None, str | None]:
        package_root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, **ONE_THREAD_ENV,
               "PYTHONPATH": os.pathsep.join(p for p in (package_root,
                                                         os.environ.get("PYTHONPATH")) if p)}
        with self._lock:
            if self._stopped:
                return None, "not started: the sweep was interrupted"
            proc = subprocess.Popen([sys.executable, "-m", "d2lgru.sweep",
                                     json.dumps({**job, "parent": os.getpid()})], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self._live.add(proc)
        try:
            stdout, stderr = proc.communicate()
        finally:
            with self._lock:
                self._live.discard(proc)
        if proc.returncode == 0:
            return json.loads(stdout.strip().splitlines()[-1]), None
        lines = [line for line in stderr.splitlines() if line.strip()]
        return None, (lines[-1] if lines else f"exit status {proc.returncode}")

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for proc in self._live:
                proc.terminate()  # SIGTERM: the child's checkpoint stays whole, as on a kill


def run_setting(job: dict) -> dict:
    """Train one setting as a normal run in ``job["dir"]``: nothing when it is finished,
    resumed when it holds a checkpoint; then its predictions and ``result.json``."""
    path, config = Path(job["dir"]), TrainConfig.from_dict(job["config"])
    overwrite = job["overwrite"]
    state = None if overwrite else _finished(path, config.epochs)
    if state is not None:
        _check_kept(path, state, config, job)
        return read_setting(path, job["name"], job["values"])
    resume = path if not overwrite and (path / STATE_FILE).is_file() else None
    # a run directory without state.json completed no epoch: nothing to keep
    overwrite = overwrite or (resume is None and has_run(path))
    backend = get_backend(job["backend"])
    if job.get("threads") is not None:
        backend.set_threads(job["threads"])
    try:
        result = train(config, backend=backend, impl=job["impl"], mode=job["mode"],
                       device=job["device"], out=path, resume=resume, overwrite=overwrite,
                       expect=job["expect"], data_changed_ok=job["data_changed_ok"],
                       format=job.get("format"))
    except TrainingDiverged as exc:
        return read_setting(path, job["name"], job["values"], diverged=str(exc))
    predictions = {p: predict(p, 50, result.model, result.vocab, backend=backend,
                              impl=job["impl"], token=result.config.token) for p in PREFIXES}
    write_result(path, result, backend, job["impl"], predictions)
    return read_setting(path, job["name"], job["values"])


def _check_kept(path: Path, state: dict, config: TrainConfig, job: dict) -> None:
    """A finished setting (``state``: its state.json) is kept only if it is the run this sweep
    asks for: the same fixed fields and corpus as a resumed one would need, its epochs, and its
    model files' format."""
    saved = run_config(path, state)
    why = resume_conflicts(saved, job["expect"])
    if state["epoch"] != config.epochs:
        why.append(f"--epochs: the run has {state['epoch']}, given {config.epochs}")
    if job.get("format") and model_format(state["model"]) != job["format"]:
        why.append(f"--format: the run has {model_format(state['model'])}, given {job['format']}")
    sha1 = corpus_sha1(_resolve_corpus(config))
    if not job["data_changed_ok"] and saved.corpus_sha1 not in (None, sha1):
        why.append(f"the corpus: the run's has SHA-1 {saved.corpus_sha1}, this one {sha1}")
    if why:
        raise CheckpointError(f"{path} holds a finished run that is not this sweep's setting "
                              f"({'; '.join(why)}); give the options it was trained with, more "
                              f"--epochs to continue it, or --overwrite to train it again")


def _finished(path: Path, epochs: int) -> dict | None:
    """The state.json of a run at ``path`` that has finished ``epochs`` or more (its
    result.json written for them), else None."""
    try:
        state = read_state(path)
        result = json.loads((path / RESULT_FILE).read_text())
    except (CheckpointError, OSError, ValueError):
        return None
    finished = state["epoch"] >= epochs and isinstance(result, dict) and \
        result.get("epochs") == state["epoch"]
    return state if finished else None


def read_setting(path, name: str, values: dict, diverged: str | None = None) -> dict:
    """What the table and the figure need of one setting's run directory."""
    path = Path(path)
    history = read_state(path)["history"] if (path / STATE_FILE).is_file() else []
    try:
        result = json.loads((path / RESULT_FILE).read_text()) if not diverged else {}
    except (OSError, ValueError):
        result = {}
    ppl = [h["perplexity"] for h in history]
    seconds = [h.get("seconds", math.nan) for h in history]
    tokens = sum(h["tokens_per_sec"] * s for h, s in zip(history, seconds))
    total = float(np.sum(seconds)) if seconds else math.nan
    return {"name": name, "setting": values, "epochs": len(history), "perplexity": ppl,
            "epoch_seconds": seconds, "settled": settled(ppl), "last": ppl[-1] if ppl else math.nan,
            "tokens_per_sec": tokens / total if total > 0 else math.nan, "seconds": total,
            "predictions": result.get("predictions", {}), "diverged": diverged}


def describe(record: dict) -> str:
    if record["diverged"]:
        return f"{record['name']}: {record['diverged']}"
    return (f"{record['name']}: perplexity {record['settled']:.3g} (median of the last 10 "
            f"epochs), {record['epochs']} epochs, {record['seconds']:.0f} s")


# -- the report ------------------------------------------------------------------------------
def write_report(out, records: list[dict], *, backend: str, impl: str, base: TrainConfig,
                 vary: dict, jobs: int = 1) -> tuple[Path, Path, Path]:
    out = Path(out)
    varied = {AXES[n][0] for n in vary}
    fixed = {k: v for k, v in dataclasses.asdict(base).items()
             if k not in ("data", "corpus_sha1") and k not in varied}
    meta = {"format": FORMAT_SWEEP, "backend": backend, "impl": impl, "jobs": jobs, "fixed": fixed,
            "vary": {n: [_label(v) for v in vs] for n, vs in vary.items()}}
    md = write_atomic(out / "sweep.md", lambda f: f.write(markdown(records, meta)), "w")
    png = plot_sweep(records, out / "sweep.png", meta)
    compact = [dict(r, perplexity=[_rounded(p, 5) for p in r["perplexity"]],
                    epoch_seconds=[_rounded(s, 4) for s in r["epoch_seconds"]],
                    settled=_rounded(r["settled"], 5), last=_rounded(r["last"], 5),
                    tokens_per_sec=_rounded(r["tokens_per_sec"], 1),
                    seconds=_rounded(r["seconds"], 2)) for r in records]
    text = json.dumps({**meta, "cells": compact}, separators=(",", ":"), allow_nan=False)
    js = write_atomic(out / "sweep.json", lambda f: f.write(text), "w")
    return md, png, js


def _rounded(x: float, digits: int):
    """``x`` rounded, or None (JSON null) when it is not finite."""
    return round(x, digits) if math.isfinite(x) else None


def _fixed_text(meta: dict) -> str:
    return ", ".join(f"{k.replace('_', '-')} {_label(v)}" for k, v in meta["fixed"].items())


def _varied_text(meta: dict) -> str:
    return "; ".join(f"{n} = {', '.join(vs)}" for n, vs in meta["vary"].items())


def markdown(records: list[dict], meta: dict) -> str:
    best = min((r["settled"] for r in records if not r["diverged"] and r["perplexity"]),
               default=None)
    lines = [f"# Sweep: {meta['backend']} {meta['impl']}", "",
             f"Varied: {_varied_text(meta)}. Fixed: {_fixed_text(meta)}.", "",
             "Perplexity is the median of the last 10 epochs (SGD at these rates spikes for a "
             "few epochs at a time, so one epoch is a draw; the last one is beside it). Seconds "
             "and tokens/s count training steps only" + (
                 f", {meta['jobs']} settings at a time with one thread each" if meta["jobs"] > 1
                 else "") + ". Best in bold.", "",
             "| setting | perplexity | last epoch | epochs | tokens/s | seconds | "
             "\"time traveller\" | \"traveller\" |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        preds = [f"`{r['predictions'][p]}`" if p in r["predictions"] else "" for p in PREFIXES]
        if r["diverged"]:
            ppl = f"diverged: {r['diverged']}"
        else:
            ppl = f"{r['settled']:.3f}"
            ppl = f"**{ppl}**" if r["settled"] == best else ppl
        lines.append(f"| {r['name']} | {ppl} | {r['last']:.3f} | {r['epochs']} | "
                     f"{r['tokens_per_sec']:.0f} | {r['seconds']:.1f} | {preds[0]} | {preds[1]} |")
    return "\n".join(lines) + "\n"


def plot_sweep(records: list[dict], path, meta: dict) -> Path:
    """Perplexity per epoch and per second of training, one curve per setting: colour by the
    other axes, line style by the last one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(meta["vary"])
    styles = ["-", "--", ":", "-."]
    last_axis = meta["vary"][names[-1]] if len(names) > 1 else [None]
    colour_keys = list(dict.fromkeys(tuple(_label(r["setting"][n]) for n in names[:-1])
                                     if len(names) > 1 else (_label(r["setting"][names[0]]),)
                                     for r in records))
    cmap = plt.get_cmap("tab10" if len(colour_keys) <= 10 else "tab20")
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(13, 5), dpi=110, sharey=True,
                                            layout="constrained")
    for r in records:
        if not r["perplexity"]:
            continue
        labels = [_label(r["setting"][n]) for n in names]
        key = tuple(labels[:-1]) if len(names) > 1 else (labels[0],)
        style = styles[last_axis.index(labels[-1]) % len(styles)] if len(names) > 1 else "-"
        kw = dict(color=cmap(colour_keys.index(key) % cmap.N), linestyle=style, linewidth=1.2,
                  label=r["name"] + (" (diverged)" if r["diverged"] else ""))
        epochs = np.arange(1, len(r["perplexity"]) + 1)
        by_epoch.plot(epochs, r["perplexity"], **kw)
        by_time.plot(np.cumsum(r["epoch_seconds"]), r["perplexity"], **kw)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    by_epoch.set_yscale("log")
    by_time.set_xscale("log")
    by_epoch.yaxis.set_major_formatter(plain)
    by_epoch.yaxis.set_minor_formatter(plain)  # a narrow range of perplexities: label 2, 3, ...
    by_time.xaxis.set_major_formatter(plain)
    by_epoch.set_xlabel("epoch")
    by_epoch.set_ylabel("perplexity (log scale)")
    by_time.set_xlabel("seconds of training, cumulative (log scale)")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3, which="both")
    by_time.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, borderaxespad=0)
    fig.suptitle(f"d2lgru sweep on {meta['backend']} {meta['impl']}: {_varied_text(meta)}\n"
                 f"fixed: {_fixed_text(meta)}", fontsize=9)
    path = save_png(fig, path)
    plt.close(fig)
    return path


def _child_main(argv) -> int:
    """``python -m d2lgru.sweep JOB``: run one setting, print its record as one JSON line;
    a user error is one line on stderr and exit status 2, as in the command line."""
    job = json.loads(argv[0])
    if "parent" in job:  # a --jobs child ends with the sweep (a killed one left its trainings)
        end_with_parent(job["parent"])
    try:
        record = run_setting(job)
    except D2lgruError as exc:
        print(f"{' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
