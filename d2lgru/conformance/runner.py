"""Plan, run and report the conformance checks of one backend against the NumPy oracle.

A *check* is one case run by one implementation in one dtype (and, for training, one execution
mode); its id, e.g. ``gru/T7-N4-I5-H8-L2-bi-h0-x8/reset_before/float32``, is what the
known-failure table matches. Only the public :class:`~d2lgru.backends.Backend` surface is used.
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from .. import __version__
from ..backends import Backend, get_backend
from .._io import check_interrupt, make_directory, write_atomic
from ..spec import GRUParams, save_npz
from . import cases as C
from .compare import Comparison, compare, json_float
from .tables import KNOWN_FAILURES, TOLERANCES, tolerance
from ..errors import InvalidArgumentError

FORMAT_REPORT = "d2lgru.ConformanceReport/1"
FORMAT_OUTPUTS = "d2lgru.ConformanceOutputs/1"
REPORT_FILE, OUTPUTS_FILE = "report.json", "outputs.npz"
OUT_ENV = "D2LGRU_CONFORMANCE_DIR"
ORACLE = "oracle"  # the pseudo-implementation under which the oracle's outputs are saved

#: check kinds; the first three run on inputs every backend shares and are saved for the matrix
KINDS = ("gru", "lm", "train", "native-roundtrip", "native-reference")
SHARED_KINDS = ("gru", "lm", "train")


@dataclasses.dataclass(frozen=True)
class Check:
    impl: str
    kind: str
    case: object
    variant: str
    dtype: str
    mode: str | None = None     # training only
    default_mode: bool = True
    gates: str = "both"         # GRUSpec.gates: the full GRU, an ablation or the plain RNN

    @property
    def case_id(self) -> str:
        """What the inputs are: the same for every backend, impl and dtype."""
        gates = "" if self.gates == "both" else f"/{self.gates}"
        return f"{self.kind}/{self.case.name}/{self.variant}{gates}"

    @property
    def id(self) -> str:
        mode = "" if self.default_mode else f"/mode={self.mode}"
        return f"{self.case_id}/{self.dtype}{mode}"

    @property
    def full_id(self) -> str:
        return f"{self.impl}:{self.id}"

    @property
    def shared(self) -> bool:
        """Saved to outputs.npz for the cross-framework matrix."""
        return self.kind in SHARED_KINDS and self.default_mode and self.dtype == "float32"


def plan(backend: Backend) -> tuple[list[Check], list[dict]]:
    """Every check ``backend`` declares it can run, and the ones it declares it cannot
    (``{"impl", "check", "reason"}``)."""
    checks, refused = [], []

    def consider(check: Check, spec):
        why = backend.impls[check.impl].refusal(spec, check.dtype)
        if why is None:
            checks.append(check)
        else:
            refused.append({"impl": check.impl, "check": check.id, "reason": why})

    for impl, info in backend.impls.items():
        modes = tuple(info.modes) or (None,)
        for variant in C.VARIANTS:
            for dtype in C.DTYPES:
                for case in C.LAYER_CASES:
                    consider(Check(impl, "gru", case, variant, dtype), case.spec(variant))
                for case in C.LM_CASES:
                    consider(Check(impl, "lm", case, variant, dtype), case.spec(variant))
                for gates in (g for g in C.ABLATIONS if g in getattr(info, "gates", ())):
                    for case in C.GATE_CASES:
                        consider(Check(impl, "gru", case, variant, dtype, gates=gates),
                                 case.spec(variant, gates))
                    for case in C.GATE_LM_CASES:
                        consider(Check(impl, "lm", case, variant, dtype, gates=gates),
                                 case.spec(variant, gates))
                # float32 trains in every mode (the default must agree with eager); float64
                # in the default mode
                for case in C.TRAIN_CASES:
                    for i, mode in enumerate(modes if dtype == "float32" else modes[:1]):
                        consider(Check(impl, "train", case, variant, dtype, mode, i == 0),
                                 case.spec(variant))
                if impl == "native":
                    for case in C.ROUNDTRIP_CASES:
                        consider(Check(impl, "native-roundtrip", case, variant, dtype),
                                 case.spec(variant))
            if impl == "native":
                for case in C.REFERENCE_CASES:
                    consider(Check(impl, "native-reference", case, variant, "float32"),
                             case.spec(variant))
    return checks, refused


@dataclasses.dataclass
class CheckResult:
    check: Check
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    outputs: dict = dataclasses.field(default_factory=dict)
    oracle_outputs: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    exception: BaseException | None = None
    known_reason: str | None = None
    seconds: float = 0.0
    fingerprint: str | None = None
    training: dict | None = None

    @property
    def failing(self) -> bool:
        return self.error is not None or any(not c.passed for c in self.comparisons)

    @property
    def status(self) -> str:
        if self.known_reason is not None:
            return "known-failure" if self.failing else "unexpected-pass"
        if self.error is not None:
            return "error"
        return "failed" if self.failing else "passed"

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "known-failure")

    def message(self, backend: str) -> str:
        where = f"{backend}/{self.check.impl} {self.check.id}"
        if self.status == "unexpected-pass":
            return (f"{where} passed, but KNOWN_FAILURES lists it ({self.known_reason!r}); "
                    f"remove the entry from d2lgru/conformance/tables.py")
        parts = [f"{where}: {self.error}"] if self.error else []
        parts += [c.message(where) for c in self.comparisons if not c.passed]
        return "\n\n".join(parts) if parts else f"{where}: {self.status}"

    def as_dict(self) -> dict:
        c = self.check
        return {"impl": c.impl, "id": c.id, "case": c.case_id, "kind": c.kind,
                "variant": c.variant, "gates": c.gates, "dtype": c.dtype, "mode": c.mode,
                "default_mode": c.default_mode, "status": self.status,
                "seconds": round(self.seconds, 4), "inputs_sha1": self.fingerprint,
                "known_failure": self.known_reason, "error": self.error,
                "quantities": [q.as_dict() for q in self.comparisons],
                "training": self.training}


class Suite:
    """The checks of one backend (a name or a :class:`Backend` object). ``run(check)`` one at a
    time (pytest does), or ``run_all()``. ``select``: ``fnmatch`` globs over ``impl:check-id``
    (one or several); ``known_failures`` replaces :data:`KNOWN_FAILURES` (for tests)."""

    def __init__(self, backend=None, *, data_path=None, known_failures=None, select=None):
        self.backend = get_backend(backend)
        if data_path is None:
            data_path = C.default_data_path()
        self.data_path = None if data_path is None else str(data_path)
        table = KNOWN_FAILURES if known_failures is None else known_failures
        self.known = {(impl, pattern): reason for (name, impl, pattern), reason in table.items()
                      if name == self.backend.name}
        self.all_checks, self.refused = plan(self.backend)
        self.select = [select] if isinstance(select, str) else (
            None if select is None else list(select))
        self.checks = [c for c in self.all_checks if self.select is None or any(
            fnmatch.fnmatchcase(c.full_id, pattern) for pattern in self.select)]
        self.results: dict[str, CheckResult] = {}

    # -- running ----------------------------------------------------------------------------
    def known_reason(self, check: Check) -> str | None:
        for (impl, pattern), reason in self.known.items():
            if impl == check.impl and fnmatch.fnmatchcase(check.id, pattern):
                return reason
        return None

    def stale_known_failures(self) -> list[dict]:
        """Entries for this backend that match none of the checks it declares."""
        return [{"impl": impl, "check": pattern, "reason": reason}
                for (impl, pattern), reason in self.known.items()
                if not any(c.impl == impl and fnmatch.fnmatchcase(c.id, pattern)
                           for c in self.all_checks)]

    def run(self, check: Check) -> CheckResult:
        result = CheckResult(check, known_reason=self.known_reason(check))
        tic = time.perf_counter()
        try:
            getattr(self, "_run_" + check.kind.replace("-", "_"))(check, result)
        except Exception as exc:  # a crashing backend is a failing check, reported in full
            result.exception = exc
            tb = traceback.extract_tb(exc.__traceback__)[-3:]
            where = "; ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in tb)
            result.error = f"{type(exc).__name__}: {exc} (at {where})"
        result.seconds = time.perf_counter() - tic
        self.results[check.full_id] = result
        return result

    def run_all(self, progress=None) -> list[CheckResult]:
        out = []
        for check in self.checks:
            check_interrupt()  # a Ctrl-C whose exception C code dropped (d2lgru._io)
            out.append(self.run(check))
            if progress is not None:
                progress(out[-1])
        return out

    def _compare(self, result, actual, expected, quantity, kind, *, group=None, dtype=True,
                 save=True):
        check = result.check
        tol = tolerance(check.dtype, kind)
        result.comparisons.append(compare(actual, expected, rtol=tol.rtol, atol=tol.atol,
                                          quantity=quantity, group=group, kind=kind,
                                          dtype=check.dtype if dtype else None))
        if save and check.shared:
            if isinstance(actual, (np.ndarray, np.generic, float)):
                result.outputs[quantity] = np.asarray(actual)
            result.oracle_outputs[quantity] = np.asarray(expected, np.float64)

    def _run_gru(self, check, result):
        inp = C.layer_inputs(check.case)
        orc = C.layer_oracle(check.case, check.variant, check.gates)
        result.fingerprint = inp["fingerprint"]
        dt = np.dtype(check.dtype)
        params = C.with_variant(inp["params"], check.variant, check.gates).astype(dt)
        X, dY, dh_n = (inp[k].astype(dt) for k in ("X", "dY", "dh_n"))
        h0 = inp["h0"].astype(dt) if check.case.nonzero_h0 else None
        be, impl = self.backend, check.impl
        Y, h_n = be.gru(params, X, h0, impl=impl)
        self._compare(result, Y, orc["Y"], "Y", "output")
        self._compare(result, h_n, orc["h_n"], "h_n", "output")
        dparams, dX, dh0 = be.gru_backward(params, X, h0, dY, dh_n, impl=impl)
        self._compare_params(result, dparams, orc["dparams"], "dparams", "gradient")
        self._compare(result, dX, orc["dX"], "dX", "gradient")
        self._compare(result, dh0, orc["dh0"], "dh0", "gradient")

    def _compare_params(self, result, actual, expected, prefix, kind, *, save=True):
        want = type(expected)
        if not isinstance(actual, want) or actual.spec != expected.spec:
            got = actual.spec.describe() if isinstance(actual, want) else type(actual).__name__
            result.comparisons.append(Comparison(
                prefix, prefix, kind, 0.0, 0.0,
                problem=f"expected {want.__name__} for a {expected.spec.describe()}, got {got}"))
            return
        for name, e in expected.to_arrays().items():
            self._compare(result, actual.to_arrays()[name], e, f"{prefix}.{name}", kind,
                          group=prefix, save=save)

    def _run_lm(self, check, result):
        inp = C.lm_inputs(check.case, check.variant, self.data_path, check.gates)
        orc = C.lm_oracle(check.case, check.variant, self.data_path, check.gates)
        result.fingerprint = inp["fingerprint"]
        dt = np.dtype(check.dtype)
        state = None if inp["state"] is None else inp["state"].astype(dt)
        res = self.backend.lm_loss_and_grads(inp["model"].astype(dt), inp["X"], inp["Y"], state,
                                             impl=check.impl)
        loss = res.loss
        if isinstance(loss, (np.ndarray, np.generic)) and loss.size == 1:
            loss = float(loss.reshape(()))
        self._compare(result, np.float64(loss) if isinstance(loss, float) else loss,
                      orc["loss"], "loss", "output", dtype=False)
        self._compare(result, res.logits, orc["logits"], "logits", "output")
        self._compare(result, res.state, orc["state"], "state", "output")
        self._compare_params(result, res.grads, orc["grads"], "grads", "gradient")

    def _run_train(self, check, result):
        inp = C.train_inputs(check.case, check.variant, self.data_path)
        orc = C.train_oracle(check.case, check.variant, self.data_path)
        result.fingerprint = inp["fingerprint"]
        trainer = self.backend.make_trainer(inp["model"].astype(check.dtype), impl=check.impl,
                                            lr=C.TRAIN_LR, clip=C.TRAIN_CLIP, mode=check.mode)
        batches = [(X.copy(), Y.copy()) for X, Y in inp["batches"]]
        losses = trainer.train_epoch(batches)
        result.training = {"mode": check.mode, "oracle_losses": orc["losses"].tolist(),
                           "losses": [json_float(x) for x in np.ravel(losses)]}
        self._compare(result, np.asarray(losses), orc["losses"], "losses", "train_loss",
                      dtype=False)
        self._compare_params(result, trainer.params(), orc["weights"], "weights", "train_weights",
                             save=False)

    def _run_native_roundtrip(self, check, result):
        params = C.roundtrip_params(check.case, check.variant, check.dtype)
        native = self.backend.to_native(params)
        bad = [k for k, v in native.items() if not isinstance(v, np.ndarray)] if isinstance(
            native, dict) else None
        if bad is None or bad:
            what = type(native).__name__ if bad is None else f"non-arrays under {bad}"
            result.comparisons.append(Comparison(
                "native", "roundtrip", "roundtrip", 0.0, 0.0,
                problem=f"to_native must return a dict of NumPy arrays, got {what}"))
            return
        back = self.backend.from_native(native, params.spec)
        normal = self.backend.native_normal_form(params)
        self._compare_params(result, back, normal, "roundtrip", "roundtrip")
        again = self.backend.to_native(back)  # native -> canonical -> native: exact for every layout
        for key, value in native.items():
            self._compare(result, again.get(key), value, f"roundtrip.native.{key}", "roundtrip",
                          group="roundtrip")
        if normal is not params:  # the normal form must be the same GRU
            X, h0 = C.reference_inputs(check.case)
            oracle = C.oracle()
            ref = oracle.gru(params.astype(np.float64), X.astype(np.float64), h0.astype(np.float64))
            got = oracle.gru(normal.astype(np.float64), X.astype(np.float64), h0.astype(np.float64))
            for name, a, b in zip(("Y", "h_n"), got, ref):
                self._compare(result, a, b, f"roundtrip.normal_form.{name}", "output",
                              group="roundtrip", dtype=False)

    def _run_native_reference(self, check, result):
        spec = check.case.spec(check.variant)
        X, h0 = C.reference_inputs(check.case)
        params, Y, h_n = self.backend.native_reference(spec, X.copy(), h0.copy(), seed=0)
        if not isinstance(params, GRUParams) or params.spec != spec:
            got = params.spec.describe() if isinstance(params, GRUParams) else type(params).__name__
            result.comparisons.append(Comparison(
                "reference.params", "reference", "output", 0.0, 0.0,
                problem=f"native_reference must return GRUParams for a {spec.describe()}, "
                        f"got {got}"))
            return
        oY, oh_n = C.oracle().gru(params.astype(np.float64), X.astype(np.float64),
                                  h0.astype(np.float64))
        self._compare(result, Y, oY, "reference.Y", "output", group="reference")
        self._compare(result, h_n, oh_n, "reference.h_n", "output", group="reference")

    # -- the report ---------------------------------------------------------------------------
    def counts(self) -> dict:
        statuses = [r.status for r in self.results.values()]
        return {s: statuses.count(s) for s in
                ("passed", "failed", "error", "known-failure", "unexpected-pass")}

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values()) and not self.stale_known_failures()

    def report(self, runner: str = "api") -> dict:
        be = self.backend
        try:
            version = be.version()
        except Exception as exc:  # a report is still worth writing
            version = f"unknown ({type(exc).__name__})"
        return {
            "format": FORMAT_REPORT, "backend": be.name, "framework": be.framework,
            "framework_version": version, "d2lgru_version": __version__,
            "numpy_version": np.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "runner": runner, "data": self.data_path, "selection": self.select,
            "complete": self.select is None and len(self.results) == len(self.all_checks),
            "planned": len(self.all_checks), "ran": len(self.results),
            "seconds": round(sum(r.seconds for r in self.results.values()), 3),
            "ok": self.ok, "counts": self.counts(),
            "impls": be.capabilities(),
            "tolerances": {f"{d}/{k}": t._asdict() for (d, k), t in TOLERANCES.items()},
            "known_failures": [{"impl": i, "check": p, "reason": r}
                               for (i, p), r in self.known.items()],
            "stale_known_failures": self.stale_known_failures(),
            "not_declared": self.refused,
            "checks": [r.as_dict() for r in self.results.values()],
        }

    def outputs(self) -> dict[str, np.ndarray]:
        """Raw outputs on the shared cases: ``{impl}/{dtype}/{case}/{quantity}``, plus the
        oracle's as ``oracle/float64/{case}/{quantity}``."""
        arrays = {}
        for r in self.results.values():
            c = r.check
            for q, a in r.outputs.items():
                arrays[f"{c.impl}/{c.dtype}/{c.case_id}/{q}"] = a
            for q, a in r.oracle_outputs.items():
                arrays[f"{ORACLE}/float64/{c.case_id}/{q}"] = a
        return arrays

    def write(self, out_root, runner: str = "api") -> Path:
        """``out_root/<backend>/report.json`` and ``outputs.npz``; returns that directory."""
        out = Path(out_root) / self.backend.name
        out.mkdir(parents=True, exist_ok=True)
        report = self.report(runner)
        save_npz(out / OUTPUTS_FILE, FORMAT_OUTPUTS, {"backend": self.backend.name},
                 self.outputs())
        text = json.dumps(report, indent=1, allow_nan=False)
        write_atomic(out / REPORT_FILE, lambda f: f.write(text), "w")
        return out


