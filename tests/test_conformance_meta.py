"""The conformance suite judged: broken adapters must fail it, loudly and precisely.

The fake backends here are small subclasses of the real NumPy backend, each with one bug an
adapter could have; no framework is mocked. Runs in the numpy environment.
"""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2lgru import GRUParams, init_params
from d2lgru.backends import BACKENDS, ImplInfo, is_installed
from d2lgru.backends.numpy_backend import NumpyBackend, NumpyTrainer
from d2lgru.cli import main
from d2lgru.conformance import (KNOWN_FAILURES, LAYER_CASES, TOLERANCES, ConformanceMismatch, Suite,
                                assert_close, compare, plan, run_command)
from d2lgru.errors import InvalidArgumentError
from d2lgru.model import LMParams

ROOT = Path(__file__).resolve().parents[1]


# -- the fake adapters ----------------------------------------------------------------------

def swap_zr(p):
    """z and r exchanged on the gate axis (axis 0 of every canonical array)."""
    fn = lambda a: np.ascontiguousarray(a[[1, 0, 2]])  # noqa: E731
    return p.gru.map(fn) if isinstance(p, LMParams) else p.map(fn)


def swap_lm(model):
    return LMParams(swap_zr(model.gru), model.W_hq, model.b_q)


class SwapTrainer(NumpyTrainer):
    def __init__(self, model, **kw):
        super().__init__(swap_lm(model), **kw)

    def params(self):
        return swap_lm(super().params())


class GateSwapBackend(NumpyBackend):
    """Its layout converter puts the reset gate where the update gate belongs, both ways."""

    name = "gateswap"

    def _gru(self, impl, params, X, h0):
        return super()._gru(impl, swap_zr(params), X, h0)

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        dparams, dX, dh0 = super()._gru_backward(impl, swap_zr(params), X, h0, dY, dh_n)
        return swap_zr(dparams), dX, dh0

    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        res = super()._lm_loss_and_grads(impl, swap_lm(model), X, Y, state)
        return res._replace(grads=swap_lm(res.grads))

    def _make_trainer(self, model, **kw):
        return SwapTrainer(model, **kw)


def as_cell(params, reset_after):
    return GRUParams(params.spec.__class__(**{**params.spec.to_dict(), "reset_after": reset_after}),
                     params.cells)


class WrongCellBackend(NumpyBackend):
    """Runs its reset-after kernel even when asked for the book's reset-before cell."""

    name = "wrongcell"

    def _gru(self, impl, params, X, h0):
        return super()._gru(impl, as_cell(params, True), X, h0)

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        dparams, dX, dh0 = super()._gru_backward(impl, as_cell(params, True), X, h0, dY, dh_n)
        return GRUParams(params.spec, dparams.cells), dX, dh0


class IgnoresAblationBackend(NumpyBackend):
    """Declares the ablations but always computes the full GRU."""

    name = "fullgru"

    def _gru(self, impl, params, X, h0):
        return super()._gru(impl, as_gates(params, "both"), X, h0)


def as_gates(params, gates):
    return GRUParams(params.spec.__class__(**{**params.spec.to_dict(), "gates": gates}),
                     params.cells)


class OnnxLayoutBackend(NumpyBackend):
    """A correct "native" impl whose layout is ONNX's (one layer), with two execution modes."""

    name = "onnxlayout"
    impls = {"scratch": NumpyBackend.impls["scratch"],
             "native": ImplInfo("ONNX-layout weights run by the oracle", max_layers=1,
                                modes=("graph", "eager"))}

    def _to_native(self, params):
        return {k: v for k, v in params.to_onnx().items() if k in ("W", "R", "B")}

    def _from_native(self, native, spec):
        return GRUParams.from_onnx(native["W"], native["R"], native["B"],
                                   linear_before_reset=int(spec.reset_after))

    def _native_reference(self, spec, X, h0, seed):
        rng = np.random.default_rng(seed)
        params = init_params(spec, dtype=X.dtype).map(
            lambda a: rng.uniform(-0.3, 0.3, a.shape).astype(X.dtype))
        Y, h_n = self._gru("native", params, X, h0)
        return params, Y, h_n


