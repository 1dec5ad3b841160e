"""PaddlePaddle backend: the book's loop in Paddle operations, and ``paddle.nn.GRU``.

``paddle.nn.GRU`` (the fused ``rnn`` op; not the legacy ``dynamic_gru``/``gru_unit`` ops with
their ``origin_mode``) stores, per layer and direction, ``weight_ih_l{k}[_reverse]`` ``[3H, I]``,
``weight_hh_l{k}[_reverse]`` ``[3H, H]`` and two biases ``[3H]``, rows stacked in the gate order
reset, update, candidate (cuDNN's layout, ``_cudnn_layout.NATIVE_GATES``). Its CPU kernel (paddle/phi/kernels/cpu/
rnn_kernel.cc with funcs/detail/gru_cpu_kernel.h, ``forward_reset_outputV2`` /
``forward_final_outputV2``) computes the reset-after cell, ``c = tanh(x W_ic + b_ic +
r * (h W_hc + b_hc))``, and ``h' = (1 - z) * c + z * h`` -- the canonical update, not flipped.
Its CPU backward (``gru_backward`` there) recovers ``h W_hc + b_hc`` as ``reset_output / r``, so
a reset gate that saturates to exactly 0 (pre-activation below about -88 in float32, -745 in
float64) turns every gradient into NaN; the scratch loop has no such limit.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings

import numpy as np

# Paddle's C++ logging is configured when the library loads, so it is quietened here, right
# before the import, and only where the user has not chosen otherwise. GLOG_v is left alone: its
# default, 0, is the quiet one, and any other value turns on VLOG lines whose checks slow every op
# whether they print or not (the scratch loop trained 1.6x slower with GLOG_v=3, the value
# MindSpore's users set for MindSpore's own log level). (Its kernels run on GNU OpenMP and Intel's,
# libiomp5 under MKL and oneDNN, left to wait as they do: the thread count follows the load
# instead, see PaddleBackend.retunes_threads.)
os.environ.setdefault("GLOG_minloglevel", "2")


def _cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


_USER_OMP_THREADS = os.environ.get("OMP_NUM_THREADS")
with warnings.catch_warnings():
    # paddle.utils.cpp_extension warns at import that no ccache is installed
    warnings.simplefilter("ignore")
    import paddle
    import paddle.distributed as dist
    import paddle.nn.functional as F
    from paddle.autograd import PyLayer
if _USER_OMP_THREADS is None:
    # Paddle sets OMP_NUM_THREADS=1 when it loads where it was unset: its own default, which
    # d2lgru's policy would read as the user's cap (its runtimes have read it by now)
    os.environ.pop("OMP_NUM_THREADS", None)

from ..distributed import WorldBrokenError, already_joined
from ..model import LMParams, lm_keys, trained
from ..spec import GATE_SETS, GRUParams, GRUSpec
from . import _cudnn_layout, _layout
from ._base import Backend, ImplInfo, LMResult, Predictor, Trainer, UnsupportedError


# -- the native layout: cuDNN's, named as paddle.nn.GRU's named_parameters() names it ---------
# (the gate order of its stacked rows: GRUCell.forward's ``x_r, x_z, x_c = split``)
def to_native(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> ``paddle.nn.GRU`` parameters: ``W [3, A, H]`` in gates z, r, h becomes
    ``[3H, A]`` with row blocks r, z, h; biases ``[3, H]`` become ``[3H]`` the same way."""
    return _cudnn_layout.to_native(params)


def from_native(native: dict, spec: GRUSpec) -> GRUParams:
    """``paddle.nn.GRU`` parameters (or their gradients), as :func:`to_native` names them,
    -> canonical :class:`GRUParams`."""
    return _cudnn_layout.from_native(native, spec, "paddle.nn.GRU")


