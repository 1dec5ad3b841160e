"""The book's training loop (``train_ch8``) around any backend's trainer, with portable checkpoints.

The checkpoint directory (its format, atomic writes, lock and checks) is
:mod:`d2lgru.checkpoint`. Plain SGD keeps no optimizer state, and epoch ``e``'s batches depend
only on ``(seed, e)``, so a run resumed on any backend continues exactly where it stopped.

Nothing a run does loses an earlier one: a directory that holds a run is not started over
unless ``overwrite``; an epoch whose loss or weights are not finite is not saved, and training
stops with :class:`TrainingDiverged` naming the epoch, the last checkpoint kept and what to try.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from . import data as d2data
from ._io import write_atomic
from .backends import get_backend
from .config import TrainConfig
from .checkpoint import (FORMAT_CHECKPOINT, RESULT_FILE, STATE_FILE, VOCAB_FILE,  # noqa: F401
                         CheckpointBusyError, CheckpointError, CheckpointWriter, open_run)
from .checkpoint import load as load_checkpoint  # noqa: F401  (public since 0.1)
from .distributed import World, check_batch_size, shard
from .errors import D2lgruError, InvalidArgumentError
from .model import LMParams, init_lm

#: the largest number of tokens :func:`predict` emits in one call
MAX_PREDS = 100_000


@dataclasses.dataclass
class TrainResult:
    model: LMParams
    vocab: object
    config: TrainConfig
    history: list          # one dict per epoch: epoch, perplexity, tokens_per_sec, seconds
                           # (the epoch's training time; absent in older runs), backend, impl
    epoch: int             # completed epochs
    epochs_run: int        # epochs run by this call (0 when the checkpoint already had them)
    tokens_per_sec: float  # over the epochs run in this call (none: the checkpoint's epochs)
    device: str
    mode: str
    threads: int | None = None         # the thread count at the end (a policy count follows load)
    threads_source: str | None = None  # argument, $D2LGRU_THREADS, policy or fixed
    world_size: int = 1                # data-parallel processes that trained it (information)

    @property
    def perplexity(self) -> float:
        """The last epoch's perplexity: the number the book prints."""
        return self.history[-1]["perplexity"] if self.history else float("nan")

    @property
    def settled_perplexity(self) -> float:
        """The median perplexity of the last :data:`SETTLED_EPOCHS` epochs (see :func:`settled`)."""
        return settled([h["perplexity"] for h in self.history])


#: how many closing epochs :func:`settled` looks at
SETTLED_EPOCHS = 10


def settled(perplexities, epochs: int = SETTLED_EPOCHS) -> float:
    """The median of the last ``epochs`` values of a perplexity curve (all of it when shorter).

    SGD at the book's learning rate of 1 makes the loss spike late in training for a few epochs
    at a time (perplexity 1.05 -> 1.3, the book's own code included), so the last epoch alone
    sometimes lands in one; the median of the last ten is where the run settled, unmoved by a
    spike of up to four epochs.
    """
    tail = list(perplexities)[-epochs:]
    return float(np.median(tail)) if tail else float("nan")


def perplexity(mean_loss: float) -> float:
    """``exp(mean_loss)`` without overflow: ``inf`` past float64's range (``nan`` stays)."""
    mean_loss = float(mean_loss)
    return math.exp(mean_loss) if not mean_loss >= 709.78 else math.inf


def choose_reset_after(backend, impl: str) -> bool:
    """The book's reset-before cell where the impl has it, else reset-after."""
    return not backend.check_impl(impl).reset_before


def nothing_saved(out) -> str:
    """Why an interrupted run left no checkpoint in ``out`` (None: no --out)."""
    if out:
        return f"no epoch had finished, so nothing was saved in {out}"
    return "no --out was given, so nothing was saved"


class TrainingInterrupted(D2lgruError):
    """Ctrl-C: ``completed`` epochs are in the checkpoint at ``out`` (when ``saved``)."""

    def __init__(self, completed: int, out, saved: bool):
        self.completed, self.out, self.saved = completed, out, saved
        where = (f"the checkpoint in {out} holds {completed} completed epoch(s)" if saved
                 else nothing_saved(out))
        super().__init__(f"training interrupted during epoch {completed + 1}: {where}")


class TrainingDiverged(D2lgruError):
    """An epoch's loss, perplexity or weights became NaN or infinite; that epoch was not
    saved."""

    def __init__(self, epoch: int, what: str, out, saved_epoch: int, config: TrainConfig):
        self.epoch, self.out, self.saved_epoch = epoch, out, saved_epoch
        kept = (f"the checkpoint in {out} keeps epoch {saved_epoch}" if out is not None and
                saved_epoch > 0 else "nothing was saved")
        super().__init__(f"training diverged in epoch {epoch} ({what}); {kept}; try a smaller "
                         f"--lr (now {config.lr:g}) or --clip (now {config.clip:g})")