class LossyLayoutBackend(OnnxLayoutBackend):
    """Its converter rounds through float32, which float64 weights notice."""

    name = "lossylayout"

    def _to_native(self, params):
        return {k: v.astype(np.float32).astype(v.dtype)
                for k, v in super()._to_native(params).items()}


def failing_messages(suite):
    return [r.message(suite.backend.name) for r in suite.results.values() if not r.ok]


# -- the cases and the tables ---------------------------------------------------------------

def test_layer_cases_cover_every_factor_and_every_pair():
    factors = {
        "T": lambda c: c.T, "N": lambda c: c.N,
        "layers x direction": lambda c: (c.num_layers, c.bidirectional),
        "h0": lambda c: c.nonzero_h0, "scale": lambda c: c.scale > 1,
    }
    levels = {"T": {1, 7, 35}, "N": {1, 4, 32}, "h0": {False, True}, "scale": {False, True},
              "layers x direction": {(1, False), (1, True), (2, False), (2, True)}}
    for name, f in factors.items():
        assert {f(c) for c in LAYER_CASES} == levels[name], name
    for a, b in itertools.combinations(factors, 2):
        seen = {(factors[a](c), factors[b](c)) for c in LAYER_CASES}
        assert len(seen) == len(levels[a]) * len(levels[b]), (a, b)
    assert all(c.input_size != c.hidden_size for c in LAYER_CASES)
    assert any(c.hidden_size >= 32 for c in LAYER_CASES)
    assert 12 <= len(LAYER_CASES) <= 16


def test_each_case_runs_in_both_cell_variants_every_dtype_and_every_declared_gate_set():
    checks, refused = plan(NumpyBackend())
    assert not refused
    gru = {(c.case, c.variant, c.dtype) for c in checks if c.kind == "gru" and c.gates == "both"}
    assert len(gru) == len(LAYER_CASES) * 2 * 2
    ablated = {(c.kind, c.gates) for c in checks if c.gates != "both"}
    assert ablated == {(k, g) for k in ("gru", "lm") for g in ("reset-only", "update-only", "none")}
    assert "gru/T7-N4-I5-H8-L1-uni-zero-x8/reset_after/none/float64" in {c.id for c in checks}
    undeclared = [c for c in plan(OnnxLayoutBackend())[0] if c.impl == "native"]
    assert undeclared and all(c.gates == "both" for c in undeclared)  # ablations are opt-in


@pytest.mark.parametrize("variant", ["reset_before", "reset_after"])
def test_the_clipped_training_case_clips_every_step_and_the_book_case_none(variant, data_dir):
    from d2lgru.backends.numpy_backend import clip_and_sgd, lm_step
    from d2lgru.conformance.cases import TRAIN_CASES, train_inputs
    norms = {}
    for case in TRAIN_CASES:
        inp = train_inputs(case, variant, str(data_dir))
        model, state, norms[case.init] = inp["model"].astype(np.float64), None, []
        for X, Y in inp["batches"]:
            res = lm_step(model, X, Y, state)
            state = res.state
            norms[case.init].append(clip_and_sgd(model.flat(), res.grads.flat(), 1.0, 1.0))
    assert len(norms["book"]) == 10 and max(norms["book"]) < 1 < min(norms["clipped"])


def test_tolerances_are_no_looser_than_the_issue_asks():
    floors = {("float32", "output"): (1e-4, 1e-5), ("float32", "gradient"): (1e-3, 1e-5),
              ("float32", "train_loss"): (1e-4, 0.0), ("float32", "train_weights"): (1e-3, 1e-5)}
    for (dtype, kind), tol in TOLERANCES.items():
        rtol, atol = floors.get((dtype, kind), (1e-9, 1e-9) if dtype == "float64" else (0, 0))
        assert tol.rtol <= rtol and tol.atol <= atol, (dtype, kind)
        assert len(tol.why) > 20, f"{dtype}/{kind} needs a reason"


