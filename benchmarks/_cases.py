"""What one worker process measures. Each case runs in a fresh interpreter, so its peak RSS is its
own and no framework state (graph mode, static mode, caches) leaks from one case to the next.

Cases: ``probe`` (versions, capabilities), ``gemm`` (the machine's limit), ``train`` (d2lgru's
trainer), ``bare`` (the framework without d2lgru), ``latency`` (``backend.gru`` forward) and
``pipeline`` (d2lgru.data or the book's pure-Python code on a large corpus). The ``bare``,
``gemm`` and book-``pipeline`` cases never import d2lgru.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from . import _machine
from ._metrics import stats

#: ``bare/<backend>.py``: the backends that have a bare model (no import of d2lgru's registry:
#: the bare cases run without d2lgru)
BARE_DIR = Path(__file__).with_name("bare")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "MXNET_CPU_WORKER_NTHREADS")


def bare_module(backend: str):
    """``benchmarks.bare.<backend>``, or None for numpy (NumPy has no GRU layer to use bare)."""
    if not backend.isidentifier() or backend.startswith("_") or \
            not (BARE_DIR / f"{backend}.py").is_file():
        return None
    return importlib.import_module(f"benchmarks.bare.{backend}")


def _d2lgru_backend(name: str):
    import d2lgru
    return d2lgru.get_backend(name)


def device_for(backend, asked: str) -> str:
    """The backend's own name for the device asked for (``gpu`` and ``cuda`` are one device)."""
    asked = (asked or "cpu").lower()
    if asked in backend.devices:
        return asked
    for alias in (("gpu", "cuda") if asked in ("gpu", "cuda") else ()):
        if alias in backend.devices:
            return alias
    return asked  # make_trainer refuses it with the backend's own sentence


def _numpy_blas() -> str | None:
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]
        blas = deps.get("blas", {})
        return f"{blas.get('name')} {blas.get('version', '')}".strip()
    except Exception:  # numpy < 1.25 has no mode="dicts"
        return None


