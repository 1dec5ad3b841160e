"""Shared fixtures. Tests never download: they read The Time Machine from ../shared/data."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("D2LGRU_DATA_DIR") or SHARED_DATA)
    if not (path / "timemachine.txt").is_file():
        pytest.fail(f"The Time Machine is not at {path}; the tests read ../shared/data/timemachine.txt "
                    f"or $D2LGRU_DATA_DIR")
    return path


# tests/interop needs onnx, onnxruntime and torch: the `onnx` tox environment installs them and
# sets D2LGRU_ONNX_TESTS=1 to collect it (every test there runs, none skips); the others leave it out
collect_ignore = [] if os.environ.get("D2LGRU_ONNX_TESTS") == "1" else ["interop"]
