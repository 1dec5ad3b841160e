"""PaddlePaddle backend: the book's loop in Paddle operations, and ``paddle.nn.GRU``.

``paddle.nn.GRU`` (the fused ``rnn`` op; not the legacy ``dynamic_gru``/``gru_unit`` ops with
their ``origin_mode``) stores, per layer and direction, ``weight_ih_l{k}[_reverse]`` ``[3H, I]``,
``weight_hh_l{k}[_reverse]`` ``[3H, H]`` and two biases ``[3H]``, rows stacked in the gate order
reset, update, candidate (:data:`PADDLE_GATES`). Its CPU kernel (paddle/phi/kernels/cpu/
rnn_kernel.cc with funcs/detail/gru_cpu_kernel.h, ``forward_reset_outputV2`` /
``forward_final_outputV2``) computes the reset-after cell, ``c = tanh(x W_ic + b_ic +
r * (h W_hc + b_hc))``, and ``h' = (1 - z) * c + z * h`` -- the canonical update, not flipped.
Its CPU backward (``gru_backward`` there) recovers ``h W_hc + b_hc`` as ``reset_output / r``, so
a reset gate that saturates to exactly 0 (pre-activation below about -88 in float32, -745 in
float64) turns every gradient into NaN; the scratch loop has no such limit.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np

from .. import threads as _threads

# Paddle's C++ logging is configured when the library loads, so it is quietened here, right
# before the import, and only where the user has not chosen otherwise. Paddle's kernels run on
# GNU OpenMP and Intel's (libiomp5, under MKL and oneDNN); both read OMP_WAIT_POLICY before
# their first parallel region: passive, so idle workers sleep instead of spinning.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("GLOG_v", "0")
_threads.wait_passively()


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


with warnings.catch_warnings():
    # paddle.utils.cpp_extension warns at import that no ccache is installed
    warnings.simplefilter("ignore")
    import paddle
    import paddle.nn.functional as F

from ..model import LMParams, trained
from ..spec import GATE_SETS, CellParams, GRUParams, GRUSpec
from . import _cudnn_layout
from ._base import Backend, ImplInfo, LMResult, Trainer, UnsupportedError

#: the gate order of paddle.nn.GRU's stacked rows (GRUCell.forward: ``x_r, x_z, x_c = split``),
#: cuDNN's layout (see _cudnn_layout)
PADDLE_GATES = _cudnn_layout.NATIVE_GATES


# -- the native layout: cuDNN's, named as paddle.nn.GRU's named_parameters() names it ---------
def to_paddle_gru(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> ``paddle.nn.GRU`` parameters: ``W [3, A, H]`` in gates z, r, h becomes
    ``[3H, A]`` with row blocks r, z, h; biases ``[3, H]`` become ``[3H]`` the same way."""
    return _cudnn_layout.to_native(params)


def from_paddle_gru(native: dict, spec: GRUSpec) -> GRUParams:
    """``paddle.nn.GRU`` parameters (or their gradients), as :func:`to_paddle_gru` names them,
    -> canonical :class:`GRUParams`."""
    return _cudnn_layout.from_native(native, spec, "paddle.nn.GRU")


# -- helpers ----------------------------------------------------------------------------------
def _cat(w):
    """``[3, A, H]`` gate-stacked -> ``[A, 3H]`` with columns z | r | h."""
    return np.ascontiguousarray(w.transpose(1, 0, 2).reshape(w.shape[1], -1))


def _uncat(w):
    """``[A, 3H]`` -> ``[3, A, H]``."""
    return np.ascontiguousarray(w.reshape(w.shape[0], 3, -1).transpose(1, 0, 2))


@contextlib.contextmanager
def _default_dtype(dtype):
    """Layers create their parameters in Paddle's default dtype."""
    old = paddle.get_default_dtype()
    paddle.set_default_dtype(np.dtype(dtype).name)
    try:
        yield
    finally:
        paddle.set_default_dtype(old)


