"""What the bare scripts share: random token batches and a standalone timer. NumPy only."""

from __future__ import annotations

import argparse
import time

import numpy as np

BOOK = {"vocab": 28, "hidden": 256, "batch_size": 32, "num_steps": 35}


def random_batches(vocab: int, batch_size: int, num_steps: int, count: int, seed: int = 0):
    """``count`` sequential-style minibatches ``(X, Y)`` of int64 ids ``[batch_size, num_steps]``."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch_size, count * num_steps + 1), dtype=np.int64)
    return [(np.ascontiguousarray(ids[:, i * num_steps:(i + 1) * num_steps]),
             np.ascontiguousarray(ids[:, i * num_steps + 1:(i + 1) * num_steps + 1]))
            for i in range(count)]


def trainer_factory(trainer_cls, modes):
    """The module's ``make_trainer(vocab, hidden, batch_size, num_steps, *, mode=modes[0],
    device, lr, clip, seed)``: checks the mode and builds ``trainer_cls`` with the rest."""
    def make_trainer(vocab, hidden, batch_size, num_steps, *, mode=modes[0], device="cpu",
                     lr=1.0, clip=1.0, seed=0):
        if mode not in modes:
            raise ValueError(f"mode must be one of {modes}, got {mode!r}")
        return trainer_cls(vocab, hidden, batch_size, num_steps, mode=mode, device=device, lr=lr,
                           clip=clip, seed=seed)
    return make_trainer


def standalone(module, argv=None):
    """``python -m benchmarks.bare.<name>``: tokens/s of every mode at one configuration."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.bare.{module.NAME}",
                                description=f"the book's concise GRU model in bare {module.NAME}")
    p.add_argument("--mode", action="append", choices=module.MODES,
                   help="mode to time (repeatable; default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--hidden", type=int, default=BOOK["hidden"])
    p.add_argument("--batch-size", type=int, default=BOOK["batch_size"])
    p.add_argument("--num-steps", type=int, default=BOOK["num_steps"])
    p.add_argument("--batches", type=int, default=8, help="batches per timed epoch (8)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    module.setup(args.threads, args.device)
    print(module.info())
    V = BOOK["vocab"]
    batches = random_batches(V, args.batch_size, args.num_steps, args.batches)
    tokens = args.batches * args.batch_size * args.num_steps
    for mode in args.mode or module.MODES:
        tic = time.perf_counter()
        trainer = module.make_trainer(V, args.hidden, args.batch_size, args.num_steps, mode=mode,
                                      device=args.device)
        losses = trainer.train_epoch(batches[:2])  # warm-up: builds, traces, compiles
        warm = time.perf_counter() - tic
        rates = []
        for _ in range(args.repeats):
            tic = time.perf_counter()
            losses = trainer.train_epoch(batches)
            rates.append(tokens / (time.perf_counter() - tic))
        print(f"{module.NAME} {mode:>10}: {np.median(rates):9.0f} tokens/s (min {min(rates):.0f}, "
              f"max {max(rates):.0f}; warm-up {warm:.1f} s; last loss {losses[-1]:.3f})")
