"""What bounds training speed at the book's config: the GEMM rate at the shapes one step uses,
and the cost of launching one small op, in NumPy and in one framework.

    .tox/<name>/bin/python -m benchmarks.limits --backend <name> [--out DIR]

One training step at the book's config (batch N=32, hidden H=256, 35 steps) is dominated by
three small products per time step: the gates' recurrent product ``[N, H] @ [H, 3H]`` forward,
and backward ``[N, 3H] @ [3H, H]`` (state gradient) and ``[H, N] @ [N, 3H]`` (weight gradient).
A large GEMM's rate (the FLOP bound of ``run.py``) is out of reach when those products run
slower; and every element-wise op costs at least one launch. This prints each product's
GFLOP/s and its share of the 4096 GEMM's rate, the FLOP-bound tokens/s they allow, and the time
of one ``[N, H]`` element-wise add; ``--out DIR`` stores them under the key ``limits`` of the
backend's result there (``DIR/<name>.json`` of ``benchmarks.run``: one file per backend), or in
``DIR/limits-<name>.json`` when there is none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import _machine
from benchmarks.run import FORMAT as BENCHMARK_FORMAT, write_result
from d2lgru.backends import BACKENDS

N, H, T, V = 32, 256, 35, 28
SHAPES = {  # name: (m, k, n) of an [m, k] @ [k, n] product
    "forward h @ W_h  [32,256]@[256,768]": (N, H, 3 * H),
    "backward dG @ W_h^T  [32,768]@[768,256]": (N, 3 * H, H),
    "backward h^T @ dG  [256,32]@[32,768]": (H, N, 3 * H),
    "large  [4096,4096]@[4096,4096]": (4096, 4096, 4096),
}


def _numpy_ops():
    def matmul(m, k, n):
        a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        return lambda: np.matmul(a, b, out=c)

    def add():
        a, b = np.ones((N, H), np.float32), np.ones((N, H), np.float32)
        c = np.empty_like(a)
        return lambda: np.add(a, b, out=c)
    return matmul, add


def _framework_ops(name):
    """(matmul(m, k, n) -> call, add() -> call) in the framework's eager mode; every call waits
    for its result."""
    if name == "torch":
        import torch

        def matmul(m, k, n):
            a, b = torch.randn(m, k), torch.randn(k, n)
            c = torch.empty(m, n)
            return lambda: torch.mm(a, b, out=c)

        def add():
            a, b = torch.ones(N, H), torch.ones(N, H)
            return lambda: torch.add(a, b)
        return matmul, add
    if name == "tensorflow":
        import tensorflow as tf

        def matmul(m, k, n):
            a, b = tf.random.normal((m, k)), tf.random.normal((k, n))
            return lambda: tf.linalg.matmul(a, b)._numpy()

        def add():
            a, b = tf.ones((N, H)), tf.ones((N, H))
            return lambda: tf.add(a, b)._numpy()
        return matmul, add
    if name == "mxnet":
        from mxnet import np as mnp

        def matmul(m, k, n):
            a, b = mnp.ones((m, k)), mnp.ones((k, n))
            return lambda: mnp.dot(a, b).wait_to_read()

        def add():
            a, b = mnp.ones((N, H)), mnp.ones((N, H))
            return lambda: (a + b).wait_to_read()
        return matmul, add
    if name == "paddle":
        import paddle

        from d2lgru.backends import get_backend
        get_backend("paddle").set_threads()  # the adapter's settings (MKL on AMD, threads)

        def matmul(m, k, n):
            a, b = paddle.randn((m, k)), paddle.randn((k, n))
            return lambda: paddle.matmul(a, b)

        def add():
            a, b = paddle.ones((N, H)), paddle.ones((N, H))
            return lambda: paddle.add(a, b)
        return matmul, add
    if name == "mindspore":
        import mindspore as ms
        from mindspore import ops

        from d2lgru.backends import get_backend
        get_backend("mindspore").set_threads()  # threads, synchronous launches, as d2lgru runs

        def matmul(m, k, n):
            a, b = ops.randn((m, k), dtype=ms.float32), ops.randn((k, n), dtype=ms.float32)
            return lambda: ops.matmul(a, b)

        def add():
            a, b = ops.ones((N, H), ms.float32), ops.ones((N, H), ms.float32)
            return lambda: ops.add(a, b)
        return matmul, add
    if name == "jax":
        import jax
        import jax.numpy as jnp

        from d2lgru.backends import get_backend
        get_backend("jax").set_threads()  # the adapter's thread settings, as d2lgru runs
        key = jax.random.PRNGKey(0)

        def matmul(m, k, n):
            a, b = jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n))
            return lambda: jnp.matmul(a, b).block_until_ready()

        def add():
            a, b = jnp.ones((N, H)), jnp.ones((N, H))
            return lambda: jnp.add(a, b).block_until_ready()
        return matmul, add
    return None


def _time(call, target_s=0.3, repeats=5) -> float:
    """Median seconds per call over ``repeats`` batches of calls lasting ~``target_s`` each."""
    for _ in range(3):
        call()
    tic, count = time.perf_counter(), 0
    while time.perf_counter() - tic < target_s / 3:
        call()
        count += 1
    per_batch = max(1, int(count * 3))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(per_batch):
            call()
        times.append((time.perf_counter() - tic) / per_batch)
    return statistics.median(times)


def measure(label, ops, quick=False) -> dict:
    matmul, add = ops
    out = {"gemm": {}}
    for name, (m, k, n) in SHAPES.items():
        if quick and m == 4096:  # a smoke run: a small "large" GEMM, figures not measurements
            m = k = n = 512
        seconds = _time(matmul(m, k, n), target_s=(0.01 if quick else 1.0) if m >= 512
                        else (0.01 if quick else 0.3), repeats=2 if quick else 5)
        out["gemm"][name] = {"shape": [m, k, n], "us": seconds * 1e6,
                             "gflops": 2 * m * k * n / seconds / 1e9}
    large = out["gemm"][next(k for k in SHAPES if k.startswith("large"))]["gflops"]
    out["quick"] = quick
    small = [v for k, v in out["gemm"].items() if not k.startswith("large")]
    for v in small:
        v["share_of_large"] = v["gflops"] / large
    # one step's recurrent products (35 x the three), and the tokens/s they alone allow
    step_s = T * sum(v["us"] for v in small) / 1e6
    out["recurrent_products_per_step_ms"] = step_s * 1e3
    out["tokens_per_s_if_only_recurrent_products"] = N * T / step_s
    out["add_us"] = _time(add()) * 1e6
    print(f"{label}:")
    for k, v in out["gemm"].items():
        share = f"  {v['share_of_large']:.0%} of large" if "share_of_large" in v else ""
        print(f"  {k:42s} {v['us']:9.1f} us  {v['gflops']:7.1f} GFLOP/s{share}")
    print(f"  35 steps x the three recurrent products: {step_s * 1e3:.2f} ms per batch "
          f"-> at most {out['tokens_per_s_if_only_recurrent_products']:,.0f} tokens/s")
    print(f"  [32,256] element-wise add: {out['add_us']:.1f} us")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.limits",
                                description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numpy",
                   choices=BACKENDS)
    p.add_argument("--out", help="add them to <backend>.json here (benchmarks.run's result), "
                                 "or write limits-<backend>.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: a 512 GEMM for the large one, short timings")
    args = p.parse_args(argv)
    result = {"format": "d2lgru.Limits/1", "machine": _machine.machine(), "backend": args.backend,
              "numpy": measure("numpy", _numpy_ops(), args.quick)}
    if args.backend != "numpy":
        result[args.backend] = measure(args.backend, _framework_ops(args.backend), args.quick)
    if args.out:
        print(f"wrote {store(result, Path(args.out))}")
    return 0


def store(result: dict, out: Path) -> Path:
    """``result`` as the ``limits`` of ``out/<backend>.json`` when that is a benchmark result,
    else as ``out/limits-<backend>.json``; written whole (a temporary file renamed over it)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['backend']}.json"
    record = json.loads(path.read_text()) if path.is_file() else {}
    if record.get("format") == BENCHMARK_FORMAT:
        record["limits"] = result
    else:
        path = out / f"limits-{result['backend']}.json"
        record = result
    return write_result(path, record)  # as run.py wrote it (indenting here had undone that)


if __name__ == "__main__":
    sys.exit(main())
