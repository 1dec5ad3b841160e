"""The checkpoint directory: one module owns its format, its writes, its lock and its checks.

A checkpoint is a directory that is whole at every instant:

* ``model-eNNNN.npz`` -- the model after epoch NNNN (:class:`~d2lgru.model.LMParams` format), or
  ``model-eNNNN.safetensors`` in a run started with ``format="safetensors"`` (a run keeps its
  format when resumed; ``state.json`` names the file, so the format needs no key of its own and
  readers that predate it still read ``.npz`` runs). Epoch 0 is a model that d2lgru did not
  train: one imported (:func:`write_checkpoint`), with an empty history;
* ``vocab.json`` -- the vocabulary;
* ``state.json`` -- format ``d2lgru.Checkpoint/1``: which model file is current (``model``), the
  one before it (``previous``, kept until the next state is written, so a reader that read the
  previous state still finds its model), completed epochs, the run's configuration (data seed,
  batch size, steps, lr, clip, the corpus' SHA-1, ...) and the per-epoch history. It is replaced
  last and atomically, so an interrupted write leaves the previous checkpoint in force. ``stale``
  (optional) names the model file of two epochs back, which the writer deletes right after
  writing this state; a run stopped in between (Ctrl-C, SIGKILL) leaves that file, and the next
  writer of the directory (``--resume`` or ``--overwrite``) deletes it. Readers ignore the key.
* ``.d2lgru.lock`` -- held (``fcntl.flock``) by the one process writing the directory; the
  operating system releases it when that process ends, however it ends.

Guarantees (each tested in ``tests/test_checkpoint.py``): one writer per directory; a directory
that holds a checkpoint is never started over unless asked (``overwrite``); d2lgru deletes only
files it wrote (model files that ``state.json`` names, its own temporary files) and leaves none of
them behind once a run is resumed, however it stopped; the model path
in ``state.json`` is a plain file name inside the directory; every value read back is checked
(shape of the JSON, integer epochs, a contiguous history, finite weights); nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from pathlib import Path

from ._io import make_directory, write_atomic
from .config import TrainConfig
from .errors import D2lgruError
from .spec import file_format

FORMAT_CHECKPOINT = "d2lgru.Checkpoint/1"
STATE_FILE = "state.json"
VOCAB_FILE = "vocab.json"
LOCK_FILE = ".d2lgru.lock"
RESULT_FILE = "result.json"
PLOT_FILE = "perplexity.png"
#: the files a run writes; a directory holding any of them already holds a run
RUN_FILES = (STATE_FILE, VOCAB_FILE, RESULT_FILE, PLOT_FILE)
_MODEL_NAME = re.compile(r"model-e(\d{4,})\.(npz|safetensors)")
#: temporary files of write_atomic (".<name>.<random>.tmp") for the files a checkpoint holds
_TEMP_NAME = re.compile(r"\.(model-e\d{4,}\.(?:npz|safetensors)|state\.json|vocab\.json|result\.json|"
                        r"perplexity\.png)\..+\.tmp")


class CheckpointError(D2lgruError, ValueError):
    """A checkpoint directory is missing, incomplete, corrupt, or in use."""


class CheckpointBusyError(CheckpointError):
    """Another process is writing the checkpoint directory."""


def model_file(epoch: int, format: str = "npz") -> str:
    return f"model-e{epoch:04d}.{format}"


def model_format(name: str) -> str:
    """``"npz"`` or ``"safetensors"``: the format of a model file named by ``state.json``."""
    return _MODEL_NAME.fullmatch(name).group(2)


def has_run(path) -> bool:
    """Whether ``path`` already holds (part of) a d2lgru run: a state, vocabulary, result or
    model file."""
    path = Path(path)
    if not path.is_dir():
        return False
    return any((path / name).exists() for name in RUN_FILES) or \
        any(_MODEL_NAME.fullmatch(p.name) for p in path.iterdir())


def foreign_files(path) -> list[str]:
    """The names in directory ``path`` that no d2lgru run writes, when it holds no run yet:
    the user's files a new run would mix its own with (``[]`` for a missing or empty
    directory, one holding only a lock or temporary files of d2lgru's, and one that holds a
    run, whose --resume/--overwrite rules stand)."""
    path = Path(path)
    if not path.is_dir() or has_run(path):
        return []
    return sorted(p.name for p in path.iterdir()
                  if p.name != LOCK_FILE and not _TEMP_NAME.fullmatch(p.name))


class CheckpointWriter:
    """The one writer of a checkpoint directory: holds its lock from :meth:`open` to
    :meth:`close` (or the end of the process) and writes each epoch."""

    def __init__(self, path, *, overwrite: bool = False, resume: bool = False,
                 format: str | None = None):
        self.path = Path(path)
        if format is not None:
            file_format(self.path, format)  # a bad name fails here, before the directory is touched
        #: the model files' format (``npz`` unless given; a resumed run keeps its own)
        self.format = format or "npz"
        self._format_given = format is not None
        #: whether the directory's own checkpoint is being continued
        self.resumed = resume
        self._lock_fd = None
        self._current = self._previous = None
        self._vocab_written = False
        self._overwrite, self._resume = overwrite, resume

    # -- lifecycle ----------------------------------------------------------------------
    def open(self) -> "CheckpointWriter":
        path = self.path
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path} is a file, not a directory; name a directory for the "
                                  f"checkpoint")
        make_directory(path, "the checkpoint directory", CheckpointError)
        self._lock()
        try:
            self._remove_stale_temporaries()
            if self._resume:
                state = read_state(path)
                self._current, self._previous = state["model"], state.get("previous")
                self._finish_deletion(state)
                kept = model_format(self._current)
                if self._format_given and self.format != kept:
                    raise CheckpointError(
                        f"the run in {path} saves its models as {kept} and a resumed run keeps "
                        f"that format; drop --format {self.format} or start a new run with --out")
                self.format = kept
            elif has_run(path):
                if not self._overwrite:
                    raise CheckpointError(
                        f"{path} already holds a run ({describe_run(path)}); continue it with "
                        f"--resume {path}, start over with --overwrite, or choose another --out")
                self._clear_run()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _lock(self) -> None:
        import fcntl
        lock = self.path / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:  # a directory this user cannot write, a read-only file system
            raise CheckpointError(f"cannot write in the checkpoint directory {self.path}: "
                                  f"{exc.strerror or exc}; choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CheckpointBusyError(
                f"{self.path} is being written by another d2lgru process{holder}; wait for it "
                f"to finish or stop it, or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of writers that died mid-write (SIGKILL, power loss): with the lock
        held no other writer is alive, so every such file is stale."""
        for p in self.path.iterdir():
            if _TEMP_NAME.fullmatch(p.name):
                p.unlink(missing_ok=True)

    def _clear_run(self) -> None:
        """``--overwrite``: remove what a run wrote (the state, the model files it names, the
        vocabulary, result and plot) and nothing else."""
        try:
            state = read_state(self.path)
            names = {state["model"], state.get("previous"), _stale_name(state)} - {None}
        except CheckpointError:
            names = set()
        for name in [*names, STATE_FILE, VOCAB_FILE, RESULT_FILE, PLOT_FILE]:
            (self.path / name).unlink(missing_ok=True)

    def _finish_deletion(self, state: dict) -> None:
        """Delete the model file ``state`` was written to retire, when the run that wrote it
        stopped before deleting it."""
        stale = _stale_name(state)
        if stale is not None and stale not in (state["model"], state.get("previous")):
            (self.path / stale).unlink(missing_ok=True)

    # -- writing ------------------------------------------------------------------------
    def save(self, model, vocab, config, history, epoch: int) -> Path:
        """Write epoch ``epoch``: its model file, the vocabulary once, then ``state.json``
        (atomically, last); then delete the model file two epochs back, which no state
        names any more but the new one (as ``stale``, for a writer that finds it left)."""
        if self._lock_fd is None:
            raise RuntimeError("CheckpointWriter.save called before open()")
        name = model_file(epoch, self.format)
        model.save(self.path / name)
        if not self._vocab_written:
            vocab.to_json(self.path / VOCAB_FILE)
            self._vocab_written = True
        previous = self._current if self._current != name else self._previous
        stale = self._previous if self._previous not in (name, previous) else None
        state = {"format": FORMAT_CHECKPOINT, "epoch": epoch, "model": name,
                 "previous": previous, "config": dataclasses.asdict(config), "history": history}
        if stale is not None:
            state["stale"] = stale
        text = json.dumps(state, indent=1)
        write_atomic(self.path / STATE_FILE, lambda f: f.write(text), "w")
        self._current, self._previous = name, previous
        if stale is not None:
            (self.path / stale).unlink(missing_ok=True)
        return self.path / name