# -- helpers ----------------------------------------------------------------------------------
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
    """The input side of every time step of one layer and direction: ``[T, N, 2H]`` for the z
    and r gates, ``[T, N, H]`` for the candidate. Biases that the cell only ever adds to the
    input projection (``b_hz``, ``b_hr``, and ``b_hh`` before the reset) are added here once
    instead of at every step (the same sum, rounded in another order). With ``ids`` (layer 0
    of the language model) one-hot times ``W_x`` is a row lookup, which is exact."""
    H = b_x.shape[0] // 3
    W_zr, W_n = paddle.split(W_x, [2 * H, H], axis=-1)
    b_zr = b_x[:2 * H] + b_h[:2 * H]
    b_n = b_x[2 * H:] if reset_after else b_x[2 * H:] + b_h[2 * H:]
    if ids is not None:
        return F.embedding(ids, W_zr + b_zr), F.embedding(ids, W_n + b_n)
    return F.linear(inp, W_zr, b_zr), F.linear(inp, W_n, b_n)


class _ResetBeforeLoop(PyLayer):
    """The book's cell with both gates, its backward written out as in the torch, JAX,
    TensorFlow and MindSpore adapters: the reverse loop carries only the state's gradient (two
    products a step) and the recurrent weights' gradients are one product each over all
    ``T*N`` rows. Autograd's backward of the op-by-op loop records ~10 nodes a step and
    multiplies ``[H, N] @ [N, 3H]`` at each; both ways are dispatch-bound at the book's shapes,
    this one makes fewer, contiguous ops (every transpose is copied once: a product by a
    transposed view costs Paddle's CPU kernel ~2.5x). ``apply(XZR [T, N, 2H], XN [T, N, H], h0,
    W_zr, W_hh) -> (Y [T, N, H], last)``; ``XZR``/``XN`` hold every bias and the input
    projection."""

    @staticmethod
    def forward(ctx, XZR, XN, h0, W_zr, W_hh):
        ctx.needs = [not t.stop_gradient for t in (XZR, XN, h0, W_zr, W_hh)]
        with paddle.no_grad():  # Paddle records the ops of a PyLayer's forward otherwise
            h, ys, zrs, ns, rhs = h0, [], [], [], []
            for xzr, xn in zip(paddle.unbind(XZR, 0), paddle.unbind(XN, 0)):
                zr = F.sigmoid(paddle.addmm(xzr, h, W_zr))
                z, r = paddle.split(zr, 2, axis=-1)
                rh = r * h
                n = paddle.tanh(paddle.addmm(xn, rh, W_hh))
                h = paddle.lerp(n, h, z)  # n + z (h - n)
                for out, x in ((ys, h), (zrs, zr), (ns, n), (rhs, rh)):
                    out.append(x)
            saved = [paddle.stack(x) for x in (ys, zrs, ns, rhs)]
        ctx.save_for_backward(h0, W_zr, W_hh, *saved)
        return saved[0], h

    @staticmethod
    def backward(ctx, dY, dlast):
        with paddle.no_grad():
            h0, W_zr, W_hh, Y, ZR, NN, RH = ctx.saved_tensor()
            T, N, H = Y.shape
            WzrT, WhhT = W_zr.T.contiguous(), W_hh.T.contiguous()
            Hp = paddle.concat([h0.unsqueeze(0), Y[:-1]], 0)  # each step's incoming state
            # h' = n + z (h - n), n = tanh(a_n), z = sigmoid(a_z), r = sigmoid(a_r):
            # da_n = g (1 - z)(1 - n^2), da_z = g (h - n) z (1 - z), da_r = (dL/d(r h)) h r (1 - r);
            # the z|r factors side by side (AB), so that a step's da_z|da_r is one product
            Z, R = paddle.split(ZR, 2, axis=-1)
            D = (1 - Z) * (1 - NN * NN)
            AB = paddle.concat([Hp - NN, Hp], -1) * (ZR - ZR * ZR)
            steps = [paddle.unbind(x, 0) for x in (dY, Z, D, AB, R)]
            dh = paddle.zeros_like(h0) if dlast is None else dlast
            dzrs, dns = [None] * T, [None] * T
            for t in range(T - 1, -1, -1):
                dy, z, d, ab, r = (x[t] for x in steps)
                g = dh + dy
                gz = g * z
                dns[t] = da_n = g * d
                ds = paddle.matmul(da_n, WhhT)  # s = r * h
                dzrs[t] = da_zr = paddle.concat([g, ds], 1) * ab
                dh = paddle.addmm(gz + ds * r, da_zr, WzrT)
            DZR, DN = paddle.stack(dzrs), paddle.stack(dns)
            dWzr = paddle.matmul(Hp.reshape([T * N, H]), DZR.reshape([T * N, 2 * H]),
                                 transpose_x=True)
            dWhh = paddle.matmul(RH.reshape([T * N, H]), DN.reshape([T * N, H]),
                                 transpose_x=True)
        # Paddle wants None for an input that takes no gradient (the detached state)
        return tuple(g if need else None
                     for g, need in zip((DZR, DN, dh, dWzr, dWhh), ctx.needs))