def framework_info(task) -> dict:
    """Versions and threads as the framework reports them (through the bare module: no d2lgru)."""
    module = bare_module(task["backend"])
    info = {"numpy": np.__version__, "numpy_blas": _numpy_blas(),
            "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    if module is not None:
        info.update(module.info())
    return info


def _setup_framework(task):
    """The bare model's settings (threads, device). d2lgru cases leave them to the adapter."""
    module = bare_module(task["backend"])
    if module is not None:
        module.setup(task.get("threads"), task.get("device", "cpu"))
    return module


# -- probe ------------------------------------------------------------------------------------
def probe(task) -> dict:
    import d2lgru
    backend = _d2lgru_backend(task["backend"])
    # d2lgru's own keys last: a bare module's info() may name the framework's devices too (jax:
    # "cpu:0"), and the d2lgru cases ask for d2lgru's device names
    return {**framework_info(task),
            "d2lgru": {"version": d2lgru.__version__, "path": _machine.portable(d2lgru.__file__)},
            "framework_version": backend.version(), "devices": list(backend.devices),
            "impls": backend.capabilities()}


# -- the machine's limit --------------------------------------------------------------------
def _time_calls(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return times


def gemm(task) -> dict:
    n, repeats = task["gemm_n"], task["repeats"]
    flop = 2.0 * n ** 3
    out = {"n": n, "dtype": "float32"}
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty((n, n), np.float32)
    times = _time_calls(lambda: np.matmul(a, b, out=c), repeats)
    out["numpy"] = {"gflops": stats(flop / t / 1e9 for t in times), "device": "cpu"}
    module = _setup_framework(task)
    if module is not None:
        times = _time_calls(module.gemm(n, task.get("device", "cpu")), repeats)
        out[task["backend"]] = {"gflops": stats(flop / t / 1e9 for t in times),
                                "device": task.get("device", "cpu")}
    return out


# -- training throughput ----------------------------------------------------------------------
def corpus_batches(ids: np.ndarray, batch_size: int, num_steps: int, count: int):
    """``count`` sequentially partitioned minibatches (the book's layout) of the token stream,
    tiled as often as needed."""
    need = batch_size * (count * num_steps + 1)
    stream = np.resize(ids, need).reshape(batch_size, -1)
    return [(np.ascontiguousarray(stream[:, i * num_steps:(i + 1) * num_steps]),
             np.ascontiguousarray(stream[:, i * num_steps + 1:(i + 1) * num_steps + 1]))
            for i in range(count)]


def _time_training(make_trainer, task) -> dict:
    """Build, warm up, size the epoch to ``target_s``, then time ``repeats`` epochs."""
    cfg, timing = task["config"], task["timing"]
    ids = np.load(task["corpus_ids"])
    N, T = cfg["batch_size"], cfg["num_steps"]
    rss_before = _machine.rss_mb()
    tic = time.perf_counter()
    trainer = make_trainer()
    build_s = time.perf_counter() - tic
    warm = corpus_batches(ids, N, T, timing["warmup_batches"])
    tic = time.perf_counter()
    trainer.train_epoch(warm)  # traces / compiles / allocates
    first_epoch_s = time.perf_counter() - tic
    count, repeats = len(warm), timing["repeats"]
    if timing["target_s"] > 0:
        tic = time.perf_counter()
        trainer.train_epoch(warm)
        per_batch = (time.perf_counter() - tic) / len(warm)
        count = int(min(max(math.ceil(timing["target_s"] / per_batch), 1),
                        timing["max_batches"]))
        if count * per_batch > 3 * timing["target_s"]:  # one batch alone is slow: fewer repeats
            repeats = min(repeats, 3)
    batches = corpus_batches(ids, N, T, count)
    if count != len(warm):
        trainer.train_epoch(batches)  # a trainer may compile per epoch length
    tokens = count * N * T
    rates, losses = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        losses = trainer.train_epoch(batches)
        elapsed = time.perf_counter() - tic
        rates.append(tokens / elapsed)
    losses = np.asarray(losses, dtype=np.float64)
    return {"tokens_per_s": stats(rates), "rates": rates,
            "ms_per_step": stats(1e3 * N * T / r for r in rates),
            "batches_per_repeat": count, "repeats": repeats,
            "build_s": build_s, "first_epoch_s": first_epoch_s,
            "loss_last_epoch": [float(losses[0]), float(losses[-1])],
            "finite": bool(np.isfinite(losses).all()),
            "rss_before_mb": rss_before}


def train(task) -> dict:
    from d2lgru import init_lm
    from d2lgru.train import choose_reset_after

    backend = _d2lgru_backend(task["backend"])  # the adapter makes its own settings (threads)
    cfg = task["config"]
    impl, mode = task["impl"], task["mode"]
    reset_after = choose_reset_after(backend, impl)
    device = device_for(backend, task.get("device", "cpu"))

    def make():
        model = init_lm(cfg["vocab"], cfg["hidden"], reset_after=reset_after, seed=0)
        return backend.make_trainer(model, impl=impl, lr=1.0, clip=1.0, mode=mode, device=device)

    out = _time_training(make, task)
    # the count the policy chose when the trainer was made, and the framework's at the end
    # (where the revision has them: benchmarks.ab runs this against older ones)
    threads = {k: getattr(backend, k, None) for k in ("threads", "threads_source")}
    if callable(getattr(backend, "framework_threads", None)):
        threads["framework_threads"] = backend.framework_threads()
    out.update(reset_after=reset_after, device=device, **threads)
    out["framework"] = framework_info(task)
    return out


def bare(task) -> dict:
    module = _setup_framework(task)
    cfg = task["config"]

    def make():
        return module.make_trainer(cfg["vocab"], cfg["hidden"], cfg["batch_size"],
                                   cfg["num_steps"], mode=task["mode"],
                                   device=task.get("device", "cpu"), lr=1.0, clip=1.0, seed=0)

    out = _time_training(make, task)
    out["framework"] = framework_info(task)
    return out


def keras3(task) -> dict:
    """Keras 3 (``benchmarks/bare/keras3.py``) on ``task["keras_backend"]``, timed like bare."""
    os.environ["KERAS_BACKEND"] = task["keras_backend"]  # before keras is first imported
    module = importlib.import_module("benchmarks.bare.keras3")
    module.setup(task.get("threads"), task.get("device", "cpu"))
    cfg, made = task["config"], []

    def make():
        made.append(module.make_trainer(cfg["vocab"], cfg["hidden"], cfg["batch_size"],
                                        cfg["num_steps"], mode=task["mode"], lr=1.0, clip=1.0,
                                        seed=0))
        return made[-1]

    out = _time_training(make, task)
    out.update(framework=module.info(), jit_compile=made[0].jit_compile)
    return out


def book(task) -> dict:
    """The book's own PyTorch GRU from scratch (``docs/reproduce/book.py``), framework threads
    left at torch's default as in the bare rows."""
    import torch

    from docs.reproduce.book import BookScratchGRU
    cfg = task["config"]

    def make():
        torch.manual_seed(0)
        return BookScratchGRU(cfg["vocab"], cfg["hidden"], lr=1)

    out = _time_training(make, task)
    out["framework"] = {"framework": "torch", "version": torch.__version__,
                        "threads": torch.get_num_threads()}
    return out


# -- forward latency --------------------------------------------------------------------------
def latency(task) -> dict:
    from d2lgru import GRUSpec, init_params
    from d2lgru.train import choose_reset_after

    backend = _d2lgru_backend(task["backend"])
    impl, cfg, timing = task["impl"], task["config"], task["timing"]
    spec = GRUSpec(cfg["input"], cfg["hidden"], 1, False, choose_reset_after(backend, impl))
    params = init_params(spec, seed=0)
    X = np.random.default_rng(0).standard_normal(
        (cfg["num_steps"], cfg["batch_size"], cfg["input"])).astype(np.float32)
    import inspect
    kwargs = {"impl": impl}
    on_device = "device" in inspect.signature(backend.gru).parameters
    if on_device:  # once Backend.gru takes a device
        kwargs["device"] = device_for(backend, task.get("device", "cpu"))
    call = lambda: backend.gru(params, X, **kwargs)  # noqa: E731
    for _ in range(3):
        call()
    times, start = [], time.perf_counter()
    while len(times) < timing["min_calls"] or (time.perf_counter() - start < timing["target_s"]
                                               and len(times) < timing["max_calls"]):
        tic = time.perf_counter()
        call()
        times.append(time.perf_counter() - tic)
    return {"ms": stats(1e3 * t for t in times), "calls": len(times),
            "reset_after": spec.reset_after,
            "device": kwargs.get("device", "the backend's default (Backend.gru takes no device)")}


# -- data pipeline ----------------------------------------------------------------------------
def _digest_batches(batches) -> tuple[str, int]:
    h, count = hashlib.sha256(), 0
    for X, Y in batches:
        h.update(np.ascontiguousarray(X, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(Y, dtype=np.int64).tobytes())
        count += 1
    return h.hexdigest(), count


def pipeline(task) -> dict:
    """Tokenise, build the vocabulary and the corpus, then batch one epoch; timed in two phases,
    peak RSS read before the (untimed) digests that check both implementations agree."""
    path, N, T = task["path"], task["batch_size"], task["num_steps"]
    rss_start = _machine.rss_mb()
    if task["impl"] == "d2lgru":
        from d2lgru import data as d2data
        tic = time.perf_counter()
        corpus, vocab = d2data.load_corpus(path, "char")
        tokenise_s = time.perf_counter() - tic
        loader = d2data.SeqDataLoader(corpus, vocab, N, T, seed=0)
        offset = int(loader.rng(0).integers(0, T + 1))  # the sequential iterator's first draw
        tic = time.perf_counter()
        count = sum(1 for _ in loader)
        batch_s = time.perf_counter() - tic
        peak = _machine.peak_rss_mb()
        corpus_ids = np.asarray(corpus, dtype=np.int64)
        loader.set_epoch(0)
        batches = loader
        idx_to_token = list(vocab.idx_to_token)
    else:
        from . import _book_pipeline as book
        offset = task["offset"]
        tic = time.perf_counter()
        corpus, vocab = book.load_corpus_time_machine(path)
        tokenise_s = time.perf_counter() - tic
        tic = time.perf_counter()
        count = sum(1 for _ in book.seq_data_iter_sequential(corpus, N, T, offset))
        batch_s = time.perf_counter() - tic
        peak = _machine.peak_rss_mb()
        corpus_ids = np.asarray(corpus, dtype=np.int64)
        batches = book.seq_data_iter_sequential(corpus, N, T, offset)
        idx_to_token = list(vocab.idx_to_token)
    batches_sha, count_again = _digest_batches(batches)
    tokens = int(corpus_ids.size)
    total = tokenise_s + batch_s
    return {"tokens": tokens, "batches": count, "offset": offset,
            "tokenise_s": tokenise_s, "batch_s": batch_s, "total_s": total,
            "tokens_per_s": tokens / total, "mb_per_s": task["bytes"] / 2 ** 20 / total,
            "rss_start_mb": rss_start, "peak_rss_mb": peak,
            "bytes_per_token": (peak - rss_start) * 2 ** 20 / tokens if tokens else None,
            "vocab": idx_to_token,
            "corpus_sha256": hashlib.sha256(corpus_ids.tobytes()).hexdigest(),
            "batches_sha256": batches_sha, "batches_checked": count_again}


CASES = {"probe": probe, "gemm": gemm, "train": train, "bare": bare, "latency": latency,
         "pipeline": pipeline, "keras3": keras3, "book": book}


def run_worker(task_json: str, result_path: str) -> None:
    """Entry point of a worker: run one case, write its JSON (or the error) to ``result_path``."""
    import traceback
    task = json.loads(task_json)
    tic = time.perf_counter()
    try:
        out = CASES[task["case"]](task)
    except BaseException as exc:  # noqa: BLE001 -- a benchmark records failures, it never stops
        out = {"error": f"{type(exc).__name__}: {exc}".strip()[:2000],
               "traceback": traceback.format_exc()[-4000:]}
    out["wall_s"] = time.perf_counter() - tic
    out.setdefault("peak_rss_mb", _machine.peak_rss_mb())
    with open(result_path, "w") as f:
        json.dump(out, f)
