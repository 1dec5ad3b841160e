"""Backend tests: test_surface.py (what every backend does alike) runs against the selected
backend, and of the backend-specific files only the selected backend's is collected, so each tox
environment runs its own."""

import os

import pytest

from d2lgru.backends import BACKENDS, get_backend, resolve_name

_selected = resolve_name(os.environ.get("D2LGRU_BACKEND") or None)
collect_ignore_glob = [f"test_{name}.py" for name in BACKENDS if name != _selected]


@pytest.fixture(scope="module")
def be():
    """The backend under test: the one this environment selects."""
    return get_backend(_selected)


@pytest.fixture(scope="module")
def oracle():
    """The NumPy oracle."""
    return get_backend("numpy")
