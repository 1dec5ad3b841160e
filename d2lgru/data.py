"""The data pipeline of *Dive into Deep Learning* ch. 8 (The Time Machine), NumPy only.

Semantics follow the book exactly (cleaning, tokenisation, vocabulary order, corpus,
minibatch offsets and partitioning); randomness comes from a seeded
``numpy.random.Generator`` instead of Python's global ``random``.  Building a corpus
is vectorised over the bytes of the file, so a 100 MB text encodes in under a second.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import hashlib
import http.client
import json
import math
import mmap
import operator
import os
import re
import stat
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .threads import resolve_threads
from ._io import write_atomic
from .errors import D2lgruError, InvalidArgumentError, InvalidTypeError
from .spec import check_flag, check_path

__all__ = [
    "TIME_MACHINE_URL",
    "TIME_MACHINE_SHA1",
    "TIME_MACHINE_FILENAME",
    "DATA_DIR_ENV",
    "DOWNLOAD_DEADLINE_S",
    "DOWNLOAD_DEADLINE_ENV",
    "TOKEN_KINDS",
    "DataError",
    "cache_dir",
    "download_deadline",
    "find_time_machine",
    "read_time_machine",
    "tokenize",
    "Vocab",
    "load_corpus",
    "load_corpus_time_machine",
    "index_dtype",
    "seq_data_iter_random",
    "seq_data_iter_sequential",
    "SeqDataLoader",
    "load_data_time_machine",
]

TIME_MACHINE_URL = "http://d2l-data.s3-accelerate.amazonaws.com/timemachine.txt"
TIME_MACHINE_SHA1 = "090b5e7e70c295757f55df93cb0a180b9691891a"
TIME_MACHINE_FILENAME = "timemachine.txt"
DATA_DIR_ENV = "D2LGRU_DATA_DIR"
DATA_URL_ENV = "D2LGRU_DATA_URL"  # a mirror of the book's file, for sites that cannot reach S3
TOKEN_KINDS = ("char", "word")
DOWNLOAD_TIMEOUT_S = 30  # seconds one socket operation may wait
DOWNLOAD_DEADLINE_S = 120  # seconds the whole download may take
DOWNLOAD_DEADLINE_ENV = "D2LGRU_DOWNLOAD_DEADLINE_S"
_DOWNLOAD_CHUNK = 1 << 16

_NON_LETTERS = re.compile("[^A-Za-z]+")
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
# Byte table: letters -> lowercase letter, every other byte -> space.
_CLEAN_TABLE = bytes(
    b if b in _LOWER else (b + 32 if b in _UPPER else 32) for b in range(256)
)


class DataError(D2lgruError, RuntimeError):
    """The corpus could not be found, downloaded, verified or read."""


# --------------------------------------------------------------------------- files


def cache_dir() -> Path:
    """Directory where the downloaded Time Machine is cached.

    ``$XDG_CACHE_HOME/d2lgru`` when that variable is set, else ``~/.cache/d2lgru``.
    """
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "d2lgru"


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _where_to_put_it() -> str:
    return (
        f"put {TIME_MACHINE_FILENAME} (SHA-1 {TIME_MACHINE_SHA1}) in {cache_dir()}, "
        f"or point {DATA_DIR_ENV} or --data at a directory or file that holds it"
    )


#: what a path is when it is neither a regular file nor a directory, as ``stat`` tells it
_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)
_LOOP = "a symlink loop"


def _kind(path: Path) -> str:
    """``"file"``, ``"directory"``, ``"missing"``, or what else ``path`` is, in words
    (``"a character device"``, ``"a symlink loop"``, ...); other ``stat`` errors propagate."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        if exc.errno == errno.ELOOP:
            return _LOOP
        raise
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    return next((kind for is_kind, kind in _SPECIAL_KINDS if is_kind(mode)), "a special file")


def _user_location(location: str | os.PathLike, source: str) -> Path:
    """Resolve a user-given file, or a directory holding timemachine.txt (no SHA-1 check)."""
    what_is_valid = (f"name a text file to use as the corpus, or a directory that holds "
                     f"{TIME_MACHINE_FILENAME}")
    try:
        path = Path(location).expanduser()
        kind = _kind(path)
        inner = _kind(path / TIME_MACHINE_FILENAME) if kind == "directory" else None
    except (OSError, RuntimeError, ValueError) as exc:  # "~user" of no user; a NUL byte
        raise DataError(f"{source} {str(location)!r} cannot be examined "
                        f"({getattr(exc, 'strerror', None) or exc}); {what_is_valid}") from exc
    if kind == "file":
        return path
    if kind == "directory":
        if inner == "file":
            return path / TIME_MACHINE_FILENAME
        if inner == "missing":
            raise DataError(
                f"{source} {str(path)!r} is a directory without {TIME_MACHINE_FILENAME}; "
                f"put {TIME_MACHINE_FILENAME} (SHA-1 {TIME_MACHINE_SHA1}) there, "
                "or name a text file to use as the corpus"
            )
        raise DataError(f"{source} {str(path)!r} holds {TIME_MACHINE_FILENAME}, but it is "
                        f"{inner}, not a regular file; replace it by the book's text file")
    if kind == "missing":
        raise DataError(f"{source} {str(path)!r} does not exist; {what_is_valid}")
    if kind == _LOOP:
        raise DataError(f"{source} {str(path)!r} cannot be followed: too many levels of "
                        f"symbolic links ({_LOOP}); {what_is_valid}")
    raise DataError(f"{source} {str(path)!r} is not a regular file but {kind}; {what_is_valid}")