def _direction(x_zr, x_n, h, W_h, b_h, spec: GRUSpec):
    """One direction over the steps of ``x_zr``/``x_n`` (from :func:`_layer_inputs`, in the
    order they are to be run); returns every step's state ``[T, N, H]`` and the last one. The
    book's cell with both gates runs :class:`_ResetBeforeLoop` (in dygraph), any other op by
    op under autograd. An ablated gate (``spec.gates``) is pinned, Z = 0 or R = 1, so its
    parameters get zero gradients."""
    H = h.shape[-1]
    if not spec.reset_after:
        W_zr, W_hh = paddle.split(W_h, [2 * H, H], axis=-1)
        if spec.gates == "both" and paddle.in_dynamic_mode():
            return _ResetBeforeLoop.apply(x_zr, x_n, h, W_zr, W_hh)
    pin_z, pin_r = not spec.has_update_gate, not spec.has_reset_gate

    def gates(pre):
        z, r = paddle.split(F.sigmoid(pre), 2, axis=-1)
        return (paddle.zeros_like(z) if pin_z else z), (paddle.ones_like(r) if pin_r else r)

    ys = []
    steps = zip(paddle.unbind(x_zr, 0), paddle.unbind(x_n, 0))
    if spec.reset_after:
        b_hh = b_h[2 * H:]
        for xzr, xn in steps:
            h_zr, h_n = paddle.split(paddle.matmul(h, W_h), [2 * H, H], axis=-1)
            z, r = gates(xzr + h_zr)
            n = paddle.tanh(xn + r * (h_n + b_hh))
            # z*h + (1-z)*n; not paddle.lerp, whose backward silently drops the weight's gradient
            h = n + z * (h - n)
            ys.append(h)
    else:
        for xzr, xn in steps:
            z, r = gates(xzr + paddle.matmul(h, W_zr))
            n = paddle.tanh(xn + paddle.matmul(r * h, W_hh))
            h = n + z * (h - n)
            ys.append(h)
    return paddle.stack(ys), h


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
                x_zr, x_n = paddle.flip(x_zr, [0]), paddle.flip(x_n, [0])
            Y, h = _direction(x_zr, x_n, h0s[l * D + d], W_h, b_h, spec)
            outs.append(Y if d == 0 else paddle.flip(Y, [0]))
            h_n.append(h)
        inp = outs[0] if D == 1 else paddle.concat(outs, axis=-1)
    return inp, paddle.stack(h_n)