def open_run(out, *, resume=None, overwrite: bool = False, format: str | None = None):
    """The writer of run directory ``out`` as a context manager (``None`` without ``out``):
    continuing ``resume`` when it is the same directory, else a new run there; ``format``
    (``npz`` or ``safetensors``) is the model files' format."""
    if out is None:
        return contextlib.nullcontext()  # `with ... as writer`: None, nothing written
    same = resume is not None and os.path.abspath(out) == os.path.abspath(resume)
    return CheckpointWriter(out, overwrite=overwrite, resume=same, format=format)


def write_checkpoint(path, model, vocab, config, *, epoch: int = 0, history=(),
                     format: str | None = None, overwrite: bool = False) -> Path:
    """A checkpoint directory for a model that was not trained here (an imported one): epoch
    ``epoch`` (0: no d2lgru training) with its ``history``, which ``predict``, ``train
    --resume`` and ``conformance`` read like any run. Returns the model file's path."""
    with CheckpointWriter(path, overwrite=overwrite, format=format) as writer:
        return writer.save(model, vocab, config, list(history), epoch)


def _stale_name(state: dict):
    """The model file ``state`` retires (its ``stale``), or ``None``: a value that is not a
    model file's name is ignored, never deleted."""
    stale = state.get("stale")
    return stale if isinstance(stale, str) and _MODEL_NAME.fullmatch(stale) else None


