"""The backend registry: names, aliases, lazy loading, third-party backends.

Nothing here imports a framework. A backend's module is imported the first time it is asked
for, and the environment variable is read then, not at ``import d2lgru``. Beside the built-in
backends (:data:`BACKENDS`), any installed package can add one through the entry point group
``d2lgru.backends`` (see :mod:`d2lgru.backends._plugins`); it is selected like a built-in one.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os

from . import _plugins
from ._base import Backend, ImplInfo, LMResult, Trainer, UnsupportedError
from ..errors import BackendNotInstalledError, InvalidArgumentError, pip_extra

ENV_VAR = "D2LGRU_BACKEND"
DEFAULT = "numpy"

#: canonical name -> (adapter module, framework import name, pip extra)
_REGISTRY = {
    "numpy": ("d2lgru.backends.numpy_backend", "numpy", None),
    "torch": ("d2lgru.backends.torch_backend", "torch", "torch"),
    "tensorflow": ("d2lgru.backends.tensorflow_backend", "tensorflow", "tensorflow"),
    "mxnet": ("d2lgru.backends.mxnet_backend", "mxnet", "mxnet"),
    "paddle": ("d2lgru.backends.paddle_backend", "paddle", "paddle"),
    "mindspore": ("d2lgru.backends.mindspore_backend", "mindspore", "mindspore"),
    "jax": ("d2lgru.backends.jax_backend", "jax", "jax"),
}

#: every built-in backend, in order (third-party ones: :func:`plugin_backends`)
BACKENDS = tuple(_REGISTRY)

ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "mx": "mxnet",
           "paddlepaddle": "paddle", "ms": "mindspore", "flax": "jax"}


def _plugins_found() -> dict:
    return _plugins.plugins(reserved=set(_REGISTRY) | set(ALIASES))


def plugin_backends() -> dict:
    """Third-party backends by name: :class:`~d2lgru.backends._plugins.Plugin` records (name,
    entry point, package, version, and ``problem`` when one is known without importing it)."""
    return dict(_plugins_found())


def canonical_name(name: str, *, source: str = "argument") -> str:
    """``name`` or an alias -> the canonical backend name; ValueError naming the valid ones."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in _REGISTRY and key not in _plugins_found():
        where = f"${ENV_VAR}" if source == "env" else source
        extra = sorted(_plugins_found())
        raise InvalidArgumentError(f"unknown backend {name!r} (from {where}); valid backends: "
                                   f"{', '.join(BACKENDS + tuple(extra))} "
                                   f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def source_of(name: str) -> str:
    """Where a backend comes from: ``built-in`` or the plugin's entry point and package."""
    key = canonical_name(name)
    return "built-in" if key in _REGISTRY else _plugins_found()[key].source


#: the backend of the innermost :func:`backend_context` in this thread / asyncio task
_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "d2lgru_backend", default=None)


def resolve_name(name: str | None = None) -> str:
    """Selection order: explicit argument, then the enclosing :func:`backend_context`, then
    ``$D2LGRU_BACKEND``, then ``numpy``."""
    if name is not None and str(name) != "":
        return canonical_name(name, source="argument")
    if _context_backend.get() is not None:
        return _context_backend.get()
    env = os.environ.get(ENV_VAR, "")
    if env.strip():
        return canonical_name(env, source="env")
    return DEFAULT


def is_installed(name: str) -> bool:
    """Whether the framework behind ``name`` is importable (checked without importing it); a
    plugin is installed when its package is (whether it works shows when it is loaded)."""
    key = canonical_name(name)
    if key not in _REGISTRY:
        return True
    return importlib.util.find_spec(_REGISTRY[key][1]) is not None


def install_hint(name: str) -> str:
    key = canonical_name(name)
    if key not in _REGISTRY:
        return f"pip install {_plugins_found()[key].package}"
    extra = _REGISTRY[key][2]
    if not extra:
        return "pip install d2lgru"
    return pip_extra(extra)


def available_backends() -> list[str]:
    """The known backends whose framework is installed: the built-in ones in registry order,
    then the third-party ones (by name) that have no known problem."""
    return [name for name in BACKENDS if is_installed(name)] + \
        sorted(k for k, p in _plugins_found().items() if p.problem is None)


_loaded: dict[str, Backend] = {}


def get_backend(name: str | None = None) -> Backend:
    """The backend named by ``name``, else ``$D2LGRU_BACKEND``, else ``numpy``.
    A backend object passes through unchanged."""
    if isinstance(name, Backend):
        return name
    key = resolve_name(name)
    if key not in _loaded and key not in _REGISTRY:
        _loaded[key] = _plugins.load(_plugins_found()[key], Backend)
    if key not in _loaded:
        framework = _REGISTRY[key][1]
        if not is_installed(key):
            raise BackendNotInstalledError(f"backend {key!r} needs the {framework!r} package, which is not "
                                           f"installed; install it with: {install_hint(key)}")
        _loaded[key] = _import_adapter(key).backend
    return _loaded[key]


def _import_adapter(key: str):
    """Import ``key``'s adapter module, which imports its framework. A framework whose import
    fails -- an ``OSError`` such as a missing CUDA library, or an ``ImportError`` inside it -- is
    a broken install: one :class:`BackendNotInstalledError`. A bug in the adapter (a
    ``NameError``, an import of a d2lgru name that does not exist) keeps its traceback."""
    module_name, framework, _ = _REGISTRY[key]
    try:
        return importlib.import_module(module_name)
    except BackendNotInstalledError:
        raise
    except (ImportError, OSError) as exc:
        if isinstance(exc, ImportError) and _names_our_own_module(exc, module_name):
            raise
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise BackendNotInstalledError(
            f"backend {key!r} could not import its framework {framework!r} "
            f"({type(exc).__name__}: {first_line}); the install is broken or incomplete, "
            f"install it again with: {install_hint(key)}") from exc


def _names_our_own_module(exc: ImportError, adapter: str) -> bool:
    failed = exc.name or ""
    return failed == adapter or failed.split(".")[0] == __name__.split(".")[0]



@contextlib.contextmanager
def backend_context(name: str):
    """Within the block, ``get_backend()`` with no argument returns ``name``'s backend. Only
    this thread (or asyncio task) sees it; ``$D2LGRU_BACKEND`` is neither read nor changed."""
    key = canonical_name(name)
    backend = get_backend(key)
    token = _context_backend.set(key)
    try:
        yield backend
    finally:
        _context_backend.reset(token)


__all__ = ["BACKENDS", "ALIASES", "ENV_VAR", "Backend", "ImplInfo", "LMResult", "Trainer",
           "UnsupportedError", "available_backends", "backend_context", "canonical_name",
           "get_backend", "install_hint", "is_installed", "resolve_name"]


def framework_of(name: str) -> str:
    """The import name of the framework behind a built-in backend (``numpy`` for the oracle)."""
    return _REGISTRY[canonical_name(name)][1]


__all__ += ["framework_of", "plugin_backends", "source_of"]