def download_deadline() -> float:
    """Seconds the whole download may take: ``$D2LGRU_DOWNLOAD_DEADLINE_S``, else
    :data:`DOWNLOAD_DEADLINE_S`."""
    raw = os.environ.get(DOWNLOAD_DEADLINE_ENV, "").strip()
    if not raw:
        return float(DOWNLOAD_DEADLINE_S)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise InvalidArgumentError(
            f"${DOWNLOAD_DEADLINE_ENV} must be a positive number of seconds, got {raw!r}"
        )
    return value


def _fetch(url: str, deadline_s: float) -> bytes:
    """The body at ``url``, read in chunks against one deadline for the whole transfer.

    The socket timeout alone cannot bound a download: a server that sends a byte now and then
    resets it forever. ``read1`` returns whatever one socket read brings, so the deadline is
    checked at least once per timeout (at most ``min(DOWNLOAD_TIMEOUT_S, deadline_s)``).
    """
    end = time.monotonic() + deadline_s
    chunks, received = [], 0
    with urllib.request.urlopen(url, timeout=min(DOWNLOAD_TIMEOUT_S, deadline_s)) as response:
        length = getattr(response, "headers", {}).get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with _progress_bar(total) as bar:
            while True:
                if time.monotonic() > end:
                    raise TimeoutError(
                        f"no complete file within the {deadline_s:g} s deadline "
                        f"(${DOWNLOAD_DEADLINE_ENV}); {received} bytes arrived"
                    )
                chunk = response.read1(_DOWNLOAD_CHUNK)
                if not chunk:
                    if total is not None and received < total:  # read1 does not check this
                        raise ConnectionError(f"the server closed the connection after "
                                              f"{received} of {total} bytes")
                    return b"".join(chunks)
                chunks.append(chunk)
                received += len(chunk)
                bar.update(len(chunk))


def _progress_bar(total: int | None):
    """A tqdm bar on stderr when stderr is a terminal; else a bar that draws nothing."""
    from tqdm import tqdm  # only a download needs it

    stderr = sys.stderr
    return tqdm(total=total, desc=TIME_MACHINE_FILENAME, unit="B", unit_scale=True,
                file=stderr, leave=False, disable=not (stderr is not None and stderr.isatty()))


def _download_time_machine(target: Path, stale_note: str) -> None:
    """Download the book's file into ``target`` atomically, checking its SHA-1; any failure,
    a missed deadline included, is one :class:`DataError` that leaves ``target`` as it was."""
    url = os.environ.get(DATA_URL_ENV) or TIME_MACHINE_URL
    deadline_s = download_deadline()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        data = _fetch(url, deadline_s)
        actual = _sha1(data)
        if actual != TIME_MACHINE_SHA1:
            raise DataError(
                f"the file downloaded from {url} has SHA-1 {actual}, expected "
                f"{TIME_MACHINE_SHA1}{stale_note}; {_where_to_put_it()}"
            )
        write_atomic(target, lambda f: f.write(data))
    except DataError:
        raise
    # URLError, HTTPError, refused connections and timeouts are OSErrors; a connection closed
    # before Content-Length bytes is http.client.IncompleteRead, an HTTPException
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download The Time Machine from {url} ({reason}){stale_note}; "
            f"{_where_to_put_it()}"
        ) from exc


def find_time_machine(path: str | os.PathLike | None = None) -> Path:
    """Locate The Time Machine (or a user corpus) and return its path.

    Order: ``path`` (a file, or a directory holding ``timemachine.txt``), then
    ``$D2LGRU_DATA_DIR`` (same forms), then the cache directory (see
    :func:`cache_dir`) if its copy has the right SHA-1, else a download from
    :data:`TIME_MACHINE_URL` into the cache.  Files the user names are taken as
    they are (any text file is a valid corpus); only the cached/downloaded copy is
    checked against :data:`TIME_MACHINE_SHA1`.  Raises :class:`DataError`.
    """
    if path is not None:
        check_path(path, "data path")
        return _user_location(path, "data path")
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return _user_location(env, DATA_DIR_ENV)
    target = cache_dir() / TIME_MACHINE_FILENAME
    stale_note = ""
    if target.is_file():
        try:
            actual = _sha1(target.read_bytes())
        except OSError as exc:
            raise DataError(
                f"could not read the cached {target} ({exc}); {_where_to_put_it()}"
            ) from exc
        if actual == TIME_MACHINE_SHA1:
            return target
        stale_note = f", and the cached {target} has SHA-1 {actual} instead of {TIME_MACHINE_SHA1}"
    _download_time_machine(target, stale_note)
    return target


def _unreadable(path: Path, exc: OSError) -> DataError:
    return DataError(f"could not read corpus file {str(path)!r} ({exc.strerror or exc})")


def _check_utf8(data: bytes, path: Path, offset: int = 0) -> None:
    """Raise :class:`DataError` unless ``data`` (the file's bytes from ``offset``) is UTF-8."""
    if data.isascii():  # ASCII is UTF-8; the check is 10x cheaper than decoding
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"corpus file {str(path)!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} "
            f"at offset {offset + exc.start}); pass a UTF-8 text file"
        ) from exc


