"""The backend registry: names, aliases, selection order, errors, and no framework at import."""

import contextvars
import importlib.util
import os
import threading

import pytest

import d2lgru
from d2lgru.backends import ENV_VAR, _context_backend, canonical_name, install_hint, resolve_name

FRAMEWORKS = ("torch", "tensorflow", "mxnet", "paddle", "mindspore")


def test_known_names_and_aliases():
    assert d2lgru.BACKENDS == ("numpy", "torch", "tensorflow", "mxnet", "paddle", "mindspore")
    for alias, name in {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow",
                        "mx": "mxnet", "paddlepaddle": "paddle", "ms": "mindspore",
                        "NumPy": "numpy"}.items():
        assert canonical_name(alias) == name
    assert "numpy" in d2lgru.available_backends()


def test_selection_order(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert d2lgru.get_backend().name == "numpy"
    monkeypatch.setenv(ENV_VAR, "numpy")
    assert d2lgru.get_backend().name == "numpy"
    monkeypatch.setenv(ENV_VAR, "nonsense")
    assert d2lgru.get_backend("numpy").name == "numpy"  # the argument wins over the variable


def test_unknown_name_from_argument():
    with pytest.raises(ValueError) as err:
        d2lgru.get_backend("jax")
    msg = str(err.value)
    assert "'jax'" in msg and "from argument" in msg
    assert "numpy, torch, tensorflow, mxnet, paddle, mindspore" in msg


def test_unknown_name_from_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "theano")
    with pytest.raises(ValueError, match=r"unknown backend 'theano' \(from \$D2LGRU_BACKEND\)"):
        d2lgru.get_backend()


def test_missing_framework_names_the_extra(monkeypatch):
    missing = [f for f in FRAMEWORKS if importlib.util.find_spec(f) is None]
    if not missing:
        pytest.fail("every framework is installed here; this test needs an environment without one")
    name = missing[0]
    with pytest.raises(ImportError, match=rf'pip install "d2lgru\[{name}\]"'):
        d2lgru.get_backend(name)
    assert name not in d2lgru.available_backends()
    assert install_hint(name) == f'pip install "d2lgru[{name}]"'


def test_backend_context_leaves_the_variable_alone(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    with d2lgru.backend_context("numpy") as be:
        assert be.name == "numpy" and d2lgru.get_backend().name == "numpy"
        assert os.environ[ENV_VAR] == "torch"  # the block is not the process's environment
        assert resolve_name("numpy") == "numpy"  # an argument still wins
    assert os.environ[ENV_VAR] == "torch"


def test_backend_context_does_not_leak_into_other_threads_or_after_the_block(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")  # resolving a name imports nothing
    seen = {}
    with d2lgru.backend_context("NumPy"):  # any spelling of a name
        thread = threading.Thread(target=lambda: seen.setdefault("other thread", resolve_name()))
        thread.start()
        thread.join()
        seen["copied context"] = contextvars.copy_context().run(resolve_name)
        seen["inside"] = resolve_name()
    seen["after"] = resolve_name()
    assert seen == {"other thread": "torch", "copied context": "numpy", "inside": "numpy",
                    "after": "torch"}


def test_backend_context_nests_and_restores_on_error(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(RuntimeError):
        with d2lgru.backend_context("numpy"):
            with d2lgru.backend_context("numpy"):
                raise RuntimeError("inside")
    assert _context_backend.get() is None