@contextlib.contextmanager
def _on_device(device: str):
    """Paddle places new tensors and runs static programs on its global device."""
    old = paddle.get_device()
    paddle.set_device(device)
    try:
        yield
    finally:
        paddle.set_device(old)


def _tensor(a, *, grad=False):
    t = paddle.to_tensor(a)
    t.stop_gradient = not grad
    return t


def _grad_np(t, like):
    """A tensor's gradient as NumPy; zeros where Paddle never touched it."""
    return np.zeros_like(like) if t.grad is None else t.grad.numpy()


# -- the book's GRU in Paddle operations ------------------------------------------------------
def _layer_inputs(W_x, b_x, b_h, reset_after: bool, *, inp=None, ids=None):
    """The input side of every time step of one layer and direction, as two per-step lists
    (``[N, 2H]`` for the z and r gates, ``[N, H]`` for the candidate). Biases that the cell
    only ever adds to the input projection (``b_hz``, ``b_hr``, and ``b_hh`` before the reset)
    are added here once instead of at every step (the same sum, rounded in another order).
    With ``ids`` (layer 0 of the language model) one-hot times ``W_x`` is a row lookup, which
    is exact."""
    H = b_x.shape[0] // 3
    W_zr, W_n = paddle.split(W_x, [2 * H, H], axis=-1)
    b_zr = b_x[:2 * H] + b_h[:2 * H]
    b_n = b_x[2 * H:] if reset_after else b_x[2 * H:] + b_h[2 * H:]
    if ids is not None:
        x_zr, x_n = F.embedding(ids, W_zr + b_zr), F.embedding(ids, W_n + b_n)
    else:
        x_zr, x_n = F.linear(inp, W_zr, b_zr), F.linear(inp, W_n, b_n)
    return paddle.unbind(x_zr, 0), paddle.unbind(x_n, 0)


def _direction(x_zr, x_n, h, W_h, b_h, spec: GRUSpec):
    """One direction over the steps of ``x_zr``/``x_n`` (from :func:`_layer_inputs`, in the
    order they are to be run); returns every step's state and the last one. An ablated gate
    (``spec.gates``) is pinned, Z = 0 or R = 1, so its parameters get zero gradients."""
    H = h.shape[-1]
    pin_z, pin_r = not spec.has_update_gate, not spec.has_reset_gate

    def gates(pre):
        z, r = paddle.split(F.sigmoid(pre), 2, axis=-1)
        return (paddle.zeros_like(z) if pin_z else z), (paddle.ones_like(r) if pin_r else r)

    ys = []
    if spec.reset_after:
        b_hh = b_h[2 * H:]
        for xzr, xn in zip(x_zr, x_n):
            h_zr, h_n = paddle.split(paddle.matmul(h, W_h), [2 * H, H], axis=-1)
            z, r = gates(xzr + h_zr)
            n = paddle.tanh(xn + r * (h_n + b_hh))
            # z*h + (1-z)*n; not paddle.lerp, whose backward silently drops the weight's gradient
            h = n + z * (h - n)
            ys.append(h)
    else:
        W_zr, W_hh = paddle.split(W_h, [2 * H, H], axis=-1)
        for xzr, xn in zip(x_zr, x_n):
            z, r = gates(xzr + paddle.matmul(h, W_zr))
            n = paddle.tanh(xn + paddle.matmul(r * h, W_hh))
            h = n + z * (h - n)
            ys.append(h)
    return ys, h