class CheckpointWriteError(D2lgruError, OSError):
    """An epoch's checkpoint could not be written; the epochs saved before it stand."""

    def __init__(self, epoch: int, out, saved_epoch: int, exc: OSError):
        kept = (f"the checkpoint keeps epoch {saved_epoch}: fix that, then continue with "
                f"--resume {out}" if saved_epoch > 0 else "nothing was saved")
        super().__init__(exc.errno, f"cannot save epoch {epoch} in {out} "
                                    f"({exc.strerror or exc}); {kept}")

    def __str__(self) -> str:
        return self.strerror


def corpus_sha1(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resolve_corpus(config: TrainConfig) -> Path:
    return d2data.find_time_machine(config.data)


#: configuration fields a resumed run takes from its checkpoint (the rest may change)
FIXED_ON_RESUME = ("hidden_size", "num_layers", "reset_after", "gates", "batch_size", "num_steps",
                   "max_tokens", "token", "use_random_iter", "lr", "clip", "seed")


#: the command line's name of a configuration field, where it is not the field's own
_FLAG_NAMES = {"hidden_size": "hidden", "num_layers": "layers", "use_random_iter": "random-iter",
               "reset_after": "reset-after/--reset-before", "gates": "gates/--cell"}


def resume_conflicts(saved: TrainConfig, expect: dict) -> list[str]:
    """``--flag: checkpoint value, given value`` for every field in ``expect`` that differs."""
    return [f"--{_FLAG_NAMES.get(k, k.replace('_', '-'))}: checkpoint {getattr(saved, k)!r}, "
            f"given {v!r}"
            for k, v in expect.items() if k in FIXED_ON_RESUME and getattr(saved, k) != v]


def check_memory(config: TrainConfig, vocab_size: int, dtype=np.float32) -> None:
    """Refuse a model that cannot fit: parameters (held ~4 times: model, trainer, gradients,
    checkpoint) plus the step's activations, against the memory the machine has available."""
    H, L, V = config.hidden_size, config.num_layers, vocab_size
    params = sum(3 * (I + H) * H + 6 * H for I in [V] + [H] * (L - 1)) + H * V + V
    acts = 8 * config.batch_size * config.num_steps * H * L + config.batch_size * \
        config.num_steps * V * 4
    need = (4 * params + acts) * np.dtype(dtype).itemsize
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > max(avail, total // 2):
        raise InvalidArgumentError(
            f"a model with --hidden {H} and --layers {L} needs about {need / 2**30:.1f} GiB, more "
            f"than the {max(avail, total // 2) / 2**30:.1f} GiB this machine has available; "
            f"choose a smaller --hidden or fewer --layers")


def train(config: TrainConfig, *, backend=None, impl="scratch", mode=None, device=None, out=None,
          resume=None, progress=None, overwrite: bool = False, expect: dict | None = None,
          data_changed_ok: bool = False, format: str | None = None, world=None) -> TrainResult:
    """Train the book's model; with ``resume``, continue that checkpoint up to
    ``config.epochs`` total epochs (the rest of the configuration comes from the checkpoint,
    and ``expect``, the fields a caller insists on, must agree with it).

    ``out`` (a directory, or an open :class:`~d2lgru.checkpoint.CheckpointWriter`) is written
    every epoch by this process alone: a second writer gets
    :class:`~d2lgru.checkpoint.CheckpointBusyError`, and a directory that already holds a run
    is an error unless it is the one resumed or ``overwrite`` is set. ``format`` (``npz``, the
    default, or ``safetensors``) is the model files' format; a resumed run keeps its own.

    ``world`` (a :class:`~d2lgru.distributed.World` of several processes, each calling this with
    the same arguments) trains data-parallel: every rank reads the same corpus and checkpoint
    and trains its rows of each batch; rank 0 alone opens ``out``, writes it and calls
    ``progress``. The checkpoint records nothing about the world, so a run continues on any
    number of processes."""
    backend = get_backend(backend)
    world = world if world is not None else World()
    if resume is None:  # a resumed run's batch size is its checkpoint's: checked in _train
        check_batch_size(config.batch_size, world)
    if out is None and resume is not None:
        out = resume
    if not world.is_chief:
        out = progress = None  # rank 0 alone writes and reports
    if isinstance(out, CheckpointWriter):
        return _train(config, backend, impl, mode, device, out, resume, progress,
                      expect or {}, data_changed_ok, world)
    with open_run(out, resume=resume, overwrite=overwrite, format=format) as writer:
        return _train(config, backend, impl, mode, device, writer, resume, progress,
                      expect or {}, data_changed_ok, world)


def _train(config, backend, impl, mode, device, writer, resume, progress, expect,
           data_changed_ok, world):
    out = writer.path if writer is not None else None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        conflicts = resume_conflicts(ckpt["config"], expect)
        if conflicts:
            raise CheckpointError(f"--resume {resume} conflicts with the options given ("
                                  f"{'; '.join(conflicts)}); drop them to continue the run as it "
                                  f"was, or start a new run with --out")
        config = dataclasses.replace(ckpt["config"], epochs=config.epochs,
                                     data=config.data or ckpt["config"].data)
        model, vocab, history, start = ckpt["model"], ckpt["vocab"], ckpt["history"], ckpt["epoch"]
        corpus = _resolve_corpus(config)
        sha1 = corpus_sha1(corpus)
        if config.corpus_sha1 not in (None, sha1):
            if not data_changed_ok:
                raise CheckpointError(
                    f"the corpus {corpus} has SHA-1 {sha1}, but the run in {resume} was trained on "
                    f"one with SHA-1 {config.corpus_sha1}; point --data at that corpus, or pass "
                    f"--data-changed-ok to continue on this one")
        config = dataclasses.replace(config, corpus_sha1=sha1)
        loader, _ = d2data.load_data_time_machine(
            config.batch_size, config.num_steps, config.use_random_iter, config.max_tokens,
            token=config.token, seed=config.seed, path=corpus)
        if list(loader.vocab.idx_to_token) != list(vocab.idx_to_token):
            raise CheckpointError(f"the corpus found now gives a different vocabulary than the one in "
                                  f"{resume}; point --data at the corpus the run was started with")
    else:
        corpus = _resolve_corpus(config)
        config = dataclasses.replace(config, corpus_sha1=corpus_sha1(corpus))
        loader, vocab = d2data.load_data_time_machine(
            config.batch_size, config.num_steps, config.use_random_iter, config.max_tokens,
            token=config.token, seed=config.seed, path=corpus)
        check_memory(config, len(vocab))
        model = init_lm(len(vocab), config.hidden_size, num_layers=config.num_layers,
                        reset_after=config.reset_after, gates=config.gates, seed=config.seed)
        history, start = [], 0
    # a resumed run keeps its batch size, which the world must divide too
    check_batch_size(config.batch_size, world)
    trainer = backend.make_trainer(model, impl=impl, lr=config.lr, clip=config.clip, mode=mode,
                                   device=device, world=world)
    if world.distributed:
        _check_same_start(trainer, start, world)
    tokens = run_time = 0.0
    saved = start if writer is not None and writer.resumed else 0
    epoch = start
    try:
        for epoch in range(start + 1, config.epochs + 1):
            loader.set_epoch(epoch - 1)
            batches = list(loader)
            tic = time.perf_counter()
            losses = trainer.train_epoch(shard(batches, world) if world.distributed else batches,
                                         random_iter=config.use_random_iter)
            elapsed = time.perf_counter() - tic
            with np.errstate(all="ignore"):
                mean_loss = float(np.mean(losses))
            ppl = perplexity(mean_loss)
            if not math.isfinite(ppl):  # NaN, or a loss past ~710 nats, where exp overflows
                raise TrainingDiverged(epoch, f"its mean loss is {mean_loss:.6g}, its perplexity "
                                              f"{ppl}", out, saved, config)
            n = sum(X.size for X, _ in batches)  # the global batches: every rank's tokens
            tokens += n
            run_time += elapsed
            history.append({"epoch": epoch, "perplexity": ppl,
                            "tokens_per_sec": n / elapsed, "seconds": elapsed,
                            "backend": backend.name, "impl": impl, "world_size": world.size})
            if writer is not None:
                params = trainer.params()
                bad = _first_non_finite(params)
                if bad:
                    history.pop()
                    raise TrainingDiverged(epoch, f"{bad} is not finite", out, saved, config)
                try:
                    writer.save(params, vocab, config, history, epoch)
                except OSError as exc:  # a full disk, a lost mount: what is saved still stands
                    raise CheckpointWriteError(epoch, out, saved, exc) from exc
                saved = epoch
            if progress is not None:
                progress(epoch, config.epochs, history[-1])
    except KeyboardInterrupt:
        raise TrainingInterrupted(epoch - 1, out, saved > 0) from None
    final = trainer.params()
    bad = _first_non_finite(final)
    if bad:
        raise TrainingDiverged(epoch, f"{bad} is not finite", out, saved, config)
    if not run_time:  # nothing left to train: the rate of every epoch the checkpoint holds
        timed = [(h["tokens_per_sec"], h["seconds"]) for h in history
                 if all(isinstance(h.get(k), (int, float)) and math.isfinite(h[k]) and h[k] > 0
                        for k in ("tokens_per_sec", "seconds"))]
        tokens, run_time = sum(r * s for r, s in timed), sum(s for _, s in timed)
    return TrainResult(final, vocab, config, history, epoch, epoch - start,
                       tokens / run_time if run_time else float("nan"), trainer.device, trainer.mode,
                       backend.threads, backend.threads_source, world.size)


def _check_same_start(trainer, start: int, world) -> None:
    """Every rank must continue from the same epoch (they read the same checkpoint, but a
    directory replaced between their reads would split them): one all-reduce says."""
    mean = float(trainer._all_reduce_host(np.asarray([start], np.float32))[0])
    if mean != start:
        raise CheckpointError(f"rank {world.rank} of {world.size} resumes after epoch {start} "
                              f"but the ranks' mean is {mean:g}: the checkpoint changed while "
                              f"they read it; start again")


def _first_non_finite(model: LMParams) -> str | None:
    for name, a in model.to_arrays().items():
        if not np.isfinite(a).all():
            return f"weight {name}"
    return None




def write_result(out, result: TrainResult, backend, impl: str, predictions: dict) -> Path:
    """``result.json`` beside the checkpoint: what the run ended with, for reports."""
    from . import __version__
    text = json.dumps({
        "backend": backend.name, "framework_version": backend.version(), "impl": impl,
        "mode": result.mode, "device": result.device, "epochs": result.epoch,
        "threads": result.threads, "threads_source": result.threads_source,
        "world_size": result.world_size,
        "perplexity": result.perplexity, "settled_perplexity": result.settled_perplexity,
        "tokens_per_sec": result.tokens_per_sec,
        "predictions": predictions, "config": dataclasses.asdict(result.config),
        "d2lgru_version": __version__}, indent=1)
    path = out.path if isinstance(out, CheckpointWriter) else Path(out)
    return write_atomic(path / RESULT_FILE, lambda f: f.write(text), "w")


# -- prediction ---------------------------------------------------------------------------
def normalize_prefix(prefix: str, token: str = "char") -> list[str]:
    """A prefix cleaned as the corpus was (the book's cleaning: letters lowercased, every run of
    other characters one space), split into tokens."""
    if not isinstance(prefix, str):
        raise InvalidArgumentError(f"the prefix must be text, got {type(prefix).__name__}")
    text = d2data.clean_text(prefix)
    return list(text) if token == "char" else text.split()


def encode_text(text: str, vocab, token: str = "char", what: str = "the prefix") -> list[int]:
    """The ids of ``text`` cleaned as the corpus was (:func:`normalize_prefix`); a text with no
    letters, or with tokens ``vocab`` lacks, is an :class:`InvalidArgumentError` that says so
    (``what`` names the text in it)."""
    pieces = normalize_prefix(text, token)
    if not any(p.strip() for p in pieces):
        raise InvalidArgumentError(f"{what} {text!r} has no letters A-Z (the corpus was cleaned "
                                   f"to those and spaces); give at least one "
                                   f"{'character' if token == 'char' else 'word'} of the corpus")
    unknown = sorted({p for p in pieces if p not in vocab.token_to_idx})
    if unknown:
        known = "".join(t for t in vocab.idx_to_token if len(t) == 1) if token == "char" else None
        valid = f"; valid characters: {known!r}" if known else ""
        raise InvalidArgumentError(f"{what} has tokens the model never saw: "
                                   f"{', '.join(map(repr, unknown))}{valid}")
    return [vocab[p] for p in pieces]


def predict(prefix: str, num_preds: int, model: LMParams, vocab, *, backend=None,
            impl="scratch", token="char") -> str:
    """The book's ``predict_ch8``: warm the state up on the prefix, then greedily emit
    ``num_preds`` tokens, running the model on ``backend`` (its :meth:`make_predictor`). The
    prefix is cleaned as the corpus was (``"Time Traveller!"`` reads as ``"time traveller "``)."""
    backend = get_backend(backend)
    ids = encode_text(prefix, vocab, token)
    if isinstance(num_preds, bool) or not isinstance(num_preds, int) or \
            not 0 <= num_preds <= MAX_PREDS:
        raise InvalidArgumentError(f"num_preds must be an integer in [0, {MAX_PREDS}], got "
                                   f"{num_preds!r}")
    predictor = backend.make_predictor(model, impl=impl)  # the model enters the framework once
    state = None
    if len(ids) > 1:
        _, state = predictor.step(np.asarray([ids[:-1]]), state)
    outputs = list(ids)
    for _ in range(num_preds):
        logits, state = predictor.step(np.asarray([[outputs[-1]]]), state)
        outputs.append(int(np.argmax(logits[0])))
    sep = "" if token == "char" else " "
    return sep.join(vocab.idx_to_token[i] for i in outputs)


def plot_history(history, path, title="") -> Path:
    """A PNG of perplexity per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot([h["epoch"] for h in history], [h["perplexity"] for h in history])
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = write_atomic(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return path