def _read_holder(fd) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


# -- reading ------------------------------------------------------------------------------

def describe_run(path) -> str:
    try:
        state = read_state(path)
        return f"{state['epoch']} completed epoch(s)"
    except CheckpointError:
        return "files of a d2lgru run"


def _plain_name(value, key: str, path: Path) -> str:
    if not isinstance(value, str) or not _MODEL_NAME.fullmatch(value):
        raise CheckpointError(f"checkpoint {path} is corrupt: state.json's {key!r} must be a "
                              f"model file name like 'model-e0001.npz' (or .safetensors) inside "
                              f"the directory, got {value!r}")
    return value


def read_state(path) -> dict:
    """``state.json`` of the checkpoint at ``path``, checked for shape (not the files it names)."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        if path.exists() and not path.is_dir():
            raise CheckpointError(f"{path} is a file, not a d2lgru checkpoint directory")
        if not path.exists():
            raise CheckpointError(f"{path} is not a d2lgru checkpoint: it does not exist")
        raise CheckpointError(f"{path} is not a d2lgru checkpoint (no {STATE_FILE} in it)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: {STATE_FILE} is "
                              f"unreadable ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: {STATE_FILE} holds "
                              f"{type(state).__name__}, not an object")
    if state.get("format") != FORMAT_CHECKPOINT:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: format is "
                              f"{state.get('format')!r}, expected {FORMAT_CHECKPOINT!r}")
    epoch = state.get("epoch")
    if type(epoch) is not int or epoch < 0:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: 'epoch' must be a "
                              f"positive integer, got {epoch!r} (0 only for an imported model)")
    _plain_name(state.get("model"), "model", path)
    if state.get("previous") is not None:
        _plain_name(state["previous"], "previous", path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: 'config' must be an "
                              f"object, got {state.get('config')!r:.60}")
    history = state.get("history")
    if not isinstance(history, list) or len(history) != epoch or not all(
            isinstance(h, dict) and type(h.get("epoch")) is int and h["epoch"] == i + 1
            and isinstance(h.get("perplexity"), (int, float))
            for i, h in enumerate(history)):
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: 'history' must list "
                              f"epochs 1..{epoch} in order, each with its perplexity")
    return state


def run_config(path, state: dict | None = None) -> TrainConfig:
    """The configuration of the run at ``path`` (from ``state``, its :func:`read_state`, when
    given); a missing or invalid one is a :class:`CheckpointError`."""
    state = read_state(path) if state is None else state
    try:
        return TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: its config is "
                              f"invalid ({exc})") from None


def load(path, *, retries: int = 3) -> dict:
    """``{"model", "vocab", "config", "history", "epoch", "state"}`` from a checkpoint
    directory; every failure is a :class:`CheckpointError`. A reader racing the writer re-reads
    ``state.json`` when the model it named was just replaced."""
    from .data import Vocab
    from .model import LMParams
    from .spec import ParamsFileError
    path = Path(path)
    for attempt in range(retries + 1):
        state = read_state(path)
        model_path = path / state["model"]
        try:
            model = LMParams.load(model_path)
            break
        except (ParamsFileError, TypeError, ValueError, OSError) as exc:
            # the writer deletes a model two states after naming it: a reader delayed that
            # long finds it gone (before or during its load) and reads the newer state
            if model_path.is_file() or attempt == retries:
                raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: {exc}") from None
        time.sleep(0.05)
    config = run_config(path, state)
    try:
        vocab = Vocab.from_json(path / VOCAB_FILE)
    except OSError as exc:  # gone, or not a readable file: say which file, not errno's words
        why = (f"it has no {VOCAB_FILE}" if isinstance(exc, FileNotFoundError) else
               f"its {VOCAB_FILE} cannot be read ({exc.strerror or exc})")
        raise CheckpointError(f"checkpoint {path} is incomplete: {why}, the vocabulary d2lgru "
                              f"writes with a run's first epoch; put the run's {VOCAB_FILE} back "
                              f"or name another checkpoint directory") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or incomplete: {exc}") from None
    if len(vocab) != model.vocab_size:
        raise CheckpointError(f"checkpoint {path}: vocab.json has {len(vocab)} tokens but the model "
                              f"was trained on {model.vocab_size}")
    if (model.spec.hidden_size, model.spec.num_layers, model.spec.reset_after, model.spec.gates) != \
            (config.hidden_size, config.num_layers, config.reset_after, config.gates):
        raise CheckpointError(f"checkpoint {path} is corrupt: its model is a "
                              f"{model.spec.describe()} but its config says hidden "
                              f"{config.hidden_size}, {config.num_layers} layer(s)")
    return {"model": model, "vocab": vocab, "config": config, "history": list(state["history"]),
            "epoch": state["epoch"], "state": state}

