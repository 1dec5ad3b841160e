"""The book's own code for the chapter's experiment, as a reference for d2lgru's runs.

    python -m docs.reproduce.book [--seeds 0-9] [--jobs 2] [--out DIR] [--data PATH]

Runs the classic edition's PyTorch GRU from scratch (chapter 9.1, with ``train_ch8``,
``grad_clipping``, ``sgd`` and ``predict_ch8`` of section 8.5 inlined, and the data pipeline of
8.2-8.3 from ``benchmarks/_book_pipeline.py``; nothing of d2lgru imported): batch 32, 35 steps, 256
hidden units, lr 1, clipping at 1, 500 epochs, one run per seed (``random.seed(S)`` and
``torch.manual_seed(S)``: the book sets none), one torch thread per run. Each run writes
``DIR/book/seed-S.json`` (the per-epoch perplexity and the two predictions), which ``d2lgru
reproduce --collect DIR`` summarises beside d2lgru's runs. Needs torch (``.tox/torch``); run it
from the repository root.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchmarks import _book_pipeline as book

REPO = Path(__file__).resolve().parents[2]

FORMAT = "d2lgru.BookRun/1"


class BookScratchGRU:
    """The book's GRU from scratch (9.1) with ``grad_clipping`` and ``sgd`` (8.5, 3.2) and the
    body of ``train_epoch_ch8`` (sequential partitioning), as one object: ``train_epoch`` is what
    the benchmarks time (``benchmarks.run``'s ``book`` row) and what ``run_book`` runs."""

    def __init__(self, vocab_size, num_hiddens, lr=1, device=None):
        import torch
        self.torch = torch
        self.vocab_size, self.num_hiddens, self.lr = vocab_size, num_hiddens, lr
        self.device = device = device or torch.device("cpu")
        num_inputs = num_outputs = vocab_size

        def normal(shape):  # 9.1 get_params
            return torch.randn(size=shape, device=device) * 0.01

        def three():
            return (normal((num_inputs, num_hiddens)), normal((num_hiddens, num_hiddens)),
                    torch.zeros(num_hiddens, device=device))

        W_xz, W_hz, b_z = three()
        W_xr, W_hr, b_r = three()
        W_xh, W_hh, b_h = three()
        W_hq = normal((num_hiddens, num_outputs))
        b_q = torch.zeros(num_outputs, device=device)
        self.params = [W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q]
        for param in self.params:
            param.requires_grad_(True)
        self.loss = torch.nn.CrossEntropyLoss()

    def gru(self, inputs, state):  # 9.1
        torch = self.torch
        W_xz, W_hz, b_z, W_xr, W_hr, b_r, W_xh, W_hh, b_h, W_hq, b_q = self.params
        H, = state
        outputs = []
        for X in inputs:
            Z = torch.sigmoid((X @ W_xz) + (H @ W_hz) + b_z)
            R = torch.sigmoid((X @ W_xr) + (H @ W_hr) + b_r)
            H_tilda = torch.tanh((X @ W_xh) + ((R * H) @ W_hh) + b_h)
            H = Z * H + (1 - Z) * H_tilda
            Y = H @ W_hq + b_q
            outputs.append(Y)
        return torch.cat(outputs, dim=0), (H,)

    def net(self, X, state):  # 8.5 RNNModelScratch.__call__
        X = self.torch.nn.functional.one_hot(X.T, self.vocab_size).type(self.torch.float32)
        return self.gru(X, state)

    def begin_state(self, batch_size):  # 9.1 init_gru_state
        return (self.torch.zeros((batch_size, self.num_hiddens), device=self.device),)

    def grad_clipping(self, theta):  # 8.5
        norm = self.torch.sqrt(sum(self.torch.sum((p.grad ** 2)) for p in self.params))
        if norm > theta:
            for param in self.params:
                param.grad[:] *= theta / norm

    def sgd(self, batch_size):  # 3.2
        with self.torch.no_grad():
            for param in self.params:
                param -= self.lr * param.grad / batch_size
                param.grad.zero_()

    def train_epoch(self, batches) -> list[float]:
        """8.5 ``train_epoch_ch8`` (``use_random_iter=False``): each batch's mean loss."""
        state, losses = None, []
        for X, Y in batches:
            X, Y = self.torch.as_tensor(X), self.torch.as_tensor(Y)
            if state is None:
                state = self.begin_state(X.shape[0])
            else:
                for s in state:
                    s.detach_()
            y = Y.T.reshape(-1)
            y_hat, state = self.net(X, state)
            l = self.loss(y_hat, y.long()).mean()
            l.backward()
            self.grad_clipping(1)
            self.sgd(batch_size=1)
            losses.append(float(l.detach()))
        return losses


def run_book(seed: int, text_file: str, epochs: int = 500) -> dict:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)

    # 8.2 and 8.3, transcribed in benchmarks/_book_pipeline.py (the offset is drawn here)
    corpus, vocab = book.load_corpus_time_machine(text_file, max_tokens=10000)
    batch_size, num_steps, num_hiddens, lr = 32, 35, 256, 1
    model = BookScratchGRU(len(vocab), num_hiddens, lr)

    def seq_data_iter_sequential(corpus, batch_size, num_steps):  # torch's flavour
        offset = random.randint(0, num_steps)
        for X, Y in book.seq_data_iter_sequential(corpus, batch_size, num_steps, offset):
            yield torch.as_tensor(X), torch.as_tensor(Y)

    history, tokens, seconds = [], 0, 0.0
    for _ in range(epochs):  # 8.5 train_ch8
        tic = time.perf_counter()
        batches = list(seq_data_iter_sequential(corpus, batch_size, num_steps))
        losses = model.train_epoch(batches)
        seconds += time.perf_counter() - tic
        total, count = 0.0, 0
        for l, (_, Y) in zip(losses, batches):
            total += l * Y.numel()
            count += Y.numel()
        tokens += count
        history.append(math.exp(total / count))

    def predict_ch8(prefix, num_preds):  # 8.5
        state = model.begin_state(1)
        outputs = [vocab[prefix[0]]]

        def get_input():
            return torch.tensor([outputs[-1]], device=model.device).reshape((1, 1))

        with torch.no_grad():
            for y in prefix[1:]:
                _, state = model.net(get_input(), state)
                outputs.append(vocab[y])
            for _ in range(num_preds):
                y, state = model.net(get_input(), state)
                outputs.append(int(y.argmax(dim=1).reshape(1)))
        return "".join(vocab.idx_to_token[i] for i in outputs)

    return {"format": FORMAT, "code": "d2l classic edition, 9.1 GRU from scratch (PyTorch)",
            "torch": torch.__version__, "seed": seed, "epochs": epochs,
            "tokens_per_sec": tokens / seconds, "perplexity": history,
            "predictions": {p: predict_ch8(p, 50) for p in ("time traveller", "traveller")}}


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m docs.reproduce.book",
                                description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0-9", help="e.g. 0-9 or 0,3,7 (default 0-9)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (2)")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--out", default=str(REPO / "docs" / "reproduce"),
                   help="runs go to OUT/book/seed-S.json (default: this folder)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                   help="timemachine.txt, or the directory that holds it")
    args = p.parse_args(argv)
    text_file = Path(args.data)
    if text_file.is_dir():
        text_file = text_file / "timemachine.txt"
    if not text_file.is_file():
        p.error(f"no Time Machine text at {text_file}; pass --data FILE")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError:
        p.error(f"--seeds takes numbers and ranges like 0-9 or 0,3,7, got {args.seeds!r}")
    out = Path(args.out) / "book"
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {s: pool.submit(run_book, s, str(text_file), args.epochs) for s in seeds}
        for seed, future in futures.items():
            result = future.result()
            (out / f"seed-{seed}.json").write_text(json.dumps(result, indent=1) + "\n")
            print(f"seed {seed}: perplexity {result['perplexity'][-1]:.3f} at epoch "
                  f"{result['epochs']}, {result['tokens_per_sec']:.0f} tokens/sec", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
