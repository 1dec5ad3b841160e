"""The backend registry: names, aliases, selection order, errors, and no framework at import."""

import ast
import importlib
import contextvars
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import d2lgru
from d2lgru import backends
from d2lgru.backends import (BACKENDS, ENV_VAR, _context_backend, canonical_name,
                             framework_of, install_hint, is_installed, resolve_name)
from d2lgru.errors import BackendNotInstalledError

#: the registry's list, stated once: every other file derives it from d2lgru.backends.BACKENDS
EXPECTED = ("numpy", "torch", "tensorflow", "mxnet", "paddle", "mindspore", "jax")
FRAMEWORKS = tuple(framework_of(name) for name in BACKENDS if name != "numpy")
REPO = Path(__file__).resolve().parents[1]


def test_known_names_and_aliases():
    assert d2lgru.BACKENDS == EXPECTED
    for alias, name in {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow",
                        "mx": "mxnet", "paddlepaddle": "paddle", "ms": "mindspore",
                        "flax": "jax", "NumPy": "numpy"}.items():
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
        d2lgru.get_backend("theano")
    msg = str(err.value)
    assert "'theano'" in msg and "from argument" in msg
    assert "numpy, torch, tensorflow, mxnet, paddle, mindspore, jax" in msg


def test_unknown_name_from_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "caffe")
    with pytest.raises(ValueError, match=r"unknown backend 'caffe' \(from \$D2LGRU_BACKEND\)"):
        d2lgru.get_backend()


def test_missing_framework_names_the_extra(monkeypatch):
    missing = [name for name in BACKENDS if not is_installed(name)]
    if not missing:
        pytest.fail("every framework is installed here; this test needs an environment without one")
    name = missing[0]
    with pytest.raises(ImportError, match=rf'pip install "d2lgru\[{name}\]"'):
        d2lgru.get_backend(name)
    assert name not in d2lgru.available_backends()
    # no index serves d2lgru: a clone installs the extra from its own directory
    assert install_hint(name) == (f'pip install "d2lgru[{name}]" '
                                  f'(from a clone: pip install ".[{name}]")')
    monkeypatch.setitem(sys.modules, "onnx", None)  # an extra's message says the same
    with pytest.raises(ImportError, match=r'\(from a clone: pip install "\.\[onnx]"\)$'):
        importlib.import_module("d2lgru.onnx_io")._onnx()


def test_backend_context_leaves_the_variable_alone(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    with d2lgru.backend_context("numpy") as be:
        assert be.name == "numpy" and d2lgru.get_backend().name == "numpy"
        assert os.environ[ENV_VAR] == "torch"  # the block is not the process's environment
        assert resolve_name("numpy") == "numpy"  # an argument still wins
    assert os.environ[ENV_VAR] == "torch"


def _backend_lists(source: str) -> list[tuple[int, list[str]]]:
    """Literal lists, tuples, sets and dict keys in ``source`` that name 3+ backends."""
    found = []
    for node in ast.walk(ast.parse(source)):
        elements = node.keys if isinstance(node, ast.Dict) else \
            node.elts if isinstance(node, (ast.List, ast.Tuple, ast.Set)) else ()
        names = [e.value for e in elements if isinstance(e, ast.Constant) and e.value in BACKENDS]
        if len(names) >= 3:
            found.append((node.lineno, names))
    return found


def test_no_file_but_the_registry_lists_the_backends():
    """One backend list: a second copy drifts (a new backend joins one list and not the other)."""
    proc = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"not a git checkout: {proc.stderr.strip()}")
    # Keras 3's own backends happen to share three names with ours; that list is Keras' fact
    allowed = {"d2lgru/backends/__init__.py", "tests/test_registry.py",
               "benchmarks/bare/__init__.py"}
    offences = [f"{path}:{line}: {names}" for path in proc.stdout.split() if path not in allowed
                and (REPO / path).is_file()
                for line, names in _backend_lists((REPO / path).read_text(encoding="utf-8"))]
    assert not offences, "derive these from d2lgru.backends.BACKENDS:\n" + "\n".join(offences)


def test_the_list_finder_finds_a_list():
    assert _backend_lists('X = ("numpy", "torch", "mxnet")\nY = {"paddle": 1, "tf": 2}') == \
        [(1, ["numpy", "torch", "mxnet"])]


FAKE_FRAMEWORK, FAKE_ADAPTER = "d2lgru_fake_framework", "d2lgru_fake_adapter"


@pytest.fixture
def fake_backend(monkeypatch, tmp_path):
    """``install(framework_init, adapter=...)``: a real package named ``d2lgru_fake_framework``
    whose ``__init__.py`` is ``framework_init``, and an adapter module that imports it; the
    registry's ``mindspore`` entry points at them for the test. Returns the backend name."""
    def install(framework_init, adapter=f"import {FAKE_FRAMEWORK}\nbackend = object()\n"):
        (tmp_path / FAKE_FRAMEWORK).mkdir()
        (tmp_path / FAKE_FRAMEWORK / "__init__.py").write_text(framework_init)
        (tmp_path / f"{FAKE_ADAPTER}.py").write_text(adapter)
        monkeypatch.syspath_prepend(str(tmp_path))
        for module in (FAKE_FRAMEWORK, FAKE_ADAPTER):
            monkeypatch.delitem(sys.modules, module, raising=False)
        monkeypatch.setitem(backends._REGISTRY, "mindspore", (FAKE_ADAPTER, FAKE_FRAMEWORK, "mindspore"))
        monkeypatch.setattr(backends, "_loaded", {})
        return "mindspore"
    return install


@pytest.mark.parametrize("failure,first_line", [
    ('raise OSError("libcudart.so.12: cannot open shared object file: No such file or directory")',
     "OSError: libcudart.so.12: cannot open shared object file: No such file or directory"),
    ('raise ImportError("DLL load failed while importing _core\\nsee the install guide")',
     "ImportError: DLL load failed while importing _core"),
    ("import d2lgru_no_such_dependency",
     "ModuleNotFoundError: No module named 'd2lgru_no_such_dependency'"),
])
def test_a_framework_whose_import_fails_is_one_backend_not_installed_error(fake_backend, failure,
                                                                           first_line):
    name = fake_backend(failure + "\n")
    with pytest.raises(BackendNotInstalledError) as info:
        d2lgru.get_backend(name)
    message = str(info.value)
    assert f"backend {name!r}" in message and repr(FAKE_FRAMEWORK) in message
    assert f"({first_line})" in message and "\n" not in message
    assert message.endswith(f'install it again with: pip install "d2lgru[{name}]" '
                            f'(from a clone: pip install ".[{name}]")')
    assert isinstance(info.value, ImportError) and info.value.__cause__ is not None


@pytest.mark.parametrize("adapter,error", [
    (f"import {FAKE_FRAMEWORK}\nbackend = undefined_name\n", NameError),
    (f"import {FAKE_FRAMEWORK}\nfrom d2lgru.backends._base import NoSuchThing\n", ImportError),
    (f"import {FAKE_FRAMEWORK}\nimport d2lgru.backends.no_such_module\n", ModuleNotFoundError),
])
def test_a_bug_in_an_adapter_keeps_its_traceback(fake_backend, adapter, error):
    name = fake_backend("", adapter)
    with pytest.raises(error) as info:
        d2lgru.get_backend(name)
    assert not isinstance(info.value, BackendNotInstalledError)


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