def _scratch_gru(cells, spec: GRUSpec, h0, *, X=None, ids=None):
    """Stacked, optionally bidirectional GRU. ``cells[l][d] = (W_x [I, 3H], W_h [H, 3H],
    b_x [3H], b_h [3H])`` tensors (columns z | r | h); ``h0 [L*D, N, H]``; the input is ``X
    [T, N, I]`` or, for the language model, token ids ``[T, N]``. The reverse direction runs
    the steps backwards and its outputs are put back in time order.
    Returns ``Y [T, N, D*H]`` and ``h_n [L*D, N, H]``."""
    D = spec.num_directions
    h0s = paddle.unbind(h0, 0)
    inp, h_n = X, []
    for l in range(spec.num_layers):
        outs = []
        for d in range(D):
            W_x, W_h, b_x, b_h = cells[l][d]
            x_zr, x_n = _layer_inputs(W_x, b_x, b_h, spec.reset_after, inp=inp,
                                      ids=ids if l == 0 else None)
            if d == 1:
                x_zr, x_n = x_zr[::-1], x_n[::-1]
            ys, h = _direction(x_zr, x_n, h0s[l * D + d], W_h, b_h, spec)
            outs.append(paddle.stack(ys if d == 0 else ys[::-1]))
            h_n.append(h)
        inp = outs[0] if D == 1 else paddle.concat(outs, axis=-1)
    return inp, paddle.stack(h_n)


# -- the language model as Paddle layers --------------------------------------------------------
class _ScratchLM(paddle.nn.Layer):
    """The book's model with the scratch GRU; layer 0's one-hot input is a row lookup."""

    def __init__(self, model: LMParams):
        super().__init__()
        self.spec = spec = model.spec
        self.cell_params = []
        for l, d in spec.cells():
            c = model.gru.cell(l, d)
            cell = [self._param(f"l{l}_d{d}_{n}", a) for n, a in (
                ("W_x", _cat(c.W_x)), ("W_h", _cat(c.W_h)),
                ("b_x", c.b_x.reshape(-1)), ("b_h", c.b_h.reshape(-1)))]
            self.cell_params.append(cell)
        self.W_hq = self._param("W_hq", model.W_hq)
        self.b_q = self._param("b_q", model.b_q)

    def _param(self, name, value):
        p = self.create_parameter(list(value.shape), dtype=value.dtype.name)
        p.set_value(np.ascontiguousarray(value))
        self.add_parameter(name, p)
        return p

    def _cells(self):
        D = self.spec.num_directions
        return [self.cell_params[l * D:(l + 1) * D] for l in range(self.spec.num_layers)]

    def forward(self, ids, labels, state):
        """``ids, labels [T, N]`` time-major -> ``(mean loss, logits [T*N, V], h_n)``."""
        Y, h_n = _scratch_gru(self._cells(), self.spec, state, ids=ids)
        return self._head(Y, labels, h_n)

    def _head(self, Y, labels, h_n):
        logits = paddle.matmul(Y.reshape([-1, Y.shape[-1]]), self.W_hq) + self.b_q
        loss = F.cross_entropy(logits, labels.reshape([-1, 1]))
        return loss, logits, h_n

    def lm_params(self) -> LMParams:
        def cell(W_x, W_h, b_x, b_h):
            return CellParams(_uncat(W_x.numpy()), _uncat(W_h.numpy()),
                              b_x.numpy().reshape(3, -1), b_h.numpy().reshape(3, -1))
        gru = GRUParams(self.spec, [[cell(*c) for c in row] for row in self._cells()])
        return LMParams(gru, self.W_hq.numpy(), self.b_q.numpy())

    def lm_grads(self) -> LMParams:
        grads = [[[_grad_np(p, p.numpy()) for p in c] for c in row] for row in self._cells()]
        gru = GRUParams(self.spec, [[CellParams(_uncat(a), _uncat(b), c.reshape(3, -1),
                                                e.reshape(3, -1)) for a, b, c, e in row]
                                    for row in grads])
        return LMParams(gru, _grad_np(self.W_hq, self.W_hq.numpy()),
                        _grad_np(self.b_q, self.b_q.numpy()))


