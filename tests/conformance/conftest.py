"""The conformance suite under pytest, for the backend named by ``$D2LGRU_BACKEND``.

It never tests nothing silently: with the variable unset, naming an unknown backend, or naming
one whose framework (or adapter) cannot be imported, the case tests are not collected and
``test_selection.py`` fails with the reason. The rest of ``pytest tests`` runs as usual.

Each check of :func:`d2lgru.conformance.plan` is one test, id ``impl:check-id`` (select with
``-k``). With ``$D2LGRU_CONFORMANCE_DIR`` set (tox sets it), the session writes
``<dir>/<backend>/report.json`` and ``outputs.npz`` of the checks it ran; unset, it writes
nothing.
"""

import os

import pytest

from d2lgru.backends import ENV_VAR, available_backends, get_backend, resolve_name
from d2lgru.conformance import OUT_ENV, REPORT_FILE, Suite, summary_lines


def _select():
    raw = os.environ.get(ENV_VAR, "")
    if not raw.strip():
        return None, (f"${ENV_VAR} is not set, so there is no backend to hold to the oracle. Name "
                      f"one ({', '.join(available_backends())}), e.g. "
                      f"`{ENV_VAR}=numpy pytest tests/conformance`, or run `tox -e <backend>`")
    try:
        return get_backend(resolve_name()), None
    except Exception as exc:  # unknown name, framework not installed, adapter that fails to import
        return None, f"${ENV_VAR}={raw!r} cannot be tested: {type(exc).__name__}: {exc}"


BACKEND, SELECTION_ERROR = _select()
SUITE = None if BACKEND is None else Suite(BACKEND)
collect_ignore = ["test_checks.py"] if SUITE is None else []
_written = []


@pytest.fixture(scope="session")
def conformance_selection():
    return BACKEND, SELECTION_ERROR


@pytest.fixture(scope="session")
def conformance_suite(data_dir):
    SUITE.data_path = str(data_dir)
    return SUITE


def pytest_generate_tests(metafunc):
    if "check" in metafunc.fixturenames and SUITE is not None:
        metafunc.parametrize("check", SUITE.checks, ids=[c.full_id for c in SUITE.checks])


def pytest_sessionfinish(session):
    out = os.environ.get(OUT_ENV)
    if SUITE is not None and SUITE.results and out:
        _written.append(SUITE.write(out, runner="pytest"))


def pytest_terminal_summary(terminalreporter):
    if SUITE is None or not SUITE.results:
        return
    terminalreporter.section(f"conformance: {SUITE.backend.name} {SUITE.backend.version()}")
    for line in summary_lines(SUITE):
        terminalreporter.write_line(line)
    where = (f"report in {_written[0] / REPORT_FILE}" if _written else
             f"no report written (set ${OUT_ENV} to write one)")
    terminalreporter.write_line(f"{len(SUITE.results)} of {len(SUITE.all_checks)} checks ran; "
                                f"{where}")
