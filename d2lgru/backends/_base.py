"""What every backend adapter shares: declared capabilities, argument checks, the public surface.

An adapter subclasses :class:`Backend`, declares its implementations in ``impls`` and fills in
the ``_gru`` / ``_gru_backward`` / ``_lm_loss_and_grads`` / ``_make_trainer`` hooks (and, with a
``native`` impl, its module's ``to_native`` / ``from_native`` converters). Its trainer subclasses
:class:`Trainer`, whose epoch loop is written once here, and fills in the per-step hooks. The
public methods here check arguments once, so every backend fails the same way on the same
mistake.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import importlib
import os
import sys
import time
from typing import Iterable, NamedTuple

import numpy as np

from ..model import LMParams, one_hot
from ..spec import GRUParams, GRUSpec, check_flag, non_finite_count
from ..errors import D2lgruError, InvalidArgumentError, InvalidTypeError, NonFiniteError
from .. import threads as _threads
from .._io import check_interrupt


class UnsupportedError(D2lgruError, NotImplementedError):
    """The backend cannot run this implementation, cell variant, dtype, mode or device."""


@dataclasses.dataclass(frozen=True)
class ImplInfo:
    """What one implementation (``scratch`` or ``native``) of a backend can run."""

    description: str
    reset_before: bool = True
    reset_after: bool = True
    max_layers: int | None = None
    bidirectional: bool = True
    dtypes: tuple[str, ...] = ("float32", "float64")
    #: gate sets (GRUSpec.gates) it computes; ablations and the plain RNN are opt-in
    gates: tuple[str, ...] = ("both",)
    #: execution modes, the default (fastest correct) first
    modes: tuple[str, ...] = ("eager",)
    #: one sentence for each thing it lacks, keyed by "reset_before", "reset_after", ...
    why_not: dict = dataclasses.field(default_factory=dict)

    def refusal(self, spec: GRUSpec, dtype) -> str | None:
        """Why this implementation cannot run ``spec`` in ``dtype``, or None when it can."""
        if spec.reset_after and not self.reset_after:
            return self.why_not.get("reset_after", "it does not compute the reset-after cell")
        if not spec.reset_after and not self.reset_before:
            return self.why_not.get("reset_before", "it does not compute the reset-before cell")
        if self.max_layers is not None and spec.num_layers > self.max_layers:
            return f"it supports at most {self.max_layers} layer(s)"
        if spec.bidirectional and not self.bidirectional:
            return self.why_not.get("bidirectional", "it is unidirectional only")
        if spec.gates not in self.gates:
            return self.why_not.get("gates", f"it computes only the full GRU, not gates={spec.gates!r}")
        if np.dtype(dtype).name not in self.dtypes:
            return self.why_not.get("dtype", f"it runs {'/'.join(self.dtypes)} only, "
                                             f"not {np.dtype(dtype).name}")
        return None

    def as_dict(self) -> dict:
        return {"description": self.description, "reset_before": self.reset_before,
                "reset_after": self.reset_after, "max_layers": self.max_layers,
                "bidirectional": self.bidirectional, "dtypes": list(self.dtypes),
                "modes": list(self.modes), "gates": list(self.gates), "why_not": dict(self.why_not)}


class LMResult(NamedTuple):
    """One forward/backward pass of the language model on one batch."""

    loss: float
    grads: LMParams
    logits: np.ndarray  # [T * N, V], rows in the book's order (time-major)
    state: np.ndarray   # h_n [L * D, N, H], detached


class Backend:
    """The surface every backend offers. NumPy arrays in, NumPy arrays out."""

    name: str = ""
    framework: str = ""        # import name of the framework; the backend's name where not set
    impls: dict[str, ImplInfo] = {}
    devices: tuple[str, ...] = ("cpu",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.framework:
            cls.framework = cls.name

    def __init__(self):
        self._ready = False
        self._threads: int | None = None
        self._threads_source: str | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def framework_module(self):
        return importlib.import_module(self.framework)

    def version(self) -> str:
        return getattr(self.framework_module(), "__version__", "unknown")

    def _ensure_ready(self):
        self._set_up_once()
        if self._threads is None:
            self.set_threads(None)

    def _set_up_once(self):
        if not self._ready:
            if self.keeps_freed_memory:
                keep_freed_memory()
            self._setup()
            self._ready = True

    def _setup(self):
        """Per-framework settings (log noise, execution mode, device), run on first use."""

    #: whether the adapter's first use fixes glibc's malloc thresholds for this process
    #: (:func:`keep_freed_memory`): where its framework allocates tensors aligned, which glibc's
    #: own adjustment misses, and a training measured faster for it
    keeps_freed_memory: bool = False

    # -- threads (the count and its policy: d2lgru/threads.py) ---------------------------
    @property
    def threads(self) -> int | None:
        """The thread count in force for this backend's framework (None before first use)."""
        return self._threads

    @property
    def threads_source(self) -> str | None:
        """Where :attr:`threads` came from: ``argument``, ``$D2LGRU_THREADS``, ``policy`` or
        ``fixed`` (a framework that fixed its count before, e.g. when it loaded)."""
        return self._threads_source

    def set_threads(self, n: int | None = None) -> int:
        """Use ``n`` threads (None: ``$D2LGRU_THREADS``, else the policy of
        :func:`d2lgru.threads.resolve_threads`) in the framework and in every BLAS library
        loaded; returns the count now in force. First use applies the policy by itself."""
        count, source = _threads.resolve_threads(n, preference=self._thread_preference)
        self._set_up_once()
        fixed = self._set_threads(count)
        if fixed is not None and fixed != count:
            if source != "policy":
                raise UnsupportedError(f"backend {self.name!r} cannot use {count} thread(s) "
                                       f"(from {source}): {self._why_threads_fixed(fixed)}")
            count, source = fixed, "fixed"
        self._threads, self._threads_source = count, source
        return count

    #: whether the framework takes a new thread count between steps, so that a training whose
    #: count is the policy's follows the machine's load (:meth:`retune_threads`)
    retunes_threads: bool = False
    _calm_looks = 0  # looks in a row that found more CPUs free than the count in force

    def retune_threads(self) -> int | None:
        """Apply the policy again, as a trainer does about once a second between steps (only a
        backend that :attr:`retunes_threads`, and only while the count is the policy's -- an
        explicit count stays). A job that started since takes its CPUs at once; CPUs that came
        free are taken back only after :data:`RETUNE_RAISE_AFTER` looks in a row found them
        free (a load that comes and goes keeps the lower count: more threads than free cores
        is what collapses). Two quick reads of the load; returns the count in force."""
        if not (self.retunes_threads and self._threads_source == "policy"):
            return self._threads
        count = _threads.policy_threads(self._thread_preference(_threads.usable_cpus()),
                                        reads=2, interval_s=0.002)
        self._calm_looks = self._calm_looks + 1 if count > self._threads else 0
        if count < self._threads or self._calm_looks >= RETUNE_RAISE_AFTER:
            fixed = self._set_threads(count)  # a count the framework keeps, as in set_threads
            self._threads, self._calm_looks = count if fixed is None else fixed, 0
        return self._threads

    def _thread_preference(self, cpus: int) -> int:
        """The policy's count for this framework at the book's shapes, given the usable CPUs
        (see d2lgru/threads.py); adapters override it with what they measured."""
        return cpus

    #: whether the adapter makes its framework's idle OpenMP workers sleep instead of spin
    #: (:func:`d2lgru.threads.wait_passively`, before the framework loads)
    waits_passively: bool = False

    def framework_threads(self) -> int | None:
        """The thread count the framework itself says it runs with (None where it cannot say):
        what the tests hold :attr:`threads` to."""
        return None

    def _set_threads(self, n: int) -> int | None:
        """Apply ``n`` to the framework; return None, or the count the framework keeps when
        it cannot change (explained by :meth:`_why_threads_fixed`). This base applies ``n`` to
        every BLAS library loaded (NumPy's and any framework's own), so adapters call it."""
        _threads.limit_blas(n)
        return None

    def _why_threads_fixed(self, fixed: int) -> str:
        return f"its framework keeps {fixed}"

    def capabilities(self) -> dict:
        return {impl: info.as_dict() for impl, info in self.impls.items()}

    def __repr__(self):
        return f"<d2lgru backend {self.name!r}>"

    # -- argument checks ----------------------------------------------------------------
    def check_impl(self, impl: str, spec: GRUSpec | None = None, dtype=np.float32) -> ImplInfo:
        if not isinstance(impl, str) or impl not in self.impls:
            raise UnsupportedError(f"backend {self.name!r} has no impl {impl!r}; "
                                   f"valid: {', '.join(self.impls)}")
        info = self.impls[impl]
        if spec is not None:
            why = info.refusal(spec, dtype)
            if why:
                raise UnsupportedError(f"backend {self.name!r} impl {impl!r} cannot run a "
                                       f"{spec.describe()} in {np.dtype(dtype).name}: {why}")
        return info

    def check_mode(self, impl: str, mode: str | None) -> str:
        modes = self.impls[impl].modes
        if mode is None:
            return modes[0]
        if not isinstance(mode, str) or mode not in modes:
            raise UnsupportedError(f"backend {self.name!r} impl {impl!r} has no mode {mode!r}; "
                                   f"valid: {', '.join(modes)}")
        return mode

    def check_device(self, device: str | None) -> str:
        """``device`` (None: ``cpu``) in lower case, when the adapter drives it (:attr:`devices`)
        and this installed build has it on this machine (:meth:`_device_absent`)."""
        device = "cpu" if device is None else str(device).lower()
        if device not in self.devices:
            raise UnsupportedError(f"backend {self.name!r} has no device {device!r}; "
                                   f"valid: {', '.join(self.devices)}")
        why = None if device == "cpu" else self._device_absent(device)
        if why:
            raise UnsupportedError(f"backend {self.name!r} cannot use device {device!r}: {why}")
        return device

    def _device_absent(self, device: str) -> str | None:
        """Why this build cannot run on ``device`` (one of :attr:`devices`, not ``cpu``) here --
        a CPU-only wheel, no GPU visible -- or None. Asked at call time, never at import."""
        return None

    def devices_not_here(self) -> dict[str, str]:
        """``{device: why}`` for the :attr:`devices` this build cannot run on here."""
        return {d: why for d in self.devices if d != "cpu" and (why := self._device_absent(d))}

    def available_devices(self) -> tuple[str, ...]:
        """The :attr:`devices` this build can run on here (no GPU of a CPU-only wheel)."""
        absent = self.devices_not_here()
        return tuple(d for d in self.devices if d not in absent)

    # -- the public contract ------------------------------------------------------------
    def gru(self, params: GRUParams, X, h0=None, *, impl: str = "scratch",
            check_finite: bool = True):
        """Run the GRU: ``X [T, N, I]`` -> ``(Y [T, N, D*H], h_n [L*D, N, H])``.

        ``X`` and ``h0`` holding NaN or infinity raise :class:`~d2lgru.errors.NonFiniteError`
        naming the array (one ``isfinite`` pass over each); ``check_finite=False`` skips the
        check and lets such values propagate."""
        X, h0 = check_gru_args(params, X, h0, check_finite=check_finite)
        self.check_impl(impl, params.spec, params.dtype)
        self._ensure_ready()
        return self._gru(impl, params, X, h0)

    def gru_backward(self, params: GRUParams, X, h0, dY, dh_n, *, impl: str = "scratch",
                     check_finite: bool = True):
        """Vector-Jacobian product of :meth:`gru`: ``(dparams, dX, dh0)``.

        ``X``, ``h0``, ``dY`` and ``dh_n`` must be finite unless ``check_finite=False``, as in
        :meth:`gru`."""
        X, h0 = check_gru_args(params, X, h0, check_finite=check_finite)
        spec = params.spec
        T, N = X.shape[:2]
        dY = check_array("dY", dY, (T, N, spec.output_size), params.dtype, check_finite)
        dh_n = check_array("dh_n", dh_n, h0.shape, params.dtype, check_finite)
        self.check_impl(impl, spec, params.dtype)
        self._ensure_ready()
        return self._gru_backward(impl, params, X, h0, dY, dh_n)

    def lm_loss_and_grads(self, model: LMParams, X, Y, state=None, *,
                          impl: str = "scratch") -> LMResult:
        """The book's model on one batch of ids ``X, Y [N, T]``: mean cross-entropy, its
        gradients with respect to every parameter, the logits and the new state."""
        X, Y, state = check_lm_args(model, X, Y, state)
        self.check_impl(impl, model.spec, model.dtype)
        self._ensure_ready()
        return self._lm_loss_and_grads(impl, model, X, Y, state)

    def make_trainer(self, model: LMParams, *, impl: str = "scratch", lr: float = 1.0,
                     clip: float = 1.0, mode: str | None = None, device: str | None = None,
                     world=None):
        """A :class:`Trainer` that keeps ``model`` as framework tensors on ``device``.

        ``world`` (a :class:`d2lgru.distributed.World` of more than one process) makes it one
        data-parallel worker: this process joins the framework's process group (every rank must
        call this with the same world), and each step averages the gradients over the world
        with the framework's all-reduce before clipping (see :mod:`d2lgru.distributed`)."""
        check_model(model)
        self.check_impl(impl, model.spec, model.dtype)
        mode = self.check_mode(impl, mode)
        device = self.check_device(device)
        lr, clip = check_rate("lr", lr), check_rate("clip", clip, infinite_ok=True)
        distributed = check_world(world) is not None and world.size > 1
        if distributed and self.distributed_refusal is not None:
            raise UnsupportedError(f"backend {self.name!r} cannot train on {world.size} "
                                   f"processes: {self.distributed_refusal}")
        self._ensure_ready()
        if distributed:
            self._init_world(world, device)
        trainer = self._make_trainer(model, impl=impl, lr=lr, clip=clip, mode=mode,
                                     device=device)
        trainer._vocab_size = model.vocab_size
        if distributed:
            trainer.world = world
        if self.retunes_threads:
            trainer._retune = self.retune_threads
        return trainer

    @property
    def distributed_refusal(self) -> str | None:
        """Why this backend cannot train data-parallel on several processes (one sentence), or
        None when its adapter implements :meth:`_init_world` (and the trainer's
        ``_all_reduce`` hooks). An adapter with its own reason sets it as a class attribute."""
        if type(self)._init_world is not Backend._init_world:
            return None
        return ("its adapter does not implement data-parallel training yet "
                "(Backend._init_world and Trainer._all_reduce)")

    def serve_world(self) -> int:
        """Serve a world of workers as its launcher's coordinator, in a process that trains
        nothing (see :func:`d2lgru.distributed.serves_only`); returns the exit status."""
        raise UnsupportedError(f"backend {self.name!r} has no coordinator process to serve")

    def _init_world(self, world, device: str) -> None:
        """Join the framework's process group as ``world.rank`` of ``world.size`` (once per
        process; a second call with the same world does nothing). Called before the trainer is
        built, on every rank."""
        raise NotImplementedError

    def make_predictor(self, model: LMParams, *, impl: str = "scratch",
                       device: str | None = None) -> "Predictor":
        """A :class:`Predictor` that holds ``model`` in the framework on ``device``, built once,
        and steps it a few tokens at a time (the book's ``predict_ch8``)."""
        check_model(model)
        self.check_impl(impl, model.spec, model.dtype)
        device = self.check_device(device)
        self._ensure_ready()
        predictor = self._make_predictor(model, impl=impl, device=device)
        predictor._vocab_size = model.vocab_size
        return predictor

    # -- the native layer's layout (backends with impl "native") ------------------------
    def to_native(self, params: GRUParams) -> dict:
        """Canonical -> the framework layer's own parameter names and layout (NumPy arrays)."""
        self._require_native(params.spec, params.dtype)
        return self._to_native(params)

    def from_native(self, native: dict, spec: GRUSpec) -> GRUParams:
        """The framework layer's parameters (as :meth:`to_native` names them) -> canonical."""
        self._require_native(spec)
        return self._from_native(native, spec)

    def native_normal_form(self, params: GRUParams) -> GRUParams:
        """What ``from_native(to_native(params))`` returns bit for bit: ``params`` itself wherever
        the layout keeps ``b_x`` and ``b_h`` apart; a layout with one bias per gate (Keras'
        reset-before GRU, where only ``b_x + b_h`` reaches any gate) reads it back as
        ``(b_x + b_h, 0)`` -- the same GRU. A native impl declares such a layout as
        ``why_not["reset_before_bias"]`` or ``why_not["reset_after_bias"]``."""
        self._require_native(params.spec, params.dtype)
        return self._native_normal_form(params)

    def native_reference(self, spec: GRUSpec, X, h0=None, *, seed: int = 0):
        """Build the native layer with the framework's own initialiser (seeded), run it on ``X``
        and return ``(canonical params read back from the layer, Y, h_n)`` -- the check that
        reading a framework's weights gives the framework's own outputs on the oracle."""
        self._require_native(spec, X.dtype)
        X, h0 = check_gru_inputs(spec, np.dtype(X.dtype), X, h0)
        self._ensure_ready()
        return self._native_reference(spec, X, h0, seed)

    def _require_native(self, spec, dtype=np.float32):
        self.check_impl("native", spec, dtype)

    # -- hooks for the adapter ----------------------------------------------------------
    def _adapter_module(self):
        return sys.modules[type(self).__module__]

    def _to_native(self, params):
        """The adapter module's ``to_native(params) -> dict``."""
        return self._adapter_module().to_native(params)

    def _from_native(self, native, spec):
        """The adapter module's ``from_native(native, spec) -> GRUParams``."""
        return self._adapter_module().from_native(native, spec)

    def _native_reference(self, spec, X, h0, seed):
        raise NotImplementedError

    def _native_normal_form(self, params):
        """``params``, or the round trip where the native impl declares that its layout holds
        one bias per gate for this cell (``why_not["reset_before_bias"]`` /
        ``why_not["reset_after_bias"]``)."""
        cell = "reset_after" if params.spec.reset_after else "reset_before"
        if f"{cell}_bias" not in self.impls["native"].why_not:
            return params
        return self._from_native(self._to_native(params), params.spec)

    def _gru(self, impl, params, X, h0):
        raise NotImplementedError

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        raise NotImplementedError

    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        raise NotImplementedError

    def _make_trainer(self, model, *, impl, lr, clip, mode, device):
        raise NotImplementedError

    def _make_predictor(self, model, *, impl, device):
        return GRUPredictor(self, model, impl)