def _read_bytes(path: str | os.PathLike) -> bytes:
    """Read a corpus file, which must be UTF-8 text; raises :class:`DataError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    _check_utf8(data, path)
    return data


@contextlib.contextmanager
def _mapped_bytes(path: Path):
    """A corpus file's bytes mapped from the page cache rather than read into a copy of the
    whole text (``mmap``; a read where the file cannot be mapped: empty, a pipe). Not checked
    for UTF-8: :func:`_clean_char_codes` checks each piece it slices out."""
    try:  # only opening and reading are this function's errors, not its caller's block
        f = open(path, "rb")
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    with f:
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            try:
                data = f.read()
            except OSError as exc:
                raise _unreadable(path, exc) from exc
            yield data
            return
        try:
            yield mapped
        finally:
            try:
                mapped.close()
            except BufferError:
                # a NumPy view of it is still held, by the traceback of an error (or Ctrl-C)
                # raised while the text was read: that error is the one to see, and the mapping
                # goes when its last view does
                pass


def clean_text(text: str) -> str:
    """One line of text cleaned as the corpus is (the book's ``re.sub('[^A-Za-z]+', ' ', line)
    .lower()``, without the strip): what a user types is read as the model saw its corpus."""
    return re.sub(" +", " ", text.encode("utf-8").translate(_CLEAN_TABLE).decode("ascii"))


def _split_lines(text: str) -> list[str]:
    """Lines as ``open(path).readlines()`` gives them (universal newlines), without the ends."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # readlines() yields no empty line after a final newline
        lines.pop()
    return lines


def read_time_machine(path: str | os.PathLike | None = None) -> list[str]:
    """Lines of the text, each keeping letters only, lowercased (the book's cleaning).

    ``path`` is resolved by :func:`find_time_machine`; empty lines are kept.
    """
    text = _read_bytes(find_time_machine(path)).decode("utf-8")
    return [_NON_LETTERS.sub(" ", line).strip().lower() for line in _split_lines(text)]


def _check_token_kind(token: str) -> None:
    if token not in TOKEN_KINDS:
        raise InvalidArgumentError(f"token must be one of {TOKEN_KINDS}, got {token!r}")


def tokenize(lines: Iterable[str], token: str = "word") -> list[list[str]]:
    """Split lines into characters (``token='char'``) or words (``'word'``, the book's default)."""
    _check_token_kind(token)
    if token == "char":
        return [list(line) for line in lines]
    return [line.split() for line in lines]


# --------------------------------------------------------------------------- vocabulary