# -- the language model as Paddle layers --------------------------------------------------------
class _ScratchLM(paddle.nn.Layer):
    """The book's model with the scratch GRU; layer 0's one-hot input is a row lookup."""

    def __init__(self, model: LMParams):
        super().__init__()
        self.spec = model.spec
        # the scratch layout's arrays, one parameter each, named after their lm_keys name
        self.cell_params = [self._param(k.replace(".", "_"), a) for k, a in
                            zip(lm_keys(model.spec), _layout.cell_arrays(model.gru))]
        self.W_hq = self._param("W_hq", model.W_hq)
        self.b_q = self._param("b_q", model.b_q)

    def keyed_parameters(self):
        """``(lm_keys name, parameter)`` of every parameter."""
        return list(zip(lm_keys(self.spec), self.cell_params + [self.W_hq, self.b_q]))

    def _param(self, name, value):
        p = self.create_parameter(list(value.shape), dtype=value.dtype.name)
        p.set_value(np.ascontiguousarray(value))
        self.add_parameter(name, p)
        return p

    def run(self, ids, state):
        """The GRU on time-major ids ``[T, N]`` -> ``(Y [T, N, D*H], h_n)``."""
        return _scratch_gru(_layout.nest(self.cell_params, self.spec), self.spec, state, ids=ids)

    def forward(self, ids, labels, state):
        """``ids, labels [T, N]`` time-major -> ``(mean loss, logits [T*N, V], h_n)``."""
        Y, h_n = self.run(ids, state)
        return self._head(Y, labels, h_n)

    def _head(self, Y, labels, h_n):
        logits = paddle.matmul(Y.reshape([-1, Y.shape[-1]]), self.W_hq) + self.b_q
        loss = F.cross_entropy(logits, labels.reshape([-1, 1]))
        return loss, logits, h_n

    _from_native = None  # the GRU's parameters are in the scratch layout

    def lm_params(self, *, grads: bool = False) -> LMParams:
        """The parameters (``grads``: their gradients) as canonical arrays."""
        return _layout.lm_params(self.spec, {k: _grad_np(p, p.numpy()) if grads else p.numpy()
                                             for k, p in self.keyed_parameters()},
                                 self._from_native)


def _native_gru_layer(spec: GRUSpec, dtype) -> paddle.nn.GRU:
    with _default_dtype(dtype):
        return paddle.nn.GRU(spec.input_size, spec.hidden_size, spec.num_layers,
                             direction="bidirect" if spec.bidirectional else "forward",
                             time_major=True)


def _load_native(layer: paddle.nn.GRU, params: GRUParams):
    values = to_native(params)
    for name, p in layer.named_parameters():
        p.set_value(values[name])


