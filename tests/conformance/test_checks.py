"""One test per conformance check of the selected backend against the NumPy float64 oracle.

The cases, tolerances and known failures live in d2lgru/conformance/; see its package docstring.
"""

import pytest


def test_check(conformance_suite, check):
    result = conformance_suite.run(check)
    if result.status == "known-failure":
        pytest.xfail(f"known failure: {result.known_reason}")
    if result.status == "error":
        raise result.exception
    if result.status != "passed":
        pytest.fail(result.message(conformance_suite.backend.name), pytrace=False)


def test_the_backend_declares_checks(conformance_suite):
    assert conformance_suite.all_checks, (
        f"backend {conformance_suite.backend.name!r} declares nothing the suite can check: "
        f"{conformance_suite.refused}")


def test_known_failures_match_checks_the_backend_runs(conformance_suite):
    stale = conformance_suite.stale_known_failures()
    assert not stale, (f"KNOWN_FAILURES entries for {conformance_suite.backend.name} that match no "
                       f"check it runs (remove them from d2lgru/conformance/tables.py): {stale}")