class Vocab:
    """Token <-> index map, ordered by descending frequency (ties: first seen first).

    Index 0 is ``'<unk>'``, then ``reserved_tokens``, then every token with
    frequency >= ``min_freq``.  ``tokens`` may be a flat or a nested (per-line) list.
    """

    def __init__(self, tokens=None, min_freq: int = 0, reserved_tokens=None):
        tokens = [] if tokens is None else tokens
        if not isinstance(tokens, (list, tuple, str)):
            try:  # a generator, a set, an array
                tokens = list(tokens)
            except TypeError:
                raise InvalidTypeError(f"tokens must be a list of tokens (or of lists of them), "
                                       f"got {type(tokens).__name__}") from None
        if len(tokens) == 0 or isinstance(tokens[0], list):
            tokens = [token for line in tokens for token in line]
        self._build(collections.Counter(tokens).items(), min_freq, reserved_tokens)

    @classmethod
    def from_counts(
        cls, counts: Iterable[tuple[str, int]], min_freq: int = 0, reserved_tokens=None
    ) -> "Vocab":
        """Build from ``(token, count)`` pairs in first-seen order (as a Counter iterates)."""
        vocab = cls.__new__(cls)
        vocab._build(counts, min_freq, reserved_tokens)
        return vocab

    def _build(self, counts, min_freq, reserved_tokens) -> None:
        min_freq = _check_int("min_freq", min_freq, minimum=0)
        if isinstance(reserved_tokens, str):
            raise InvalidTypeError(f"reserved_tokens must be a list such as [{reserved_tokens!r}], "
                                   f"not a string (each of its characters would be reserved)")
        reserved = list(reserved_tokens or [])
        if "<unk>" in reserved or len(set(reserved)) != len(reserved):
            raise InvalidArgumentError(f"reserved_tokens must be distinct and not '<unk>', got "
                                       f"{reserved!r}")
        # sorted() is stable, so equal counts keep first-seen order, as in the book.
        self._token_freqs = sorted(
            ((token, int(freq)) for token, freq in counts), key=lambda x: x[1], reverse=True
        )
        self.idx_to_token = ["<unk>"] + reserved
        self.token_to_idx = {token: idx for idx, token in enumerate(self.idx_to_token)}
        for token, freq in self._token_freqs:
            if freq < min_freq:
                break
            if token not in self.token_to_idx:
                self.idx_to_token.append(token)
                self.token_to_idx[token] = len(self.idx_to_token) - 1

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        """Index of a token (``unk`` if unknown), or a list of indices for a list/tuple/array."""
        if isinstance(tokens, np.ndarray):
            tokens = tokens.tolist()
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(token) for token in tokens]

    def to_tokens(self, indices):
        """Token of an index, or a list of tokens for a list, tuple, range or NumPy array; an
        index outside 0..len-1 (a negative one included) raises InvalidArgumentError."""
        array = self._check_indices(indices)
        if array.ndim == 0:
            return self.idx_to_token[int(array)]
        return [self.idx_to_token[index] for index in array.tolist()]

    def _check_indices(self, indices) -> np.ndarray:
        """One NumPy pass for the type and range, not a Python comparison per index."""
        try:
            array = np.asarray(indices)
        except ValueError:  # a ragged nested list
            array = None
        if array is None or array.ndim > 1 or array.dtype == bool or not (
                array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            what = ("ragged lists" if array is None else repr(indices) if array.ndim == 0 else
                    f"a {type(indices).__name__} of shape {array.shape}, dtype {array.dtype}")
            raise InvalidTypeError(f"token indices must be integers from 0 to {len(self) - 1} "
                                   f"(one, or a flat list, tuple or array of them), got {what}")
        if array.size == 0:
            return array.astype(np.int64)
        low, high = array.min(), array.max()
        if low < 0 or high >= len(self):
            raise InvalidArgumentError(f"token index {low if low < 0 else high} is out of range; "
                                       f"this vocabulary's indices are 0..{len(self) - 1}")
        return array

    @property
    def unk(self) -> int:
        return 0

    @property
    def token_freqs(self) -> list[tuple[str, int]]:
        return self._token_freqs

    def __eq__(self, other) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self.idx_to_token == other.idx_to_token and self._token_freqs == other._token_freqs

    __hash__ = None  # mutable lists inside; equality is by value

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self.idx_to_token[:6])
        return f"Vocab(len={len(self)}, idx_to_token=[{head}{', ...' if len(self) > 6 else ''}])"

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict:
        """A JSON-ready dict: ``idx_to_token`` and ``token_freqs``."""
        return {
            "format": "d2lgru.vocab",
            "version": 1,
            "idx_to_token": list(self.idx_to_token),
            "token_freqs": [[token, freq] for token, freq in self._token_freqs],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Vocab":
        """Inverse of :meth:`to_dict`; raises ValueError saying what is malformed."""
        if not isinstance(data, dict):
            raise InvalidArgumentError(f"a vocabulary must be a JSON object, got {type(data).__name__}")
        idx_to_token = data.get("idx_to_token")
        if (
            not isinstance(idx_to_token, list)
            or not idx_to_token
            or not all(isinstance(t, str) for t in idx_to_token)
            or idx_to_token[0] != "<unk>"
        ):
            raise InvalidArgumentError("'idx_to_token' must be a list of strings starting with '<unk>'")
        if len(set(idx_to_token)) != len(idx_to_token):
            raise InvalidArgumentError("'idx_to_token' must not repeat a token")
        token_freqs = data.get("token_freqs", [])
        if not isinstance(token_freqs, list) or not all(
            isinstance(p, (list, tuple))
            and len(p) == 2
            and isinstance(p[0], str)
            and isinstance(p[1], int)
            and not isinstance(p[1], bool)
            and p[1] >= 0
            for p in token_freqs
        ):
            raise InvalidArgumentError("'token_freqs' must be a list of [token, count] pairs with count >= 0")
        vocab = cls.__new__(cls)
        vocab.idx_to_token = list(idx_to_token)
        vocab.token_to_idx = {token: idx for idx, token in enumerate(idx_to_token)}
        vocab._token_freqs = [(token, freq) for token, freq in token_freqs]
        return vocab

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON, atomically (temp file + ``os.replace``)."""
        write_atomic(path, lambda f: json.dump(self.to_dict(), f, ensure_ascii=False), "w")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Vocab":
        """Read a vocabulary written by :meth:`to_json`; malformed files raise ValueError."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            return cls.from_dict(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise InvalidArgumentError(
                f"{str(path)!r} is not a valid d2lgru vocabulary JSON file ({exc})"
            ) from None


# --------------------------------------------------------------------------- corpus


_PIECE = 1 << 19  # bytes per piece of a large text (128 KB to 4 MB tried: 512 KB-1 MB fastest)
# The cleaned text's codes. A letter's is its lowercase byte less ord('a'), every byte to
# delete (line breaks too) is the minimum of the rest with 26, and a kept space is set by one
# OR: four passes a piece fewer than ASCII codes with a code of their own for line breaks took
_A = 0  # 'a'..'z' are _A.._A + 25
# a byte the cleaning deletes: every non-letter but the one space a gap keeps. Exactly 26, the
# least value a non-letter has after the subtraction, so that the minimum folds them all into it
_DROPPED = 26
_KEPT_SPACE = _DROPPED | 1  # a run of non-letters between two letters of one line, one space
_CODES = _KEPT_SPACE + 1
_DELETED = bytes([_DROPPED])  # what the cleaned text loses when its codes become ids


def _code_char(code: int) -> str:
    return " " if code == _KEPT_SPACE else chr(ord("a") + code - _A)


