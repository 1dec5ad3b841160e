"""The exceptions d2lgru raises about its input and its surroundings.

Every error a *user* can cause -- a bad option, array, file, checkpoint or missing framework --
is a :class:`D2lgruError`; the command line turns exactly these (and the operating system's
``OSError``/``MemoryError``) into one line on stderr. Anything else is a bug and keeps its
traceback. Each class also derives from the built-in exception a caller would catch without
knowing d2lgru (``ValueError``, ``TypeError``, ...), so ``except ValueError`` keeps working.

This module imports nothing, so every other module can use it.
"""

from __future__ import annotations


class D2lgruError(Exception):
    """Base class: something about the input or the environment, said in one sentence."""


class InvalidArgumentError(D2lgruError, ValueError):
    """An argument, option or array has a value d2lgru cannot use."""


class InvalidTypeError(D2lgruError, TypeError):
    """An argument has the wrong type (a list where a NumPy array is needed, a float32 array
    given to float64 parameters, ...)."""


class BackendNotInstalledError(D2lgruError, ImportError):
    """A known backend whose framework is not installed, or whose import fails."""


class BackendPluginError(D2lgruError, ImportError):
    """A third-party backend (entry point group ``d2lgru.backends``) that cannot be used: its
    import fails, it is not a :class:`~d2lgru.backends.Backend`, or its name is taken."""


class ExtraNotInstalledError(D2lgruError, ImportError):
    """An optional feature's package (an extra such as ``onnx`` or ``safetensors``) is missing."""


def pip_extra(extra: str) -> str:
    """How to install d2lgru's extra ``extra``: from an index, or from a clone (no index serves
    d2lgru today)."""
    return f'pip install "d2lgru[{extra}]" (from a clone: pip install ".[{extra}]")'


class NonFiniteError(InvalidArgumentError):
    """An array or number holds NaN or infinity where finite values are required."""


class OutputIsADirectoryError(D2lgruError, IsADirectoryError):
    """A file to write (a parameter file, ``gates --out``, ``export --onnx``) names an existing
    directory. An ``IsADirectoryError`` (``errno.EISDIR``), so ``except OSError`` still catches
    it; its message names the user's path, never the temporary file written beside it."""


__all__ = ["BackendNotInstalledError", "BackendPluginError", "D2lgruError",
           "ExtraNotInstalledError", "InvalidArgumentError", "InvalidTypeError",
           "NonFiniteError", "OutputIsADirectoryError", "pip_extra"]
