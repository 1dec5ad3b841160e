"""The book's training loop (``train_ch8``) around any backend's trainer, with portable checkpoints.

A checkpoint is a directory, written so that it is whole at every instant:

* ``model-eNNNN.npz`` — the model after epoch NNNN (:class:`~d2lgru.model.LMParams` format);
* ``vocab.json`` — the vocabulary;
* ``state.json`` — which model file is current, completed epochs, the run's configuration (data
  seed, batch size, steps, lr, clip, ...) and the per-epoch history. It is replaced last and
  atomically, so an interrupted write leaves the previous checkpoint in force.

Plain SGD keeps no optimizer state, and epoch ``e``'s batches depend only on ``(seed, e)``, so a
run resumed on any backend continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np

from . import data as d2data
from .backends import get_backend
from .model import LMParams, init_lm, one_hot
from ._io import write_atomic
from .spec import ParamsFileError
from .errors import D2lgruError, InvalidArgumentError

FORMAT_CHECKPOINT = "d2lgru.Checkpoint/1"
STATE_FILE = "state.json"
VOCAB_FILE = "vocab.json"


class CheckpointError(D2lgruError, ValueError):
    """A checkpoint directory is missing, incomplete or corrupt."""


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; the book's defaults."""

    hidden_size: int = 256
    num_layers: int = 1
    reset_after: bool = False
    gates: str = "both"  # "none" is the plain RNN (exercise 3); ablations are exercise 4
    batch_size: int = 32
    num_steps: int = 35
    max_tokens: int = 10000
    token: str = "char"
    use_random_iter: bool = False
    lr: float = 1.0
    clip: float = 1.0
    epochs: int = 500
    seed: int = 0
    data: str | None = None

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "batch_size", "num_steps", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InvalidArgumentError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("lr", "clip"):
            if not getattr(self, name) > 0:
                raise InvalidArgumentError(f"{name} must be positive, got {getattr(self, name)!r}")


@dataclasses.dataclass
class TrainResult:
    model: LMParams
    vocab: object
    config: TrainConfig
    history: list          # one dict per epoch: epoch, perplexity, tokens_per_sec, backend, impl
    epoch: int             # completed epochs
    epochs_run: int        # epochs run by this call (0 when the checkpoint already had them)
    tokens_per_sec: float  # over the epochs run in this call
    device: str
    mode: str

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


def choose_reset_after(backend, impl: str) -> bool:
    """The book's reset-before cell where the impl has it, else reset-after."""
    return not backend.check_impl(impl).reset_before


def train(config: TrainConfig, *, backend=None, impl="scratch", mode=None, device=None, out=None,
          resume=None, progress=None) -> TrainResult:
    """Train the book's model; with ``resume``, continue that checkpoint up to
    ``config.epochs`` total epochs (the rest of the configuration comes from the checkpoint)."""
    backend = get_backend(backend)
    if resume is not None:
        ckpt = load_checkpoint(resume)
        config = dataclasses.replace(ckpt["config"], epochs=config.epochs,
                                     data=config.data or ckpt["config"].data)
        model, vocab, history, start = ckpt["model"], ckpt["vocab"], ckpt["history"], ckpt["epoch"]
        out = resume if out is None else out
        loader, _ = d2data.load_data_time_machine(
            config.batch_size, config.num_steps, config.use_random_iter, config.max_tokens,
            token=config.token, seed=config.seed, path=config.data)
        if len(loader.vocab) != len(vocab) or list(loader.vocab.idx_to_token) != list(vocab.idx_to_token):
            raise CheckpointError(f"the corpus found now gives a different vocabulary than the one in "
                                  f"{resume}; point --data at the corpus the run was started with")
    else:
        loader, vocab = d2data.load_data_time_machine(
            config.batch_size, config.num_steps, config.use_random_iter, config.max_tokens,
            token=config.token, seed=config.seed, path=config.data)
        model = init_lm(len(vocab), config.hidden_size, num_layers=config.num_layers,
                        reset_after=config.reset_after, gates=config.gates, seed=config.seed)
        history, start = [], 0
    trainer = backend.make_trainer(model, impl=impl, lr=config.lr, clip=config.clip, mode=mode,
                                   device=device)
    tokens = run_time = 0.0
    epoch = start
    try:
        for epoch in range(start + 1, config.epochs + 1):
            loader.set_epoch(epoch - 1)
            batches = list(loader)
            tic = time.perf_counter()
            losses = trainer.train_epoch(batches, random_iter=config.use_random_iter)
            elapsed = time.perf_counter() - tic
            n = sum(X.size for X, _ in batches)
            tokens += n
            run_time += elapsed
            history.append({"epoch": epoch, "perplexity": float(math.exp(float(np.mean(losses)))),
                            "tokens_per_sec": n / elapsed, "backend": backend.name, "impl": impl})
            if out is not None:
                save_checkpoint(out, trainer.params(), vocab, config, history, epoch)
            if progress is not None:
                progress(epoch, config.epochs, history[-1])
    except KeyboardInterrupt:
        raise TrainingInterrupted(epoch - 1, out) from None
    return TrainResult(trainer.params(), vocab, config, history, epoch, epoch - start,
                       tokens / run_time if run_time else float("nan"), trainer.device, trainer.mode)