def test_known_failure_table_is_well_formed():
    for (backend, impl, pattern), reason in KNOWN_FAILURES.items():
        assert backend in BACKENDS and impl in ("scratch", "native") and pattern
        assert isinstance(reason, str) and len(reason) > 10


# -- the comparison and its message ---------------------------------------------------------

def test_compare_reports_count_and_worst_differences_with_their_index():
    expected = np.arange(12, dtype=np.float64).reshape(3, 4) + 1.0
    actual = expected.astype(np.float32)
    actual[1, 2] += 0.5   # the largest absolute difference
    actual[0, 0] += 0.25  # the largest relative one (expected 1.0)
    with pytest.raises(ConformanceMismatch) as info:
        assert_close(actual, expected, rtol=1e-4, atol=1e-5, quantity="Y", context="fake case")
    msg = str(info.value)
    assert msg.splitlines()[0] == "fake case: Y is not close to the oracle's!"
    assert "Mismatched elements: 2 / 12 (16.7%)" in msg
    assert "Greatest absolute difference: 0.5 at index (1, 2) (up to 1e-05 allowed)" in msg
    assert "Greatest relative difference: 0.25 at index (0, 0) (up to 0.0001 allowed)" in msg


def test_compare_catches_nan_shape_dtype_and_non_arrays():
    e = np.ones(4)
    nan = np.array([1, np.nan, 1, 1], np.float32)
    c = compare(nan, e, rtol=1e-4, atol=1e-5, quantity="h_n")
    assert not c.passed and c.mismatched == 1 and c.max_abs == np.inf and c.max_abs_index == (1,)
    assert not compare(np.ones(5), e, rtol=1, atol=1, quantity="Y").passed
    wrong_dtype = compare(np.ones(4), e, rtol=1, atol=1, quantity="Y", dtype=np.float32)
    assert not wrong_dtype.passed and "dtype float64, expected float32" in wrong_dtype.message()
    assert "got list" in compare([1.0] * 4, e, rtol=1, atol=1, quantity="Y").message()
    assert compare(np.float32(1.0) + np.zeros(4, np.float32), e, rtol=0, atol=0,
                   quantity="Y").passed


# -- broken adapters fail ---------------------------------------------------------------------

def test_swapped_gates_fail_the_layer_checks_with_a_clear_message(data_dir):
    suite = Suite(GateSwapBackend(), data_path=data_dir,
                  select=[f"scratch:gru/T7-N4-I5-H8-L1-uni-zero-x8/{v}/float32"
                          for v in ("reset_before", "reset_after")])
    results = suite.run_all()
    assert [r.status for r in results] == ["failed", "failed"]
    msg = results[0].message("gateswap")
    print(msg)  # pytest -s shows what an adapter engineer sees
    head = "gateswap/scratch gru/T7-N4-I5-H8-L1-uni-zero-x8/reset_before/float32: "
    assert f"{head}Y is not close to the oracle's!" in msg
    assert re.search(r"Mismatched elements: \d+ / 224 \(\d+\.\d%\)", msg)
    assert re.search(r"Greatest absolute difference: \S+ at index \(\d+, \d+, \d+\) "
                     r"\(up to 1e-05 allowed\)", msg)
    assert re.search(r"Greatest relative difference: \S+ at index \(\d+, \d+, \d+\) "
                     r"\(up to 0.0001 allowed\)", msg)
    failed = {q.quantity for q in results[0].comparisons if not q.passed}
    assert {"Y", "h_n", "dX", "dh0", "dparams.l0.d0.W_h"} <= failed
    assert not suite.ok