def _clean_char_codes(data, path: Path | None = None
                      ) -> tuple[bytearray, list[tuple[int, int]], np.ndarray]:
    """The book's per-line cleaning as ``(codes, pieces, counts)``: one code per byte of the
    text (``_A + k`` for the k-th lowercase letter, ``_KEPT_SPACE``, and ``_DROPPED`` for every
    byte to delete), the ``(start, end)`` of each piece it was cleaned in, and the count of each
    code (``[_CODES]`` int64).

    Equivalent, once every dropped byte is deleted, to
    ``''.join(re.sub('[^A-Za-z]+', ' ', l).strip().lower() for l in lines)``: letters are kept
    (lowercased); a run of non-letters between two letters becomes one space, unless it holds
    a line break (then the lines' stripped ends meet directly). Lines are cleaned independently
    and simply concatenated, so the text is cut after line breaks into pieces of about
    ``_PIECE`` bytes, each cleaned on its own -- by :func:`_pipeline_workers` threads at once
    (NumPy releases the interpreter's lock in its loops). Nothing is deleted yet: the final
    byte-table pass that maps codes to indices deletes the dropped bytes in the same C loop
    (:func:`_ids_of`). ``data`` is bytes or a mapped file, read in place; with ``path``, each
    piece is checked for UTF-8 (a character never spans a line break).
    """
    bounds, start, n = [], 0, len(data)
    while start < n:
        end = n if start + _PIECE >= n else data.find(b"\n", start + _PIECE - 1) + 1 or n
        bounds.append((start, end))
        start = end
    raw = np.frombuffer(data, dtype=np.uint8)
    # one buffer for every piece's codes, which _ids_of compacts into the corpus in place:
    # a second buffer as large would fault in its pages again (0.07-0.09 s per 100 MB here)
    codes = _codes_buffer(n)
    out = np.frombuffer(codes, dtype=np.uint8)
    local = threading.local()

    def clean(bound):
        start, end = bound
        piece, piece_codes = raw[start:end], out[start:end]
        try:
            if path is not None and piece.max() >= 0x80:  # ASCII is UTF-8
                _check_utf8(data[start:end], path, start)
            if not hasattr(local, "cleaner"):
                local.cleaner = _PieceCleaner()
            # most texts hold no '\r' at all: memchr finds that faster than a pass over the piece
            local.cleaner.clean(piece, piece_codes, cr=data.find(b"\r", start, end) >= 0)
        finally:
            del piece  # a view of a mapped file, which cannot close while one lives
        return _count_codes(piece_codes)

    try:
        workers = _pipeline_workers(len(bounds))
        if workers > 1:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                cleaned = list(pool.map(clean, bounds))  # in order: the first bad piece raises
        else:
            cleaned = [clean(bound) for bound in bounds]
    finally:
        del raw, out  # views: the codes are resized later, the mapped file closed
    counts = np.zeros(_CODES, dtype=np.int64)
    for piece_counts in cleaned:
        counts += piece_counts
    return codes, bounds, counts


#: pieces a text must have before it is cleaned on more than one thread
_PIECES_PER_WORKER = 8


def _pipeline_workers(pieces: int) -> int:
    """Threads that clean a text of ``pieces`` pieces: ``$D2LGRU_THREADS``, else the thread
    policy's count (the CPUs free now, from two quick reads of the load:
    :func:`d2lgru.threads.resolve_threads`), at most one per :data:`_PIECES_PER_WORKER`
    pieces."""
    most = pieces // _PIECES_PER_WORKER
    if most <= 1:
        return 1
    count, _ = resolve_threads(preference=most, reads=2, interval_s=0.002)
    return min(most, count)


class _PieceCleaner:
    """Cleans one piece at a time in NumPy operations that write into buffers reused from piece
    to piece (a fresh temporary per operation faults its pages in again for every piece)."""

    _size = 0

    def _masks(self, n: int) -> list[np.ndarray]:
        """Five bool buffers and ``_DROPPED`` repeated (``np.minimum`` with a scalar takes an
        unvectorised loop in NumPy 2.4: 184 us a piece against 16 us with an array)."""
        if n > self._size:
            self._size = max(n, _PIECE + (_PIECE >> 2))
            self._buffers = [np.empty(self._size, np.bool_) for _ in range(5)]
            self._buffers.append(np.full(self._size, _DROPPED, np.uint8))
        return [b[:n] for b in self._buffers]

    def clean(self, raw: np.ndarray, out: np.ndarray, cr: bool = True) -> None:
        """``raw`` (a piece of the text, uint8) -> its codes, written into ``out`` (as long);
        ``cr=False`` where ``raw`` holds no ``'\r'``."""
        n = raw.size
        letter, brk, spaced, other, tmp, dropped = self._masks(n)
        np.bitwise_or(raw, 0x20, out=out)  # A-Z -> a-z; no byte but a letter lands in a-z
        np.subtract(out, ord("a"), out=out)
        np.less(out, 26, out=letter)
        np.minimum(out, dropped, out=out)  # a letter's code, else _DROPPED
        np.equal(raw, ord("\n"), out=brk)
        if cr:
            np.equal(raw, ord("\r"), out=other)  # a lone '\r' ends a line (universal newlines)
            brk |= other
        # A space is kept only right after a letter (runs collapse, line starts are stripped),
        # and not where its run of spaces ends at a line break or at the end
        solid = np.logical_or(letter, brk, out=other)  # not a space
        first = spaced  # a letter, then this space
        first[0] = False
        np.greater(letter[:-1], solid[1:], out=first[1:])
        longer = letter  # a kept space followed by another space: the run goes on
        np.greater(first[:-1], solid[1:], out=longer[:-1])
        longer[-1] = False
        np.greater(first[:-1], brk[1:], out=first[:-1])  # followed by a break: dropped
        first[-1] = False  # followed by the end
        # two on: most runs end there (", "), so the masks settle them without an index
        ends = np.logical_and(longer[:-2], brk[2:], out=tmp[:-2])
        np.greater(first[:-2], ends, out=first[:-2])
        if n > 1 and longer[-2]:
            first[-2] = False
        np.greater(longer[:-2], solid[2:], out=longer[:-2])
        longer[-2:] = False
        starts = np.flatnonzero(longer) if longer.any() else ()
        ahead = 3
        while len(starts):  # the rest are rare: follow each such run to its end
            at = starts + ahead
            past = at >= n
            if past.any():
                first[starts[past]] = False
                starts, at = starts[~past], at[~past]
            first[starts[brk[at]]] = False  # the run ends at a break: dropped
            starts = starts[~solid[at]]  # still a space: follow it further (a letter: kept)
            ahead += 1
        out |= first.view(np.uint8)  # _DROPPED | True = _KEPT_SPACE


