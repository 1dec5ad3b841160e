"""Whole-file writes: every file d2lgru saves is whole at every instant; and the process-level
helpers that keep it so (children that end with their parent, interrupts that are not lost)."""

from __future__ import annotations

import errno
import os
import signal as _signal
import stat
import sys
import tempfile
from pathlib import Path

from .errors import InvalidArgumentError, OutputIsADirectoryError

#: figure formats matplotlib writes itself; the bitmaps it hands to Pillow are offered when
#: Pillow has their codec, and PGF never (saving it runs LaTeX, which few machines have)
_VECTOR_FORMATS = frozenset({"eps", "pdf", "ps", "svg", "svgz", "raw", "rgba"})


def _umask() -> int:
    """The process' umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, write, mode: str = "wb") -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, flushed to disk
    and then renamed over ``path``; text modes write UTF-8. An exception leaves ``path`` as it
    was and no temporary file behind; a ``path`` that is a directory raises
    :class:`~d2lgru.errors.OutputIsADirectoryError` naming it, and the system's errors (a
    read-only or full disk) name ``path``, never the temporary file."""
    path = Path(path)
    if _is_directory(path):  # before the write, which may be long (an ONNX export, a plot)
        raise _directory_error(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a saved file follows the umask
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except IsADirectoryError:  # a directory made there during the write
            raise _directory_error(path) from None
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            raise _naming(exc, path) from None
        raise
    return path


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as an error about ``path`` (the same errno and class) where it named no file or
    the temporary one, which the user never asked for; else ``exc`` itself."""
    if exc.errno is None or isinstance(exc, OutputIsADirectoryError):
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def make_directory(path, what: str, error=InvalidArgumentError,
                   hint: str = "choose another --out") -> Path:
    """Make directory ``path`` (and its parents) for a command's output, before the work that
    fills it: a path through a file, no permission or a read-only file system is one ``error``
    naming ``what`` and ``path``, and ``hint``."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise error(f"cannot create {what} {path}: a part of that path is a file") from None
    except OSError as exc:  # no permission, a read-only or pseudo file system (/proc, /sys)
        raise error(f"cannot create {what} {path}: {exc.strerror or exc}; {hint}") from None
    return path


def _is_directory(path: Path) -> bool:
    """Whether ``path`` itself is a directory (a symlink to one is replaced like a file)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _directory_error(path: Path) -> OutputIsADirectoryError:
    exc = OutputIsADirectoryError(f"cannot write {path}: it is a directory; give a file path")
    exc.errno = errno.EISDIR
    return exc


def save_png(fig, path) -> Path:
    """A matplotlib figure as a 256-colour palette PNG (a plot has few colours; a palette file
    is a third of the RGBA one), written whole; RGBA when Pillow is missing (matplotlib needs
    it, so only a stripped install)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    try:
        from PIL import Image
    except ImportError:
        return write_atomic(Path(path), lambda f: f.write(buffer.getvalue()))
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT,
                                                        dither=Image.Dither.NONE)
    return write_atomic(Path(path), lambda f: image.save(f, format="png", optimize=True))


def figure_formats() -> tuple[str, ...]:
    """The suffixes a figure may be saved under (without the dot): what matplotlib's canvas
    lists (``get_supported_filetypes``), less the bitmaps this Pillow cannot encode and PGF."""
    from matplotlib.figure import Figure
    try:
        from PIL import Image
        pillow = {ext.lstrip(".").lower() for ext in Image.registered_extensions()}
    except ImportError:
        pillow = set()
    return tuple(sorted(f for f in Figure().canvas.get_supported_filetypes()
                        if f in _VECTOR_FORMATS or f in pillow or f == "png"))


def figure_format(path, what: str = "the figure") -> str:
    """The format ``path``'s suffix names (PNG without one); a suffix matplotlib cannot write
    is an :class:`InvalidArgumentError` that lists the valid ones (``what`` names the path)."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    formats = figure_formats()
    if suffix not in formats:
        raise InvalidArgumentError(f"{what} {path} ends in .{suffix}, a format d2lgru cannot "
                                   f"draw; give a name ending in "
                                   f"{', '.join('.' + f for f in formats)}")
    return suffix


def save_figure(fig, path) -> Path:
    """A matplotlib figure in the format its name's suffix says (:func:`figure_format`),
    written whole; PNG as :func:`save_png` writes it."""
    import io

    format = figure_format(path)
    if format == "png":
        return save_png(fig, path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format)
    return write_atomic(Path(path), lambda f: f.write(buffer.getvalue()))


def round_floats(value, digits: int = 6):
    """``value`` (JSON: dicts, lists, numbers) with every float rounded to ``digits``
    significant digits: a record's measurements, not the float's last bits, which only make a
    committed file bigger."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def dies_with_parent():
    """A ``preexec_fn`` for a child process that must not outlive the one starting it: on Linux
    the kernel sends the child SIGTERM when its parent ends (``prctl(PR_SET_PDEATHSIG)``), so
    a benchmark's driver stopped by ``kill`` or a CI timeout leaves no worker measuring on and
    slowing whatever runs next. None elsewhere. Call it for each child, in the process that
    starts it. A process that has loaded a framework's threads should not fork to run Python
    code before exec (JAX warns of a deadlock): its children call :func:`end_with_parent`."""
    prctl = _prctl()  # looked up here: the child runs no import between fork and exec
    if prctl is None:
        return None
    parent = os.getpid()
    return lambda: _arm(prctl, parent)


def end_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when process ``parent``, the one that started
    it, ends (Linux; nothing elsewhere); exit at once if it has already ended."""
    prctl = _prctl()
    if prctl is not None:
        _arm(prctl, parent)


def _arm(prctl, parent: int) -> None:
    prctl(1, int(_signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the signal was armed
        os._exit(1)


def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


#: the signal (SIGINT, SIGTERM) that :func:`interrupt` turned into a KeyboardInterrupt and that
#: no command has handled yet (0: none)
_signalled = 0


def interrupt(signum, frame):
    """The command line's handler of SIGINT and SIGTERM: a KeyboardInterrupt, remembered until
    the command handles it (:func:`interrupt_handled`).

    Python raises it wherever the main thread is, and C code that calls back into Python can
    drop it there without a word: one raised inside the ``abc.register`` call that the
    extension module ``numpy.random._generator`` makes while it is first imported (the first
    ``np.random.default_rng``) was, and the training went on (3 start-ups in about 660 under
    load). :func:`check_interrupt`, before every training step, raises it again."""
    global _signalled
    _signalled = signum
    raise KeyboardInterrupt


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if :func:`interrupt` took a signal whose exception never reached
    the command (see there); nothing otherwise, and nothing in a program that handles its
    signals itself."""
    if _signalled:
        raise KeyboardInterrupt


def interrupt_handled() -> int:
    """The signal :func:`interrupt` took (0: none), forgotten from here on."""
    global _signalled
    signum, _signalled = _signalled, 0
    return signum