# -- the summary the command prints --------------------------------------------------------

GROUP_ORDER = ("Y", "h_n", "dparams", "dX", "dh0", "loss", "logits", "state", "grads", "losses",
               "weights", "roundtrip", "reference")


def summary_lines(suite: Suite) -> list[str]:
    """One line per quantity: how many comparisons passed, and the worst one."""
    groups: dict[str, list] = {}
    for r in suite.results.values():
        for q in r.comparisons:
            groups.setdefault(q.group, []).append((r, q))
    lines = []
    order = [g for g in GROUP_ORDER if g in groups] + sorted(set(groups) - set(GROUP_ORDER))
    name = suite.backend.name
    for group in order:
        items = groups[group]
        failed = [(r, q) for r, q in items if not q.passed]
        known = sum(1 for r, q in failed if r.known_reason is not None)
        r, q = max(items, key=lambda rq: (not rq[1].passed, rq[1].worst_ratio))
        lines.append(f"{group:<10} {len(items):4d} compared, {len(items) - len(failed):4d} passed, "
                     f"{len(failed) - known:3d} failed, {known:3d} known; worst "
                     f"{q.max_abs:.2e} abs / {q.max_rel:.2e} rel ({q.worst_ratio:.3g} of the "
                     f"allowance) in {name}/{r.check.impl} {r.check.id} {q.quantity}")
    return lines