def test_swapped_gates_fail_the_language_model_and_training_checks(data_dir):
    suite = Suite(GateSwapBackend(), data_path=data_dir,
                  select=["scratch:lm/L1-uni-carried/reset_before/float32",
                          "scratch:train/*/reset_after/float32"])
    results = {r.check.id: r for r in suite.run_all()}
    assert len(results) == 3 and all(r.status == "failed" for r in results.values())
    lm = results["lm/L1-uni-carried/reset_before/float32"]
    assert {"logits", "loss", "state", "grads.gru.l0.d0.W_x"} <= {
        q.quantity for q in lm.comparisons if not q.passed}
    for init in ("book-H64", "clipped-H64"):
        r = results[f"train/{init}/reset_after/float32"]
        assert len(r.training["losses"]) == len(r.training["oracle_losses"]) == 10
        assert any(not q.passed for q in r.comparisons if q.group == "weights"), init


def test_reset_after_math_for_the_reset_before_cell_fails_only_that_cell(data_dir):
    suite = Suite(WrongCellBackend(), data_path=data_dir,
                  select=[f"scratch:gru/T35-N4-I5-H8-L2-uni-h0-x8/{v}/float32"
                          for v in ("reset_before", "reset_after")])
    status = {r.check.variant: r.status for r in suite.run_all()}
    assert status == {"reset_before": "failed", "reset_after": "passed"}


def test_an_ignored_gate_ablation_fails_and_the_full_gru_passes(data_dir):
    suite = Suite(IgnoresAblationBackend(), data_path=data_dir,
                  select="scratch:gru/T7-N4-I5-H8-L1-uni-zero-x8/reset_before*/float32")
    status = {r.check.gates: r.status for r in suite.run_all()}
    assert status == {"both": "passed", "reset-only": "failed", "update-only": "failed",
                      "none": "failed"}


def test_native_layout_round_trip_and_reference_checks(data_dir):
    good = Suite(OnnxLayoutBackend(), data_path=data_dir, select="native:native-*")
    kinds = {(c.kind, c.dtype) for c in good.checks}
    assert kinds == {("native-roundtrip", "float32"), ("native-roundtrip", "float64"),
                     ("native-reference", "float32")}
    assert all(r.status == "passed" for r in good.run_all()), failing_messages(good)
    assert any("native-reference/L2-bi" in r["check"] for r in good.refused)  # max_layers=1
    lossy = Suite(LossyLayoutBackend(), data_path=data_dir, select="native:native-roundtrip/*")
    status = {r.check.dtype: r.status for r in lossy.run_all()}
    assert status == {"float32": "passed", "float64": "failed"}
    assert "roundtrip.l0.d0.W_x is not close" in failing_messages(lossy)[0]


def test_every_training_mode_is_checked_and_only_the_default_is_shared():
    checks, _ = plan(OnnxLayoutBackend())
    train = [c for c in checks if c.impl == "native" and c.kind == "train"]
    ids = {c.id for c in train}
    assert "train/book-H64/reset_before/float32" in ids
    assert "train/book-H64/reset_before/float32/mode=eager" in ids
    assert "train/book-H64/reset_before/float64/mode=eager" not in ids
    assert {c.mode for c in train if c.shared} == {"graph"}


# -- known failures are strict ----------------------------------------------------------------

def test_a_listed_failure_is_expected_and_an_unexpected_pass_fails(data_dir):
    pattern = "gru/T7-N4-I5-H8-L1-uni-zero-x8/reset_before/float32"
    known = Suite(GateSwapBackend(), data_path=data_dir, select=f"scratch:{pattern}",
                  known_failures={("gateswap", "scratch", pattern): "gates swapped on purpose"})
    assert [r.status for r in known.run_all()] == ["known-failure"] and known.ok
    passing = Suite(NumpyBackend(), data_path=data_dir, select=f"scratch:{pattern}",
                    known_failures={("numpy", "scratch", pattern): "pretend it fails"})
    [result] = passing.run_all()
    assert result.status == "unexpected-pass" and not passing.ok
    assert "remove the entry" in result.message("numpy")
    stale = Suite(NumpyBackend(), known_failures={("numpy", "native", "gru/*"): "no such impl"})
    assert stale.stale_known_failures() and not stale.ok


# -- the report, the command and the matrix ---------------------------------------------------

