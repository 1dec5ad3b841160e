"""The suite refuses to test nothing: a backend must be selected and importable."""

import pytest


def test_a_backend_is_selected_and_importable(conformance_selection):
    backend, error = conformance_selection
    if error is not None:
        pytest.fail(error, pytrace=False)
    assert backend.impls, f"backend {backend.name!r} declares no implementation to check"