def run_command(backend_name=None, out=None, data=None, select=None, *, stdout=None,
                known_failures=None) -> int:
    """``d2lgru conformance``: run, write the report, print a summary; 0 when every check
    passed or is a known failure, 1 otherwise."""
    stdout = stdout or sys.stdout
    suite = Suite(backend_name, data_path=data, known_failures=known_failures, select=select)
    if not suite.checks:
        raise InvalidArgumentError(f"no check of backend {suite.backend.name!r} matches {suite.select}; "
                                   f"ids look like 'scratch:gru/T7-N4-I5-H8-L1-uni-zero-x8/reset_before/"
                                   f"float32'")
    out_root = Path(out or os.environ.get(OUT_ENV) or "conformance")
    if any(c.kind in ("lm", "train") for c in suite.checks):  # a missing corpus: one line, exit 2
        C.time_machine_batches(suite.data_path, C.LM_BATCH_SIZE, C.LM_NUM_STEPS, 2)
    # made before the checks, which take minutes on some frameworks: a --out that cannot be
    # written is said at once, not after the work
    make_directory(out_root / suite.backend.name, "the report directory")
    tic = time.perf_counter()
    suite.run_all()
    elapsed = time.perf_counter() - tic
    where = suite.write(out_root, runner="cli")
    for line in summary_lines(suite):
        print(line, file=stdout)
    for r in suite.results.values():
        if not r.ok:
            print(r.message(suite.backend.name), file=stdout)
    for entry in suite.stale_known_failures():
        print(f"stale known failure {suite.backend.name}/{entry['impl']} {entry['check']!r}: it "
              f"matches no check this backend runs; remove it from KNOWN_FAILURES", file=stdout)
    counts = suite.counts()
    failed = counts["failed"] + counts["error"]
    print(f"{suite.backend.name} {suite.backend.version()}: {len(suite.results)} checks in "
          f"{elapsed:.1f}s: {counts['passed']} passed, {failed} failed, "
          f"{counts['known-failure']} known failures, {counts['unexpected-pass']} unexpected "
          f"passes; report in {where / REPORT_FILE}", file=stdout)
    return 0 if suite.ok else 1
