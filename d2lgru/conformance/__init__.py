"""The conformance suite: every backend against the NumPy oracle in float64.

* :mod:`~d2lgru.conformance.tables` -- the one tolerance table and the one known-failure table;
* :mod:`~d2lgru.conformance.compare` -- :func:`compare` / :func:`assert_close` and their message;
* :mod:`~d2lgru.conformance.cases` -- the shared cases, their inputs and the oracle's answers;
* :mod:`~d2lgru.conformance.runner` -- :class:`Suite` (plan, run, report.json + outputs.npz);
* :mod:`~d2lgru.conformance.matrix` -- the backend x backend matrix (matrix.md, matrix.png).

``tests/conformance`` runs the suite under pytest for ``$D2LGRU_BACKEND``;
``d2lgru conformance`` runs it without pytest, and ``d2lgru conformance --matrix DIR`` builds
the matrix. Importing this package imports no framework.
"""

from .cases import LAYER_CASES, LM_CASES, REFERENCE_CASES, ROUNDTRIP_CASES, TRAIN_CASES
from .compare import Comparison, ConformanceMismatch, assert_close, compare
from .matrix import MatrixError, build as build_matrix
from .runner import (KINDS, OUT_ENV, OUTPUTS_FILE, REPORT_FILE, Check, CheckResult, Suite, plan,
                     run_command, summary_lines)
from .tables import CHECKS, KNOWN_FAILURES, TOLERANCES, Tolerance, tolerance

__all__ = ["CHECKS", "KINDS", "KNOWN_FAILURES", "LAYER_CASES", "LM_CASES", "OUT_ENV", "OUTPUTS_FILE",
           "REFERENCE_CASES", "REPORT_FILE", "ROUNDTRIP_CASES", "TOLERANCES", "TRAIN_CASES",
           "Check", "CheckResult", "Comparison", "ConformanceMismatch", "MatrixError", "Suite",
           "Tolerance", "assert_close", "build_matrix", "compare", "plan", "run_command",
           "summary_lines", "tolerance"]