#: seconds between two looks at the machine's load while a trainer runs (see
#: :meth:`Backend.retune_threads`): a second of collapse at most when another job starts
RETUNE_INTERVAL_S = 1.0
#: looks in a row that must find CPUs free before a training takes them back
RETUNE_RAISE_AFTER = 3


class Trainer:
    """Trains the book's model inside one framework. Weights enter as :class:`LMParams` at
    construction and leave through :meth:`params`; nothing crosses to NumPy per step but the
    losses.

    :meth:`train_epoch` is the one epoch loop; an adapter's trainer supplies the hooks it calls:
    ``_zeros_state(N)``, ``_to_device(X, Y)``, ``_step(ids, labels, state)``,
    ``_fetch_losses(handles)`` and, where it needs them, ``_epoch_context()`` and
    ``_device_batches(batches)``; for data-parallel training also ``_all_reduce(tensors,
    average=...)`` and ``_all_reduce_host(values)``, with ``_step`` passing its gradients
    through :meth:`_average_gradients` before clipping."""

    backend: str
    impl: str
    mode: str
    device: str
    #: the :class:`d2lgru.distributed.World` this trainer is one worker of (None: one process)
    world = None
    _vocab_size: int | None = None  # ids must be below it (set by make_trainer)
    #: the backend's :meth:`Backend.retune_threads`, called between steps at most every
    #: :data:`RETUNE_INTERVAL_S` (None: the count stays as it was set)
    _retune = None
    _next_retune = 0.0

    def train_epoch(self, batches: Iterable, *, random_iter: bool = False) -> np.ndarray:
        """One epoch, the book's ``train_epoch_ch8``: the state starts at zeros, is carried
        (detached) from batch to batch for the sequential iterator, restarted for every batch
        of the random one, and restarted when the batch size changes (a carried state has the
        previous batch's rows). Returns each batch's mean cross-entropy (float64). Batches are
        checked (:func:`check_batch`) before the first step."""
        random_iter = check_flag("random_iter", random_iter)
        batches = [check_batch(*check_pair(i, b), self._vocab_size, f"batch {i}'s ")
                   for i, b in enumerate(batches)]
        if not batches:
            return np.zeros(0)
        handles, state, rows = [], None, None
        with self._epoch_context():
            for (X, _), (ids, labels) in zip(batches, self._device_batches(batches)):
                if state is None or random_iter or X.shape[0] != rows:
                    rows = X.shape[0]
                    state = self._zeros_state(rows)
                if self._retune is not None:
                    now = time.monotonic()
                    if now >= self._next_retune:
                        self._next_retune = now + RETUNE_INTERVAL_S
                        self._retune()
                check_interrupt()  # a Ctrl-C whose exception C code dropped (d2lgru._io)
                loss, state = self._step(ids, labels, state)
                handles.append(loss)
            losses = np.asarray(self._fetch_losses(handles), np.float64)
            if self._distributed:
                # each rank's loss is its shard's mean; the global batch's is their mean
                losses = np.asarray(self._all_reduce_host(losses.astype(np.float32)),
                                    np.float64)
            return losses

    def params(self) -> LMParams:
        raise NotImplementedError

    @property
    def _distributed(self) -> bool:
        return self.world is not None and self.world.size > 1

    def _average_gradients(self, grads: list) -> list:
        """What an adapter's :meth:`_step` calls between the backward pass and the global-norm
        clip: the gradients averaged over the world by :meth:`_all_reduce` (unchanged in one
        process). ``$D2LGRU_DIST_REDUCTION`` (``sum``, ``none``) breaks the definition on
        purpose, for the tests that show the parity check would catch it."""
        if not self._distributed:
            return grads
        from ..distributed import reduction
        how = reduction()
        if how == "none":
            return grads
        return self._all_reduce(list(grads), average=how == "mean")

    # -- hooks for the adapter's trainer ----------------------------------------------------
    def _all_reduce(self, tensors: list, *, average: bool) -> list:
        """Data-parallel adapters: ``tensors`` (framework tensors, inside :meth:`_step`, maybe
        inside a compiled graph) summed over the world by the framework's own collective --
        divided by ``world.size`` when ``average`` -- in the same order and shapes."""
        raise NotImplementedError

    def _all_reduce_host(self, values: np.ndarray) -> np.ndarray:
        """Data-parallel adapters: the mean over the world of a small float32 NumPy vector
        (the epoch's losses, once an epoch), through the framework's collective."""
        raise NotImplementedError

    def _epoch_context(self):
        """Entered around the epoch (a device scope, an error state); by default nothing."""
        return contextlib.nullcontext()

    def _device_batches(self, batches):
        """``(ids, labels)`` per batch where the step wants them; by default each batch is
        converted by :meth:`_to_device` when the loop reaches it."""
        return (self._to_device(X, Y) for X, Y in batches)

    def _to_device(self, X, Y):
        """One batch ``X, Y [N, T]`` (NumPy ids) -> what :meth:`_step` takes as ids and labels."""
        raise NotImplementedError

    def _zeros_state(self, N: int):
        """The zero state ``[L*D, N, H]`` in the framework, on the device."""
        raise NotImplementedError

    def _step(self, ids, labels, state):
        """Forward, backward, the book's global-norm clipping and SGD on one batch ->
        ``(loss handle, new state detached from the graph)``. The loss may stay on the device."""
        raise NotImplementedError

    def _fetch_losses(self, handles) -> np.ndarray:
        """Every step's loss handle -> NumPy (one transfer where the framework allows)."""
        return np.asarray([float(h) for h in handles])