def _read_native(layer: paddle.nn.GRU, spec: GRUSpec, *, grads=False) -> GRUParams:
    return from_native({name: _grad_np(p, p.numpy()) if grads else p.numpy()
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

    def keyed_parameters(self):
        keys = _cudnn_layout.keys(self.spec)
        return [(keys[n], p) for n, p in self.gru.named_parameters()] + \
            [("head.W_hq", self.W_hq), ("head.b_q", self.b_q)]

    def run(self, ids, state):
        return self.gru(F.one_hot(ids, self.spec.input_size).astype(self.W_hq.dtype), state)

    _from_native = staticmethod(from_native)


_LM_CLASSES = {"scratch": _ScratchLM, "native": _NativeLM}


# -- training --------------------------------------------------------------------------------
@paddle.no_grad()
def clip_and_sgd(params, grads, lr: float, clip: float):
    """The book's ``grad_clipping`` (the global L2 norm of ``grads`` scaled down to ``clip``
    when above it) then ``sgd`` (``p -= lr * g``), in place, on the device: no sync."""
    norm = paddle.sqrt(paddle.add_n([paddle.sum(g * g) for g in grads]))
    # clip / max(norm, clip) is exactly 1 when norm <= clip, else clip / norm
    scale = (clip / paddle.maximum(norm, paddle.full_like(norm, clip))) * lr
    for p, g in zip(params, grads):
        p.subtract_(g * scale)


def _zeros_state(spec: GRUSpec, N: int, dtype):
    return paddle.zeros(spec.state_shape(N), dtype)


#: how long a worker whose all-reduce failed waits before it exits, under Paddle's launcher
#: (which checks its workers every second and stops the rest once it sees one failed)
_PEER_GONE_GRACE_S = 5.0


class PaddleTrainer(Trainer):
    """The book's ``train_epoch_ch8`` with the model, the state, clipping and SGD as Paddle
    tensors on the device; the losses are read once per epoch. Mode ``eager`` runs op by op in
    dygraph; ``static`` runs the forward and its backward as one ``paddle.jit.to_static``
    program (clipping and SGD stay in dygraph). Each impl's default is the first of its
    ``modes`` (see ``_MODES``)."""

    def __init__(self, model: LMParams, *, impl, lr, clip, mode, device):
        self.backend, self.impl, self.mode, self.device = "paddle", impl, mode, device
        self.spec = model.spec
        self.lr, self.clip = lr, clip
        self._place = "cpu" if device == "cpu" else "gpu"
        with _on_device(self._place):
            self.net = _LM_CLASSES[impl](model)
            keep = trained(model.spec)  # a reset-before cell's b_h stays put
            for k, p in self.net.keyed_parameters():
                p.stop_gradient = k not in keep
            self._params = [p for k, p in self.net.keyed_parameters() if k in keep]
            if mode == "static":
                static = paddle.jit.to_static(self.net.forward, full_graph=True)

                def step(*args):
                    with warnings.catch_warnings():
                        # Paddle's own dynamic-to-static code asks a graph value for .place
                        warnings.filterwarnings("ignore", message="Tensor do not have 'place'")
                        return static(*args)
                self._forward = step
            else:
                self._forward = self.net.forward

    def _epoch_context(self):
        return _on_device(self._place)

    def _to_device(self, X, Y):
        return (paddle.to_tensor(np.ascontiguousarray(X.T, dtype=np.int64)),
                paddle.to_tensor(np.ascontiguousarray(Y.T, dtype=np.int64)))

    def _zeros_state(self, N):
        return _zeros_state(self.spec, N, self.net.W_hq.dtype)

    def _step(self, ids, labels, state):
        loss, _, state = self._forward(ids, labels, state)
        state = state.detach()
        loss.backward()
        params = [p for p in self._params if p.grad is not None]
        grads = self._average_gradients([p.grad for p in params])
        clip_and_sgd(params, grads, self.lr, self.clip)
        for p in params:
            p.clear_gradient(False)
        self._last_step = ids, labels, loss  # held until the next step: see NumpyTrainer._step
        return loss.detach(), state

    def _fetch_losses(self, handles):
        return paddle.stack(handles).reshape([-1]).numpy()

    # -- data-parallel: paddle.distributed (gloo on CPU, nccl on GPU) -------------------------
    # In dygraph in both modes: the static program is the forward pass, and the backward pass,
    # this all-reduce, the clip and SGD follow it in dygraph.
    def _all_reduce(self, tensors, *, average):
        # one collective for the whole gradient: the tensors flattened into one buffer
        flat = paddle.concat([t.reshape([-1]) for t in tensors])
        self._sum_over_world(flat)
        if average:
            flat = flat / self.world.size
        return [piece.reshape(t.shape) for piece, t in
                zip(paddle.split(flat, [int(np.prod(t.shape)) for t in tensors]), tensors)]

    def _all_reduce_host(self, values):
        with _on_device(self._place):
            t = paddle.to_tensor(np.ascontiguousarray(values))
            self._sum_over_world(t)
            return (t / self.world.size).numpy()

    def _sum_over_world(self, t):
        try:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        except RuntimeError as exc:  # gloo: "Connection reset by peer", "Connection closed"
            if os.environ.get("PADDLE_LOG_DIR"):
                # under paddle.distributed.launch: it polls its workers once a second and names
                # the first failed one in rank order, so leaving at once could get this
                # survivor blamed for the peer that died; stay until the launcher stops us
                time.sleep(_PEER_GONE_GRACE_S)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise WorldBrokenError(f"rank {self.world.rank} of {self.world.size}: "
                                   f"paddle.distributed's all-reduce failed, so another worker "
                                   f"has gone ({first[:200]})") from exc

    def params(self) -> LMParams:
        with _on_device(self._place):
            return self.net.lm_params()


class PaddlePredictor(Predictor):
    """The model as Paddle layers (as the trainer builds them), run in dygraph without
    gradients a few tokens at a time."""

    def __init__(self, model: LMParams, impl: str, place: str):
        self._place = place
        with _on_device(place):
            self.net = _LM_CLASSES[impl](model)
        self.net.eval()

    @paddle.no_grad()
    def step(self, ids, state=None):
        with _on_device(self._place):
            if state is None:
                state = _zeros_state(self.net.spec, ids.shape[0], self.net.W_hq.dtype)
            Y, h_n = self.net.run(_tensor(np.ascontiguousarray(ids.T, np.int64)), state)
            logits = paddle.matmul(Y[-1], self.net.W_hq) + self.net.b_q
            return logits.numpy(), h_n


# -- the backend -----------------------------------------------------------------------------
#: Execution modes, measured through d2lgru at the book's config. Eager (dygraph) first for
#: both impls. scratch: 37k against 22k tokens/s on a quiet 2-core machine (the
#: paddle.jit.to_static program's matmul gradients cost several times dygraph's). native: 61k
#: against 52k tokens/s on a quiet machine, measured twice (benchmarks/run.py --backend paddle
#: --impl native --skip sweep ...); the static program only won while other jobs shared the
#: cores, its multi-threaded executor getting more of a busy machine.
_MODES = ("eager", "static")


class PaddleBackend(Backend):
    name = "paddle"
    devices = ("cpu", "gpu", "cuda")    # "cuda" is an alias of Paddle's "gpu"
    impls = {
        "scratch": ImplInfo(
            "the book's loop in Paddle operations (input projection in one matmul, fused gate "
            "matmuls, row lookup for the one-hot input); gradients from Paddle's autograd",
            gates=GATE_SETS, modes=_MODES),
        "native": ImplInfo(
            "paddle.nn.GRU (the fused rnn op) loaded from canonical parameters",
            reset_before=False, modes=_MODES,
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
        # Paddle sizes MKL's thread pool from FLAGS_paddle_num_threads, which a user's value
        # still sets; otherwise every usable CPU, followed while training runs. On two idle
        # cores two threads trained the book's config at 38-46k tokens/s against 31-33k for
        # one while Intel OpenMP's workers spin (its 200 ms block time), but at 11-17k when
        # they sleep (passive waiting): at [32,256] x [256,768] a second thread pays only while
        # it spins, and following the load is what keeps spinning threads from collapsing
        # when another job takes a core (2026-12-02, d2lgru train, benchmarks.contention).
        flag = os.environ.get("FLAGS_paddle_num_threads", "").strip()
        return int(flag) if flag.isdigit() and int(flag) > 0 else cpus

    retunes_threads = True
    keeps_freed_memory = True  # tensors are posix_memalign'd: see keep_freed_memory

    def framework_threads(self):
        # paddle.base.core.set_num_threads sizes MKL's Intel OpenMP pool
        from threadpoolctl import threadpool_info
        return min(i["num_threads"] for i in threadpool_info() if "iomp" in i["filepath"])

    def _set_threads(self, n):
        super()._set_threads(n)
        paddle.base.core.set_num_threads(n)

    def _init_world(self, world, device):
        """paddle.distributed's default process group: gloo on CPU, nccl on GPU. Under
        ``python -m paddle.distributed.launch`` it reads the launcher's ``PADDLE_*`` variables;
        a world from d2lgru's own variables is written into them (its coordinator becomes
        ``PADDLE_MASTER``, the TCP store rank 0 serves)."""
        if already_joined("paddle.distributed", (dist.get_rank(), dist.get_world_size())
                          if dist.is_initialized() else None, world):
            return
        env = os.environ
        if (env.get("PADDLE_TRAINER_ID"), env.get("PADDLE_TRAINERS_NUM")) != \
                (str(world.rank), str(world.size)):
            if not world.coordinator:
                raise UnsupportedError("paddle.distributed needs a coordinator: run under "
                                       "python -m paddle.distributed.launch, or set "
                                       "$D2LGRU_COORDINATOR (host:port of rank 0)")
            env.update(PADDLE_TRAINER_ID=str(world.rank), PADDLE_TRAINERS_NUM=str(world.size),
                       PADDLE_MASTER=world.coordinator,
                       PADDLE_CURRENT_ENDPOINT=env.get("PADDLE_CURRENT_ENDPOINT",
                                                       world.coordinator))
            env.pop("PADDLE_TRAINER_ENDPOINTS", None)
        if device == "cpu":
            env["PADDLE_DISTRI_BACKEND"] = "gloo"  # also where a GPU build would pick nccl
        else:  # a device make_trainer checked
            env.setdefault("FLAGS_selected_gpus", str(world.local_rank))
        # init_parallel_env writes a banner of the flags Paddle itself changed to stderr
        with contextlib.redirect_stderr(io.StringIO()):
            dist.init_parallel_env()

    def _device_absent(self, device):
        if not paddle.device.is_compiled_with_cuda():
            return "the installed paddlepaddle is the CPU-only build (paddlepaddle-gpu runs on CUDA)"
        return None if paddle.device.cuda.device_count() > 0 else "paddlepaddle sees no CUDA GPU"

    # -- native layout ------------------------------------------------------------------
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
                Y, h_n = _scratch_gru(_layout.nest(self._cell_tensors(params), params.spec),
                                      params.spec, _tensor(h0), X=_tensor(X))
        return Y.numpy(), h_n.numpy()

    @staticmethod
    def _cell_tensors(params, grad=False):
        """The scratch layout's tensors, flat (:func:`_layout.cell_arrays` order)."""
        return [_tensor(a, grad=grad) for a in _layout.cell_arrays(params)]

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        spec = params.spec
        Xt, h0t = _tensor(X, grad=True), _tensor(h0, grad=True)
        if impl == "native":
            layer = _native_gru_layer(spec, params.dtype)
            _load_native(layer, params)
            Y, h_n = layer(Xt, h0t)
        else:
            cells = self._cell_tensors(params, grad=True)
            Y, h_n = _scratch_gru(_layout.nest(cells, spec), spec, h0t, X=Xt)
        (paddle.sum(Y * _tensor(dY)) + paddle.sum(h_n * _tensor(dh_n))).backward()
        if impl == "native":
            dparams = _read_native(layer, spec, grads=True)
        else:
            dparams = _layout.cell_params(spec, [_grad_np(t, t.numpy()) for t in cells])
        return dparams, _grad_np(Xt, X), _grad_np(h0t, h0)

    # -- the language model -------------------------------------------------------------
    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        net = _LM_CLASSES[impl](model)
        loss, logits, h_n = net(_tensor(np.ascontiguousarray(X.T)),
                                _tensor(np.ascontiguousarray(Y.T)), _tensor(state))
        loss.backward()
        return LMResult(float(loss), net.lm_params(grads=True), logits.numpy(), h_n.numpy())

    def _make_trainer(self, model, *, impl, lr, clip, mode, device):
        return PaddleTrainer(model, impl=impl, lr=lr, clip=clip, mode=mode, device=device)

    def _make_predictor(self, model, *, impl, device):
        return PaddlePredictor(model, impl, "cpu" if device == "cpu" else "gpu")


backend = PaddleBackend()