def _codes_buffer(n: int) -> bytearray | mmap.mmap:
    """``n`` zeroed, writable bytes for a text's codes, which become its corpus: on Linux an
    anonymous mapping whose pages the kernel maps in one call (``MAP_POPULATE``), where a
    ``bytearray`` takes a page fault for each 4 KB page as its zeros are written (per 100 MB,
    22 ms against 36-50 ms here); elsewhere a ``bytearray``. Neither asks for huge pages (see
    :func:`_ids_of`). The corpus keeps the mapping, cut to its length."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if n and populate:
        return mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return bytearray(n)


def _ids_of(codes: bytearray | mmap.mmap, pieces: list[tuple[int, int]], lut: bytes,
           limit: int) -> np.ndarray:
    """The first ``limit`` ids: each piece of ``codes`` mapped through ``lut`` with its dropped
    bytes deleted, in one C pass per piece (``translate``), and written back into
    ``codes`` from its start (the ids of a piece are never more than its codes, so they never
    reach a piece not yet read); ``codes`` is then cut to ``limit`` and becomes the corpus. A
    second buffer for the corpus would fault its pages in (0.07-0.09 s per 100 MB here) while
    the interpreter's lock is held; the peak memory is the same (the mapped text and the codes:
    232 MB of RSS for 100 MB, against 338-345 MB when the pieces were joined). The buffer
    (:func:`_codes_buffer`) is not ``np.empty``, which asks the kernel for huge pages on arrays
    of 4 MB and more (``madvise``), and where the kernel defragments for such requests
    (``/sys/kernel/mm/transparent_hugepage/defrag`` = ``madvise``, a common default) the first
    write to each page can wait for memory compaction (loading 100 MB took 0.45-0.81 s that
    way against 0.47-0.55 s with a ``bytearray``, alternated in fresh processes on the
    reference machine)."""
    corpus = memoryview(codes)
    filled = 0
    try:
        for start, end in pieces:
            if filled == limit:
                break
            ids = codes[start:end].translate(lut, _DELETED)
            stop = min(limit, filled + len(ids))
            corpus[filled:stop] = memoryview(ids)[:stop - filled]
            filled = stop
    finally:
        corpus.release()
    if isinstance(codes, bytearray):
        del codes[filled:]
    elif filled:
        codes.resize(filled)  # mremap: the pages past the corpus go back
    else:
        return np.zeros(0, np.uint8)  # a mapping cannot be empty
    return np.frombuffer(codes, dtype=np.uint8)


def _count_codes(codes: np.ndarray) -> np.ndarray:
    """``np.bincount(codes, minlength=_CODES)`` for a piece's codes, counted in pairs (a count
    of half as many uint16 values, each pair ``c0 + 256 c1``, then summed over each code of the
    pair): about 0.6 of the time of a count of single bytes, which NumPy first widens."""
    n = codes.size - codes.size % 2
    pairs = np.bincount(codes[:n].view(np.uint16), minlength=_CODES << 8)
    pairs = pairs.reshape(-1, 256)[:, :_CODES]  # [c1, c0]: codes are below _CODES
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if codes.size % 2:
        counts[codes[-1]] += 1
    return counts.astype(np.int64)


def _first_seen(codes: bytearray | mmap.mmap, present: np.ndarray) -> list[int]:
    """Values of ``present`` in order of first occurrence in ``codes``: one ``find`` (memchr)
    each, which stops at the value's first occurrence (every value of ``present`` occurs)."""
    return sorted(present.tolist(), key=lambda code: codes.find(bytes((code,))))