class Predictor:
    """The book's model held in a framework for greedy prediction. ``step(ids, state)`` runs the
    GRU and the head on ``ids [N, T]`` (NumPy ints) from ``state`` (None: zeros; otherwise what
    the previous step returned, kept in the framework) and returns ``(logits [N, V] of the last
    step as NumPy, new state)``. Every subclass's ``step`` checks ``ids`` here first
    (:func:`check_token_ids`): a framework's lookup would fail deep inside, or wrap a negative
    id round silently."""

    _vocab_size: int | None = None  # set by make_predictor

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None:
            @functools.wraps(step)
            def checked_step(self, ids, state=None):
                return step(self, check_token_ids("ids", ids, self._vocab_size), state)
            cls.step = checked_step

    def step(self, ids: np.ndarray, state=None):
        raise NotImplementedError


class GRUPredictor(Predictor):
    """The fallback for backends without their own predictor: :meth:`Backend.gru` on the one-hot
    input each step (which loads the weights into the framework every call) and the head in
    NumPy."""

    def __init__(self, backend: Backend, model: LMParams, impl: str):
        self.backend, self.model, self.impl = backend, model, impl

    def step(self, ids, state=None):
        m = self.model
        Y, state = self.backend.gru(m.gru, one_hot(ids, m.vocab_size, m.dtype), state,
                                    impl=self.impl)
        return Y[-1] @ m.W_hq + m.b_q, state