SMALL = ["scratch:gru/T7-N4-I5-H8-L1-uni-zero-x8/*/float32", "scratch:gru/T1-N1-*/reset_after/*",
         "scratch:lm/L1-uni-carried/reset_after/float32",
         "scratch:train/clipped-H64/reset_after/float32"]


class CountingBackend(NumpyBackend):
    """NumPy, counting the GRU passes the suite asks of it."""

    name = "counting"
    passes = 0

    def _gru(self, impl, params, X, h0):
        CountingBackend.passes += 1
        return super()._gru(impl, params, X, h0)


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_out_that_cannot_be_written_is_said_before_the_checks_run(tmp_path, data_dir, where):
    """The checks take minutes on some frameworks: their report's directory is made first."""
    (tmp_path / "file").write_text("x")
    out = {"under a file": tmp_path / "file" / "reports", "in /proc": Path("/proc/d2lgru-x")}[where]
    CountingBackend.passes = 0
    with pytest.raises(InvalidArgumentError, match=re.escape(
            f"cannot create the report directory {out / 'counting'}: ")):
        run_command(CountingBackend(), out, data_dir, SMALL[:1])
    assert CountingBackend.passes == 0
    assert run_command(CountingBackend(), tmp_path / "reports", data_dir, SMALL[:1]) == 0
    assert CountingBackend.passes > 0 and (tmp_path / "reports" / "counting" / "report.json").is_file()