def _native_gru_layer(spec: GRUSpec, dtype) -> paddle.nn.GRU:
    with _default_dtype(dtype):
        return paddle.nn.GRU(spec.input_size, spec.hidden_size, spec.num_layers,
                             direction="bidirect" if spec.bidirectional else "forward",
                             time_major=True)


def _load_native(layer: paddle.nn.GRU, params: GRUParams):
    values = to_paddle_gru(params)
    for name, p in layer.named_parameters():
        p.set_value(values[name])


def _read_native(layer: paddle.nn.GRU, spec: GRUSpec, *, grads=False) -> GRUParams:
    return from_paddle_gru({name: _grad_np(p, p.numpy()) if grads else p.numpy()
                            for name, p in layer.named_parameters()}, spec)


class _NativeLM(_ScratchLM):
    """The book's model around ``paddle.nn.GRU`` (fed the one-hot input, as the book does)."""

    def __init__(self, model: LMParams):
        paddle.nn.Layer.__init__(self)
        self.spec = model.spec
        self.gru = _native_gru_layer(model.spec, model.dtype)
        _load_native(self.gru, model.gru)
        self.W_hq = self._param("W_hq", model.W_hq)
        self.b_q = self._param("b_q", model.b_q)

    def forward(self, ids, labels, state):
        X = F.one_hot(ids, self.spec.input_size).astype(self.W_hq.dtype)
        Y, h_n = self.gru(X, state)
        return self._head(Y, labels, h_n)

    def lm_params(self) -> LMParams:
        return LMParams(_read_native(self.gru, self.spec), self.W_hq.numpy(), self.b_q.numpy())

    def lm_grads(self) -> LMParams:
        return LMParams(_read_native(self.gru, self.spec, grads=True),
                        _grad_np(self.W_hq, self.W_hq.numpy()),
                        _grad_np(self.b_q, self.b_q.numpy()))


_LM_CLASSES = {"scratch": _ScratchLM, "native": _NativeLM}


# -- training --------------------------------------------------------------------------------
class PaddleTrainer(Trainer):
    """The book's ``train_epoch_ch8`` with the model, the state, clipping and SGD as Paddle
    tensors on the device; the losses are read once per epoch. Mode ``eager`` runs op by op in
    dygraph; ``static`` runs the forward and its backward as one ``paddle.jit.to_static``
    program (clipping and SGD stay in dygraph). Each impl's default is the first of its
    ``modes`` (see ``_SCRATCH_MODES``)."""

    def __init__(self, model: LMParams, *, impl, lr, clip, mode, device):
        self.backend, self.impl, self.mode, self.device = "paddle", impl, mode, device
        self.spec = model.spec
        self.lr, self.clip = lr, clip
        self._place = "cpu" if device == "cpu" else "gpu"
        with _on_device(self._place):
            self.net = _LM_CLASSES[impl](model)
            self._params = list(self.net.parameters())
            if not model.spec.reset_after:  # the scratch cells' b_h stay put (model.trained)
                keep = trained(model.spec)
                for p, k in zip(self._params, keep, strict=True):
                    p.stop_gradient = not k
                self._params = [p for p, k in zip(self._params, keep) if k]
            if mode == "static":
                static = paddle.jit.to_static(self.net.forward, full_graph=True)

                def step(*args):
                    with warnings.catch_warnings():
                        # Paddle's own dynamic-to-static code asks a graph value for .place
                        warnings.filterwarnings("ignore", message="Tensor do not have 'place'")
                        return static(*args)
                self._step = step
            else:
                self._step = self.net.forward

    def train_epoch(self, batches, *, random_iter=False):
        spec = self.spec
        losses, state = [], None
        with _on_device(self._place):
            for X, Y in batches:
                X, Y = np.asarray(X), np.asarray(Y)
                if random_iter or state is None:
                    state = paddle.zeros([spec.num_layers * spec.num_directions, X.shape[0],
                                          spec.hidden_size], self.net.W_hq.dtype)
                ids = paddle.to_tensor(np.ascontiguousarray(X.T, dtype=np.int64))
                labels = paddle.to_tensor(np.ascontiguousarray(Y.T, dtype=np.int64))
                loss, _, state = self._step(ids, labels, state)
                state = state.detach()
                loss.backward()
                self._clip_and_sgd()
                losses.append(loss.detach())
            if not losses:
                return np.zeros(0)
            return paddle.stack(losses).reshape([-1]).numpy().astype(np.float64)

    @paddle.no_grad()
    def _clip_and_sgd(self):
        """The book's ``grad_clipping`` (global L2 norm over every parameter) then ``sgd``."""
        pairs = [(p, p.grad) for p in self._params if p.grad is not None]
        norm = paddle.sqrt(paddle.add_n([paddle.sum(g * g) for _, g in pairs]))
        # clip / max(norm, clip) is exactly 1 when norm <= clip, else clip / norm
        scale = (self.clip / paddle.maximum(norm, paddle.full_like(norm, self.clip))) * self.lr
        for p, g in pairs:
            p.subtract_(g * scale)
            p.clear_gradient(False)

    def params(self) -> LMParams:
        with _on_device(self._place):
            return self.net.lm_params()