# -- process settings an adapter makes at first use -----------------------------------------

#: glibc's malloc settings (environment variables) that leave its thresholds to the user
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
               "MALLOC_MMAP_MAX_")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process at the values its own adjustment tops out
    at: blocks under 32 MB from the heap instead of a fresh ``mmap``, and up to 64 MB of freed
    heap kept instead of handed back. Returns whether it did: not off glibc, and not where the
    user set any of :data:`_MALLOC_ENV` or a ``glibc.malloc`` tunable.

    glibc starts by mapping every block of 128 KB or more on its own and, when such a block is
    freed, raises that threshold to the block's size, so that a program which frees and asks
    again for the same size soon gets it from the heap. torch and Paddle allocate tensors with
    ``posix_memalign``, whose request glibc pads by the alignment: the freed block is always a
    little smaller than the next request, the threshold never catches up, and every tensor
    above it is mapped, faulted in page by page, and unmapped again -- at every training step.
    Measured on the reference machine: Paddle stacking 35 ``[32, 512]`` tensors (2.2 MB) took
    687 us and 561 page faults a call, 181 us and none with these thresholds. Trainings,
    ``benchmarks.ab --threads 0``, four rounds, twice (2026-12-04; every round faster): Paddle
    scratch 1.05x and 1.15x (62.9k -> 66.0k, 62.7k -> 72.1k tokens/s), native 1.03x and 1.12x
    and steadier (rounds of 77-79k before, none after); torch scratch 1.08x both times (82.8k ->
    89.6k), native 1.02x and 1.06x. NumPy, MXNet, MindSpore, TensorFlow and JAX stayed within
    0.98-1.04x (two rounds), so their adapters leave malloc alone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return False
    if not libc_name.startswith("glibc") or any(v in os.environ for v in _MALLOC_ENV) \
            or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    done = [mallopt(_M_MMAP_THRESHOLD, 32 << 20), mallopt(_M_TRIM_THRESHOLD, 64 << 20)]
    return all(done)  # mallopt: 1 on success