def index_dtype(size: int) -> np.dtype:
    """The narrowest unsigned integer dtype that holds every index of a vocabulary of ``size``
    tokens: uint8 for characters, uint16 for most word vocabularies."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _check_max_tokens(max_tokens) -> int:
    try:
        if isinstance(max_tokens, (bool, np.bool_)):
            raise TypeError
        return operator.index(max_tokens)
    except TypeError:
        raise InvalidTypeError(
            f"max_tokens must be an integer (<= 0 for all tokens), got {max_tokens!r}"
        ) from None


def load_corpus(
    path: str | os.PathLike, token: str = "char", max_tokens: int = -1
) -> tuple[np.ndarray, Vocab]:
    """Encode a UTF-8 text file: ``(corpus, vocab)``, the corpus a 1-D array of indices in the
    narrowest unsigned dtype that holds them (:func:`index_dtype`: uint8 for characters, 1 byte
    per token; :class:`SeqDataLoader` and the iterators widen each batch to int64).

    The result equals the book's ``[vocab[tok] for line in tokenize(read(...)) for tok in line]``
    with the vocabulary built from the whole text, then truncated to ``max_tokens`` if > 0.
    """
    _check_token_kind(token)
    max_tokens = _check_max_tokens(max_tokens)
    if token == "char":
        path = Path(path)
        # mapped, not read: NumPy reads the text in place, which is never copied whole
        with _mapped_bytes(path) as data:
            codes, pieces, counts = _clean_char_codes(data, path)
        counts[_DROPPED] = 0  # deleted when the codes become indices
        present = np.flatnonzero(counts)
        vocab = Vocab.from_counts((_code_char(c), counts[c])
                                  for c in _first_seen(codes, present))
        # cleaned text holds at most 27 symbols, so a byte table maps codes to indices (bytes not
        # in the vocab map to <unk> = 0) and the corpus stays one byte per token
        lut = bytearray(256)
        for c in present.tolist():
            lut[c] = vocab[_code_char(c)]
        total = int(counts.sum())
        limit = total if max_tokens <= 0 else min(total, max_tokens)
        return _ids_of(codes, pieces, bytes(lut), limit), vocab
    words = _read_bytes(path).translate(_CLEAN_TABLE).split()  # letter runs, lowercased
    counts = collections.Counter(words)  # iterates in first-seen order
    vocab = Vocab.from_counts((w.decode("ascii"), n) for w, n in counts.items())
    index = {w: vocab[w.decode("ascii")] for w in counts}
    if max_tokens > 0:
        words = words[:max_tokens]
    corpus = np.fromiter(map(index.__getitem__, words), dtype=index_dtype(len(vocab)),
                         count=len(words))
    return corpus, vocab


def load_corpus_time_machine(
    max_tokens: int = -1, *, token: str = "char", path: str | os.PathLike | None = None
) -> tuple[np.ndarray, Vocab]:
    """Corpus and vocabulary of The Time Machine (or of ``path``, see :func:`find_time_machine`)."""
    _check_token_kind(token)
    return load_corpus(find_time_machine(path), token=token, max_tokens=max_tokens)


# --------------------------------------------------------------------------- minibatches


def _check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (1 or 0), else ValueError naming ``name``."""
    kind = "a positive" if minimum == 1 else "a non-negative"
    try:
        if isinstance(value, (bool, np.bool_)):  # an int to Python, never a count here
            raise TypeError
        value_int = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be {kind} integer, got {value!r}") from None
    if value_int < minimum:
        raise InvalidArgumentError(f"{name} must be {kind} integer, got {value!r}")
    return value_int


def _as_corpus(corpus) -> np.ndarray:
    array = np.asarray(corpus)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise InvalidArgumentError(
            "corpus must be a 1-D sequence of token indices, "
            f"got shape {array.shape} dtype {array.dtype}"
        )
    if array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int64)
    return array  # narrow indices stay narrow: each batch is widened to int64 when yielded


#: bytes of int64 batches widened at once from a narrow corpus: a block stays in cache
_WIDEN_BYTES = 1 << 20