# -- the backend -----------------------------------------------------------------------------
#: Execution modes, measured through d2lgru at the book's config. Eager (dygraph) first for
#: both impls. scratch: 37k against 22k tokens/s on a quiet 2-core machine (the
#: paddle.jit.to_static program's matmul gradients cost several times dygraph's). native: 61k
#: against 52k tokens/s on a quiet machine, measured twice (benchmarks/run.py --backend paddle
#: --impl native --skip sweep ...); the static program only won while other jobs shared the
#: cores, its multi-threaded executor getting more of a busy machine.
_SCRATCH_MODES = ("eager", "static")
_NATIVE_MODES = ("eager", "static")


class PaddleBackend(Backend):
    name = "paddle"
    framework = "paddle"
    devices = ("cpu", "gpu", "cuda")    # "cuda" is an alias of Paddle's "gpu"
    impls = {
        "scratch": ImplInfo(
            "the book's loop in Paddle operations (input projection in one matmul, fused gate "
            "matmuls, row lookup for the one-hot input); gradients from Paddle's autograd",
            gates=GATE_SETS, modes=_SCRATCH_MODES),
        "native": ImplInfo(
            "paddle.nn.GRU (the fused rnn op) loaded from canonical parameters",
            reset_before=False, modes=_NATIVE_MODES,
            why_not={"reset_before": "paddle.nn.GRU computes only the reset-after (cuDNN) cell, "
                                     "r * (h W_hh + b_hh), in its CPU and GPU kernels",
                     "gates": "paddle.nn.GRU always computes both gates; ablations and the plain "
                              "RNN run with impl 'scratch'"}),
    }

    def _setup(self):
        # Paddle's CPU matmuls call the MKL 2019 it ships, which gives AMD processors its slow
        # generic code path; this switch (honoured by MKL up to 2020.0) selects the AVX2
        # kernels: ~3x faster matmuls here. MKL reads it when it first dispatches, which no
        # import does, so it is set here, before this backend's first operation.
        if _cpu_vendor() == "AuthenticAMD":
            os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
        # dygraph by default; the CPU device unless a trainer asks for the GPU
        paddle.disable_static()
        paddle.set_device("cpu")

    def _thread_preference(self, cpus):
        # Paddle sizes MKL's thread pool from FLAGS_paddle_num_threads (default 1). The book's
        # matmuls ([32, 256] x [256, 768]) run near one core's peak and got no faster with two
        # threads on the 2-core reference machine, so one it is unless the user says otherwise.
        flag = os.environ.get("FLAGS_paddle_num_threads", "").strip()
        return int(flag) if flag.isdigit() and int(flag) > 0 else 1

    def _set_threads(self, n):
        super()._set_threads(n)
        paddle.base.core.set_num_threads(n)

    def check_device(self, device):
        device = super().check_device(device)
        if device != "cpu" and not (paddle.device.is_compiled_with_cuda()
                                    and paddle.device.cuda.device_count() > 0):
            raise UnsupportedError(
                f"backend 'paddle' cannot use device {device!r}: " + (
                    "paddlepaddle sees no CUDA GPU" if paddle.device.is_compiled_with_cuda()
                    else "the installed paddlepaddle is the CPU-only build (paddlepaddle-gpu "
                         "runs on CUDA)"))
        return device

    # -- native layout ------------------------------------------------------------------
    def _to_native(self, params):
        return to_paddle_gru(params)

    def _from_native(self, native, spec):
        return from_paddle_gru(native, spec)

    def _native_reference(self, spec, X, h0, seed):
        rng = paddle.get_rng_state()
        try:
            paddle.seed(seed)
            layer = _native_gru_layer(spec, X.dtype)
        finally:
            paddle.set_rng_state(rng)
        layer.eval()
        Y, h_n = layer(_tensor(X), _tensor(h0))
        return _read_native(layer, spec), Y.numpy(), h_n.numpy()

    # -- the GRU ------------------------------------------------------------------------
    def _gru(self, impl, params, X, h0):
        with paddle.no_grad():
            if impl == "native":
                layer = _native_gru_layer(params.spec, params.dtype)
                _load_native(layer, params)
                layer.eval()
                Y, h_n = layer(_tensor(X), _tensor(h0))
            else:
                Y, h_n = _scratch_gru(self._cell_tensors(params), params.spec, _tensor(h0),
                                      X=_tensor(X))
        return Y.numpy(), h_n.numpy()

    @staticmethod
    def _cell_tensors(params, grad=False):
        return [[tuple(_tensor(a, grad=grad) for a in (
            _cat(c.W_x), _cat(c.W_h), c.b_x.reshape(-1), c.b_h.reshape(-1)))
            for c in row] for row in params.cells]

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        spec = params.spec
        Xt, h0t = _tensor(X, grad=True), _tensor(h0, grad=True)
        if impl == "native":
            layer = _native_gru_layer(spec, params.dtype)
            _load_native(layer, params)
            Y, h_n = layer(Xt, h0t)
        else:
            cells = self._cell_tensors(params, grad=True)
            Y, h_n = _scratch_gru(cells, spec, h0t, X=Xt)
        (paddle.sum(Y * _tensor(dY)) + paddle.sum(h_n * _tensor(dh_n))).backward()
        if impl == "native":
            dparams = _read_native(layer, spec, grads=True)
        else:
            dparams = GRUParams(spec, [[CellParams(
                _uncat(_grad_np(W_x, _cat(c.W_x))), _uncat(_grad_np(W_h, _cat(c.W_h))),
                _grad_np(b_x, c.b_x.reshape(-1)).reshape(3, -1),
                _grad_np(b_h, c.b_h.reshape(-1)).reshape(3, -1))
                for (W_x, W_h, b_x, b_h), c in zip(trow, prow)]
                for trow, prow in zip(cells, params.cells)])
        return dparams, _grad_np(Xt, X), _grad_np(h0t, h0)

    # -- the language model -------------------------------------------------------------
    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        net = _LM_CLASSES[impl](model)
        loss, logits, h_n = net(_tensor(np.ascontiguousarray(X.T)),
                                _tensor(np.ascontiguousarray(Y.T)), _tensor(state))
        loss.backward()
        return LMResult(float(loss), net.lm_grads(), logits.numpy(), h_n.numpy())

    def _make_trainer(self, model, *, impl, lr, clip, mode, device):
        return PaddleTrainer(model, impl=impl, lr=lr, clip=clip, mode=mode, device=device)


backend = PaddleBackend()