# -- shared checks ------------------------------------------------------------------------

def check_native_names(native: dict, expected, layer: str, spec: GRUSpec) -> None:
    """A native parameter dict must hold exactly the ``expected`` names; else one
    ``ValueError`` naming ``layer``, the spec, and what is missing or unknown."""
    missing = [k for k in expected if k not in native]
    extra = sorted(set(native) - set(expected))
    if missing or extra:
        raise InvalidArgumentError(f"{layer} parameters for a {spec.describe()} "
                                   + (f"lack {', '.join(map(repr, missing))}" if missing else "")
                                   + ("; " if missing and extra else "")
                                   + (f"have unknown {', '.join(map(repr, extra))}" if extra else ""))


def check_model(model) -> None:
    if not isinstance(model, LMParams):
        raise InvalidTypeError(f"model must be d2lgru.LMParams (init_lm, LMParams.load), got "
                               f"{type(model).__name__}")


def check_world(world):
    from ..distributed import World
    if world is not None and not isinstance(world, World):
        raise InvalidTypeError(f"world must be a d2lgru.distributed.World (World.from_env())"
                               f", got {type(world).__name__}")
    return world


def check_rate(name: str, value, *, infinite_ok: bool = False) -> float:
    """A float > 0, finite unless ``infinite_ok`` (clip=inf clips nothing)."""
    valid = f"a positive{'' if infinite_ok else ' finite'} number"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise InvalidTypeError(f"{name} must be {valid}, got {value!r} ({type(value).__name__})")
    if not value > 0 or not (infinite_ok or np.isfinite(value)):
        raise InvalidArgumentError(f"{name} must be {valid}, got {value!r}")
    return float(value)