def test_report_command_and_matrix_on_real_reports(tmp_path, data_dir, capsys):
    args = ["conformance", "--backend", "numpy", "--out", str(tmp_path), "--data", str(data_dir)]
    assert main(args + [a for pattern in SMALL for a in ("--cases", pattern)]) == 0
    summary = capsys.readouterr().out
    for group in ("Y ", "h_n", "dparams", "logits", "grads", "losses", "weights"):
        assert re.search(rf"^{group}\s+\d+ compared, +\d+ passed, +0 failed", summary, re.M), group
    assert run_command(GateSwapBackend(), tmp_path, data_dir, SMALL[:1] + SMALL[2:]) == 1
    assert "is not close to the oracle's!" in capsys.readouterr().out

    report = json.loads((tmp_path / "numpy" / "report.json").read_text())
    for key in ("backend", "framework_version", "d2lgru_version", "python", "platform",
                "timestamp", "tolerances", "known_failures", "checks"):
        assert key in report, key
    assert report["ok"] and not report["complete"]
    check = report["checks"][0]
    assert {"impl", "variant", "dtype", "status", "quantities"} <= set(check)
    assert {"quantity", "max_abs", "max_rel", "rtol", "atol", "passed"} <= set(
        check["quantities"][0])
    train = [c for c in report["checks"] if c["kind"] == "train"]
    assert train and all(len(c["training"]["losses"]) == 10 for c in train)
    with np.load(tmp_path / "numpy" / "outputs.npz", allow_pickle=False) as npz:
        assert "scratch/float32/gru/T7-N4-I5-H8-L1-uni-zero-x8/reset_before/Y" in npz.files
        assert "oracle/float64/train/clipped-H64/reset_after/losses" in npz.files
        assert "scratch/float64/gru/T1-N1-I5-H8-L1-uni-h0-x1/reset_after/Y" not in npz.files

    assert main(["conformance", "--matrix", str(tmp_path)]) == 0
    assert "matrix.md" in capsys.readouterr().out
    md = (tmp_path / "matrix.md").read_text()
    assert report["framework_version"] in md
    outputs = md.split("## Outputs")[1].split("##")[0]
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2:-1]
            for line in outputs.splitlines() if line.startswith("| `")}
    assert set(rows) == {"oracle", "numpy/scratch", "gateswap/scratch"}
    labels = [cell.strip(" `") for cell in
              next(l for l in outputs.splitlines() if l.startswith("| |")).split("|")[2:-1]]
    oracle = dict(zip(labels, (float(c) for c in rows["oracle"])))
    assert 0 < oracle["numpy/scratch"] < 1e-5 and oracle["gateswap/scratch"] > 1e-2
    png = (tmp_path / "matrix.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_matrix_without_reports_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["conformance", "--matrix", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no conformance reports in" in err[0]


MATRIX_REPORT = {"format": "d2lgru.ConformanceReport/1", "backend": "numpy", "framework": "numpy",
                 "framework_version": "2.0", "d2lgru_version": "0.1", "python": "3.11",
                 "platform": "Linux", "timestamp": "2024-01-01T00:00:00+00:00", "ran": 1,
                 "counts": {"passed": 1}, "complete": False,
                 "checks": [{"case": "gru/c", "inputs_sha1": None}]}


@pytest.mark.parametrize("report, npz, match", [
    ("{not json", None, "Expecting property name"),
    (dict(MATRIX_REPORT, format="other/1"), None, "format 'other/1', expected"),
    (MATRIX_REPORT, b"not a zip file", "outputs.npz"),
    ([], None, "report.json holds an array, expected an object"),
    ({k: v for k, v in MATRIX_REPORT.items() if k != "backend"}, None,
     "report.json has no 'backend', expected a string there"),
    (dict(MATRIX_REPORT, backend=7), None, "'backend' is an integer, expected a string"),
    (dict(MATRIX_REPORT, ran="1"), None, "'ran' is a string, expected an integer"),
    (dict(MATRIX_REPORT, checks=None), None, "'checks' is null, expected an array of checks"),
    (dict(MATRIX_REPORT, checks=[{"inputs_sha1": None}]), None,
     "checks\\[0\\] is .* expected an object with a string 'case'"),
    (dict(MATRIX_REPORT, counts={"passed": "1"}), None, "'counts' is .* expected an object of "
                                                         "integers"),
], ids=["bad-json", "format", "broken-npz", "array", "no-backend", "backend-int", "ran-str",
        "checks-null", "check-without-case", "counts-str"])
def test_a_report_the_matrix_cannot_read_is_one_line_and_exit_2(tmp_path, capsys, report, npz,
                                                                 match):
    from d2lgru.conformance.runner import FORMAT_OUTPUTS
    from d2lgru.spec import save_npz
    run_dir = tmp_path / "numpy"
    save_npz(run_dir / "outputs.npz", FORMAT_OUTPUTS, {"backend": "numpy"},
             {"oracle/float64/gru/c/Y": np.zeros(3), "scratch/float32/gru/c/Y": np.zeros(3)})
    (run_dir / "report.json").write_text(json.dumps(MATRIX_REPORT))
    assert main(["conformance", "--matrix", str(tmp_path)]) == 0   # the well-formed report works
    capsys.readouterr()
    (run_dir / "report.json").write_text(report if isinstance(report, str) else json.dumps(report))
    if npz is not None:
        (run_dir / "outputs.npz").write_bytes(npz)
    assert main(["conformance", "--matrix", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"cannot read the report in {run_dir}: " in err[0] and re.search(match, err[0]), err[0]


# -- the suite under pytest refuses to test nothing -------------------------------------------

def run_conformance_pytest(backend):
    env = {k: v for k, v in os.environ.items()
           if k not in ("D2LGRU_BACKEND", "D2LGRU_CONFORMANCE_DIR")}
    if backend is not None:
        env["D2LGRU_BACKEND"] = backend
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "conformance")], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def test_no_backend_selected_fails_loudly():
    proc = run_conformance_pytest(None)
    assert proc.returncode == 1, proc.stdout
    assert "D2LGRU_BACKEND is not set" in proc.stdout and "1 failed" in proc.stdout
    assert "skipped" not in proc.stdout


def test_a_backend_that_is_not_installed_fails_loudly():
    missing = next((name for name in BACKENDS if not is_installed(name)), None)
    if missing is None:
        pytest.skip("every framework is installed here")
    proc = run_conformance_pytest(missing)
    assert proc.returncode == 1, proc.stdout
    assert f'pip install "d2lgru[{missing}]"' in proc.stdout and "skipped" not in proc.stdout