class TrainingInterrupted(Exception):
    def __init__(self, completed: int, out):
        self.completed, self.out = completed, out
        where = (f"the checkpoint in {out} holds {completed} completed epoch(s); continue with "
                 f"--resume {out}") if out is not None else "no --out was given, nothing was saved"
        super().__init__(f"training interrupted during epoch {completed + 1}: {where}")


# -- checkpoints --------------------------------------------------------------------------
def save_checkpoint(out, model: LMParams, vocab, config: TrainConfig, history, epoch: int) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_name = f"model-e{epoch:04d}.npz"
    model.save(out / model_name)
    vocab.to_json(out / VOCAB_FILE)
    state = {"format": FORMAT_CHECKPOINT, "epoch": epoch, "model": model_name,
             "config": dataclasses.asdict(config), "history": history}
    text = json.dumps(state, indent=1)
    write_atomic(out / STATE_FILE, lambda f: f.write(text), "w")
    for stale in out.glob("model-e*.npz"):  # older epochs, or one orphaned by an interrupt
        if stale.name != model_name:
            stale.unlink(missing_ok=True)
    return out


def load_checkpoint(path) -> dict:
    """``{"model", "vocab", "config", "history", "epoch"}`` from a checkpoint directory."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a d2lgru checkpoint (no {STATE_FILE} in it)")
    try:
        state = json.loads(state_file.read_text())
        if state.get("format") != FORMAT_CHECKPOINT:
            raise InvalidArgumentError(f"format is {state.get('format')!r}, expected {FORMAT_CHECKPOINT!r}")
        config = TrainConfig(**state["config"])
        model = LMParams.load(path / state["model"])
        vocab = d2data.Vocab.from_json(path / VOCAB_FILE)
        epoch, history = int(state["epoch"]), list(state["history"])
    except (ParamsFileError, KeyError, TypeError, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: {exc}") from None
    if len(vocab) != model.vocab_size:
        raise CheckpointError(f"checkpoint {path}: vocab.json has {len(vocab)} tokens but the model "
                              f"was trained on {model.vocab_size}")
    return {"model": model, "vocab": vocab, "config": config, "history": history, "epoch": epoch}


RESULT_FILE = "result.json"


def write_result(out, result: TrainResult, backend, impl: str, predictions: dict) -> Path:
    """``result.json`` beside the checkpoint: what the run ended with, for reports."""
    from . import __version__
    text = json.dumps({
        "backend": backend.name, "framework_version": backend.version(), "impl": impl,
        "mode": result.mode, "device": result.device, "epochs": result.epoch,
        "perplexity": result.perplexity, "settled_perplexity": result.settled_perplexity,
        "tokens_per_sec": result.tokens_per_sec,
        "predictions": predictions, "config": dataclasses.asdict(result.config),
        "d2lgru_version": __version__}, indent=1)
    return write_atomic(Path(out) / RESULT_FILE, lambda f: f.write(text), "w")


# -- prediction ---------------------------------------------------------------------------
def predict(prefix: str, num_preds: int, model: LMParams, vocab, *, backend=None,
            impl="scratch", token="char") -> str:
    """The book's ``predict_ch8``: warm the state up on the prefix, then greedily emit
    ``num_preds`` tokens, running the GRU on ``backend``."""
    backend = get_backend(backend)
    pieces = list(prefix) if token == "char" else prefix.split()
    if not pieces:
        raise InvalidArgumentError("the prefix is empty; give at least one token")
    unknown = sorted({p for p in pieces if p not in vocab.token_to_idx})
    if unknown:
        known = "".join(t for t in vocab.idx_to_token if len(t) == 1) if token == "char" else None
        valid = f"; valid characters: {known!r}" if known else ""
        raise InvalidArgumentError(f"the prefix has tokens the model never saw: "
                                   f"{', '.join(map(repr, unknown))}{valid}")
    if num_preds < 0:
        raise InvalidArgumentError(f"num_preds must be non-negative, got {num_preds}")
    ids = [vocab[p] for p in pieces]
    V = model.vocab_size

    def step(seq_ids, state):
        X = one_hot(np.asarray([seq_ids]), V, model.dtype)
        Y, state = backend.gru(model.gru, X, state, impl=impl)
        return Y[-1, 0] @ model.W_hq + model.b_q, state

    state = None
    if len(ids) > 1:
        _, state = step(ids[:-1], state)
    outputs = list(ids)
    for _ in range(num_preds):
        logits, state = step([outputs[-1]], state)
        outputs.append(int(np.argmax(logits)))
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
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