def _int64_batches(windows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(X, Y)`` per batch of ``windows`` (``[num_batches, batch_size, num_steps + 1]``: each
    row's ``num_steps`` inputs and, one further, its labels), read-only int64 views: of the
    corpus when it is int64, else of a block of batches widened at once (one C loop per block,
    each token widened once for both ``X`` and ``Y``)."""
    if windows.dtype == np.int64:
        yield from zip(windows[..., :-1], windows[..., 1:])
        return
    per_block = max(1, _WIDEN_BYTES // (8 * windows[0].size)) if len(windows) else 1
    for start in range(0, len(windows), per_block):
        block = windows[start:start + per_block].astype(np.int64)
        block.flags.writeable = False
        yield from zip(block[..., :-1], block[..., 1:])


def _max_offset(num_steps: int, use_random_iter: bool) -> int:
    # random: randint(0, num_steps - 1); sequential: randint(0, num_steps); both inclusive
    return num_steps - 1 if use_random_iter else num_steps


def _batches_at(corpus_len: int, batch_size: int, num_steps: int, offset: int) -> int:
    """Minibatches either iterator yields after ``offset``: (n // a) // b == n // (a * b)."""
    return max(corpus_len - offset - 1, 0) // (batch_size * num_steps)


def _check_shape(corpus_len: int, batch_size, num_steps, use_random_iter: bool) -> tuple[int, int]:
    """Validate sizes; the corpus must give a batch even for the largest offset."""
    batch_size = _check_int("batch_size", batch_size)
    num_steps = _check_int("num_steps", num_steps)
    needed = batch_size * num_steps + _max_offset(num_steps, use_random_iter) + 1
    if corpus_len < needed:
        raise InvalidArgumentError(
            f"corpus has {corpus_len} tokens, too short for one batch of batch_size={batch_size} "
            f"x num_steps={num_steps} (needs at least {needed} tokens)"
        )
    return batch_size, num_steps


def seq_data_iter_random(
    corpus, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Random sampling: shuffled, non-overlapping subsequences after a random offset.

    Draws ``rng.integers(0, num_steps)`` (offset) then ``rng.permutation(num_subseqs)``.
    Yields int64 ``(X, Y)`` of shape ``(batch_size, num_steps)``, ``Y`` = ``X`` shifted by one.
    """
    corpus = _as_corpus(corpus)
    batch_size, num_steps = _check_shape(len(corpus), batch_size, num_steps, True)
    offset = int(rng.integers(0, num_steps))
    num_subseqs = (len(corpus) - offset - 1) // num_steps
    starts = offset + rng.permutation(num_subseqs) * num_steps
    num_batches = num_subseqs // batch_size
    steps = np.arange(num_steps)

    def batches():
        for i in range(0, batch_size * num_batches, batch_size):
            index = starts[i:i + batch_size, None] + steps
            yield corpus[index].astype(np.int64, copy=False), \
                corpus[index + 1].astype(np.int64, copy=False)

    return batches()


def seq_data_iter_sequential(
    corpus, batch_size: int, num_steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Sequential partitioning: consecutive batches continue each row's text.

    Draws ``rng.integers(0, num_steps + 1)`` (offset).  Yields int64 ``(X, Y)`` of shape
    ``(batch_size, num_steps)``, ``Y`` = ``X`` shifted by one, read-only (copy one to modify
    it), strided views (not contiguous): of an int64 corpus, or of a widened block of a
    narrower one.
    """
    corpus = _as_corpus(corpus)
    batch_size, num_steps = _check_shape(len(corpus), batch_size, num_steps, False)
    offset = int(rng.integers(0, num_steps + 1))
    row = (len(corpus) - offset - 1) // batch_size  # tokens per row; each row's labels go one on
    num_batches = row // num_steps
    # [num_batches, batch_size, num_steps + 1] views of the corpus, no copy: batch i, row b
    # starts at offset + b * row + i * num_steps (the last window's last label is at most
    # offset + batch_size * row <= len(corpus) - 1); read-only, so that a consumer cannot
    # edit the corpus through a batch
    step = corpus.strides[0]
    windows = np.lib.stride_tricks.as_strided(
        corpus[offset:], shape=(num_batches, batch_size, num_steps + 1),
        strides=(num_steps * step, row * step, step), writeable=False)
    return _int64_batches(windows)


class SeqDataLoader:
    """Iterable over minibatches of a corpus; each ``iter()`` is one epoch.

    Epoch ``e`` draws its offset (and, for random sampling, its permutation) from
    ``np.random.default_rng([seed, e])``, so any epoch can be replayed: ``epoch`` is the
    number of the next epoch ``iter()`` will run (it advances when ``iter()`` is called,
    even if the epoch is not consumed to the end); set it, or call :meth:`set_epoch`, to
    resume.  ``len()`` is the number of batches at the largest possible offset, a lower
    bound on every epoch; :meth:`num_batches` gives a given epoch's exact count.
    """

    def __init__(
        self,
        corpus,
        vocab: Vocab,
        batch_size: int,
        num_steps: int,
        use_random_iter: bool = False,
        *,
        seed: int = 0,
    ):
        self.corpus = _as_corpus(corpus)
        self.use_random_iter = check_flag("use_random_iter", use_random_iter)
        self.batch_size, self.num_steps = _check_shape(
            len(self.corpus), batch_size, num_steps, self.use_random_iter
        )
        self.vocab = vocab
        self.seed = _check_int("seed", seed, minimum=0)
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = _check_int("epoch", value, minimum=0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run epoch ``epoch`` (e.g. when resuming training)."""
        self.epoch = epoch

    def rng(self, epoch: int) -> np.random.Generator:
        """The generator that drives epoch ``epoch``."""
        return np.random.default_rng([self.seed, _check_int("epoch", epoch, minimum=0)])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch, self._epoch = self._epoch, self._epoch + 1
        iterate = seq_data_iter_random if self.use_random_iter else seq_data_iter_sequential
        return iterate(self.corpus, self.batch_size, self.num_steps, self.rng(epoch))

    def num_batches(self, epoch: int | None = None) -> int:
        """Exact number of batches of epoch ``epoch`` (default: the next one)."""
        epoch = self._epoch if epoch is None else epoch
        high = _max_offset(self.num_steps, self.use_random_iter) + 1
        offset = int(self.rng(epoch).integers(0, high))  # the iterators' first draw
        return _batches_at(len(self.corpus), self.batch_size, self.num_steps, offset)

    def __len__(self) -> int:
        offset = _max_offset(self.num_steps, self.use_random_iter)
        return _batches_at(len(self.corpus), self.batch_size, self.num_steps, offset)

    def __repr__(self) -> str:
        return (
            f"SeqDataLoader(tokens={len(self.corpus)}, vocab={len(self.vocab)}, "
            f"batch_size={self.batch_size}, num_steps={self.num_steps}, "
            f"use_random_iter={self.use_random_iter}, seed={self.seed}, epoch={self._epoch})"
        )


def load_data_time_machine(
    batch_size: int,
    num_steps: int,
    use_random_iter: bool = False,
    max_tokens: int = 10000,
    *,
    token: str = "char",
    seed: int = 0,
    path: str | os.PathLike | None = None,
) -> tuple[SeqDataLoader, Vocab]:
    """The book's ``load_data_time_machine``: ``(data_iter, vocab)``.

    ``path`` is any text file, or a directory holding ``timemachine.txt``; ``None``
    finds (or downloads) The Time Machine, see :func:`find_time_machine`.
    """
    _check_int("batch_size", batch_size)
    _check_int("num_steps", num_steps)
    _check_int("seed", seed, minimum=0)
    check_flag("use_random_iter", use_random_iter)  # before the corpus is read
    corpus, vocab = load_corpus_time_machine(max_tokens, token=token, path=path)
    return SeqDataLoader(corpus, vocab, batch_size, num_steps, use_random_iter, seed=seed), vocab