def check_token_ids(name: str, ids, vocab_size: int | None) -> np.ndarray:
    """``ids`` as a non-empty ``[N, T]`` integer array of ids in ``[0, vocab_size)``."""
    try:
        ids = np.asarray(ids)
    except ValueError:  # a ragged nested list
        ids = np.empty(0, object)
    if ids.ndim != 2 or ids.size == 0:
        raise InvalidArgumentError(f"{name} must be a non-empty [batch_size, num_steps] array of "
                                   f"token ids, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise InvalidTypeError(f"{name} must hold integer token ids, got {ids.dtype}")
    if vocab_size is not None and (ids.min() < 0 or ids.max() >= vocab_size):
        raise InvalidArgumentError(f"{name} holds token ids outside [0, {vocab_size}) (min "
                                   f"{ids.min()}, max {ids.max()}); the model's vocabulary has "
                                   f"{vocab_size} tokens")
    return ids


def check_batch(X, Y, vocab_size: int | None, batch: str = "") -> tuple[np.ndarray, np.ndarray]:
    X, Y = check_token_ids(f"{batch}X", X, vocab_size), check_token_ids(f"{batch}Y", Y, vocab_size)
    if X.shape != Y.shape:
        raise InvalidArgumentError(f"{batch}X and Y must be [batch_size, num_steps] arrays of the "
                                   f"same shape, got {X.shape} and {Y.shape}")
    return X, Y


def check_pair(index: int, batch) -> tuple:
    if isinstance(batch, np.ndarray) or not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise InvalidArgumentError(f"batch {index} is a {type(batch).__name__}, not an (X, Y) "
                                   f"pair of token-id arrays as a SeqDataLoader yields")
    return batch


def check_array(name: str, a, shape, dtype, check_finite: bool = False) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise InvalidTypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise InvalidTypeError(f"{name} is {a.dtype} but the parameters are {np.dtype(dtype).name}; "
                               f"cast one of them (params.astype(...) or {name}.astype(...))")
    if a.shape != tuple(shape):
        raise InvalidArgumentError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if check_finite:
        bad = non_finite_count(a)
        if bad:
            raise NonFiniteError(f"{name} holds {bad} NaN/inf value{'' if bad == 1 else 's'}; "
                                 f"pass finite values, or check_finite=False to let them through")
    return a


def check_gru_args(params: GRUParams, X, h0, *, check_finite: bool = True):
    if not isinstance(params, GRUParams):
        raise InvalidTypeError(f"params must be d2lgru.GRUParams, got {type(params).__name__}")
    check_finite = check_flag("check_finite", check_finite)
    return check_gru_inputs(params.spec, params.dtype, X, h0, check_finite=check_finite)


def check_gru_inputs(spec: GRUSpec, dtype, X, h0, *, check_finite: bool = True):
    if not isinstance(X, np.ndarray):
        raise InvalidTypeError(f"X must be a time-major NumPy array [T, N, {spec.input_size}], "
                               f"got {type(X).__name__}")
    if X.ndim != 3:
        raise InvalidArgumentError(f"X must be a time-major NumPy array [T, N, {spec.input_size}], "
                                   f"got shape {X.shape}")
    T, N, _ = X.shape
    if T < 1 or N < 1:
        raise InvalidArgumentError(f"X must have at least one step and one sequence, got shape {X.shape}")
    check_array("X", X, (T, N, spec.input_size), dtype, check_finite)
    state_shape = spec.state_shape(N)
    h0 = (np.zeros(state_shape, dtype) if h0 is None
          else check_array("h0", h0, state_shape, dtype, check_finite))
    return np.ascontiguousarray(X), np.ascontiguousarray(h0)


def check_lm_args(model: LMParams, X, Y, state):
    check_model(model)
    X, Y = check_batch(X, Y, model.vocab_size)
    shape = model.spec.state_shape(X.shape[0])
    state = np.zeros(shape, model.dtype) if state is None else check_array(
        "state", state, shape, model.dtype)
    return X.astype(np.int64), Y.astype(np.int64), state
