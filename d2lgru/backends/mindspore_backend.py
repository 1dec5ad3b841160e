"""MindSpore backend: the book's loop in MindSpore ops (``scratch``) and MindSpore's own GRU
layers (``native``: its oneDNN GRU kernel for the reset-before cell, ``mindspore.nn.GRU`` for the
reset-after one), gradients from MindSpore's autodiff, training in PyNative with the scratch loop
compiled (``mode='graph'``: one compiled graph per step).

What the installed release (2.10.0) computes, read from ``mindspore/nn/layer/rnn_cells.py``
(``_gru_cell``) and ``mindspore/nn/layer/rnns.py`` (``_RNNBase``, ``_DynamicGRUCPUGPU``): on CPU
``nn.GRU`` is a Python loop over time steps of a reset-after cell whose weight rows are stacked
in the gate order r, z, n (``weight_ih_l{k}[_reverse] [3H, I]``, ``weight_hh_l{k}[_reverse]
[3H, H]``, ``bias_ih``/``bias_hh [3H]``), with ``h' = n + z * (h - n)`` (the canonical update
gate, not a flipped one). Its initialiser draws from NumPy's global generator, and its
``construct`` accepts float32/float16 inputs only.

The reset-before cell runs in one kernel call per layer and direction: MindSpore's CPU build
wraps oneDNN's GRU (``gru_forward``/``gru_backward`` over the whole sequence) in the primitive
``GRUV2`` (``plugin/device/cpu/kernel/mkldnn/gru_cpu_kernel.cc``), which only its RL module
exports (``mindspore.ops.operations._rl_inner_ops``; no public API reaches it on CPU). oneDNN's
GRU is the book's cell: gates u, r, o (= z, r, h), ``h' = u h + (1 - u) o``, one bias per gate.
Its input ``w`` is one flat ``[n, 1, 1]`` tensor: ``W_x`` as row blocks ``[3H, I]``, ``W_h`` as
``[3H, H]``, then the bias ``[3H]`` (the canonical ``b_x + b_h``, all the cell adds).
"""

from __future__ import annotations

import os

import numpy as np

from .. import threads as _threads

# MindSpore reads its log level when it is imported (its Python logger when first used: fixed
# below); keep its INFO/WARNING lines quiet unless the user asked for them. Its oneDNN kernels
# run on GNU OpenMP (libgomp), which reads its wait policy when it loads: passive, so idle
# workers sleep instead of spinning (d2lgru/threads.py). Both variables are taken back once
# read, unless the user set them: to Paddle, loaded later in this process or in a child, GLOG_v
# is glog's verbosity, and 3 slows every Paddle op (its scratch loop trained 1.6x slower).
_ADDED_ENV = _threads.wait_passively({"GLOG_v": "3"})

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

ms.get_level()  # sets MindSpore's Python logger up from GLOG_v now, not at its first message
_threads.take_back(_ADDED_ENV)  # its libgomp loaded with MindSpore and read the wait policy

try:  # private to MindSpore (see the module's docstring): without it, native is reset-after only
    from mindspore.ops.operations._grad_ops import GRUV2Grad  # noqa: E402
    from mindspore.ops.operations._rl_inner_ops import GRUV2  # noqa: E402
except ImportError:  # pragma: no cover - another MindSpore release
    GRUV2 = GRUV2Grad = None

from ..distributed import reduction  # noqa: E402
from ..model import LMParams, lm_keys, trained  # noqa: E402
from ..spec import GATE_SETS, GATES, CellParams, GRUParams, GRUSpec  # noqa: E402
from . import _cudnn_layout, _layout  # noqa: E402
from ._base import (Backend, ImplInfo, LMResult, Predictor, Trainer,  # noqa: E402
                    UnsupportedError, check_native_names)
from ..errors import InvalidArgumentError  # noqa: E402

# PyNative (with launch_blocking, see _setup) first: on the reference machine it trained faster
# and steadier than GRAPH_MODE on both impls (scratch 7.6k vs 4.4k, native 11.1k vs 5.9k tokens/s,
# benchmarks/run.py --backend mindspore --skip sweep ...); graph mode's runtime threads contend
#
# Why either mode's figure swings 2-3x from run to run: each step is handed from the Python
# thread to MindSpore's ActorThread_0 and KernelThread_0 (graph mode adds its queue threads),
# and a waiting thread spins and yields, so under other jobs' load every hand-off waits for a
# time slice. Read from /proc/self/task/*/schedstat over 3 epochs of 4 batches, one kernel
# thread, load 6-8 on the 2-core machine: graph 9.3 s wall for 2.9 s of CPU, its Python thread
# 6.9 s and ActorThread_0 8.2 s runnable but waiting for a core; PyNative 3.3 s wall, 3.5 s CPU
# (4.0k against 1.5k tokens/s). Alternated in one process at load 10, the order flipped: graph
# 1.3k, PyNative 0.8k tokens/s (CPU-time rates 3.8k and 2.4k). So the ranking above holds only
# on a quiet machine; the settings _setup makes (one dispatch thread, launch_blocking, few
# op threads) leave these hand-offs in place.
#
# What a step costs here (2026-12-03, quiet machine, one op thread, PyNative): tens of
# microseconds an op whatever its size (an add of two [32, 256]: 45 us), milliseconds for a
# broadcast or strided op on a large tensor ([35, 32, 768] + [768]: 4 ms; a contiguous copy of
# a strided [35, 32, 256] slice: 2.6 ms; a flip of [35, 32, 768]: 7.7 ms), and a matmul by a
# strided or transposed operand 9-35x the contiguous one's 105 us ([32, 256] @ [256, 512]). So
# the scratch loop keeps every operand contiguous, writes the book's cell's backward out, and
# makes few ops: 4.6k -> 9.0k tokens/s at the book's config (benchmarks.ab against a886da5,
# 3 rounds), the native reset-before cell (GRUV2) 27k against nn.GRU's reset-after 6.4k. Each
# step of the loop, forward and backward, then became one compiled graph (ms.jit): 5.4k -> 8.9k
# tokens/s side by side (benchmarks.ab against e8c67ab, 3 rounds, a slower day). Now the whole
# loop is (_book_forward, _book_backward), with the gates' slices, the doubling of the
# candidate and the transposes inside the graphs, so PyNative autodiff records three ops for
# the cell's input side instead of a dozen strided ones: 15.8k -> 24.5k (benchmarks.ab against
# 20c8be2, 3 rounds, one thread, 2026-12-04). Graph mode stays slower (5.0-12.5k in the snapshot).
MODES = ("pynative", "graph")
_MS_DTYPES = {np.dtype(np.float32): ms.float32, np.dtype(np.float64): ms.float64}


def _tensor(a) -> Tensor:
    return Tensor(np.ascontiguousarray(a))


# -- the native layouts: nn.GRU's (cuDNN's, see _cudnn_layout; reset-after) and GRUV2's
# (oneDNN's; reset-before): per cell one flat ``weight_l{k}[_reverse] [n, 1, 1]``
#: row block k of each GRUV2 weight and bias holds canonical gate ONEDNN_GATES[k] (oneDNN's
#: u, r, o): the canonical order itself
ONEDNN_GATES = ("z", "r", "h")
_ONEDNN_ORDER = [GATES.index(g) for g in ONEDNN_GATES]


def _onednn_name(layer: int, direction: int) -> str:
    return f"weight_l{layer}" + ("_reverse" if direction else "")


def _onednn_shapes(spec: GRUSpec) -> dict[str, tuple[int, int, int]]:
    H = spec.hidden_size
    return {_onednn_name(l, d): (3 * H * (spec.layer_input_size(l) + H + 1), 1, 1)
            for l, d in spec.cells()}


def to_native(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> the native layer's arrays by name: reset-after, ``nn.GRU``'s parameters
    (``[3H, in]`` weights, rows r | z | n); reset-before, GRUV2's flat ``w`` per cell, whose
    bias is ``b_x + b_h``."""
    if params.spec.reset_after:
        return _cudnn_layout.to_native(params)
    native = {}
    for l, d in params.spec.cells():
        c = params.cell(l, d)
        rows = [w[_ONEDNN_ORDER].transpose(0, 2, 1).reshape(-1) for w in (c.W_x, c.W_h)]
        native[_onednn_name(l, d)] = np.concatenate(
            rows + [(c.b_x + c.b_h)[_ONEDNN_ORDER].reshape(-1)]).reshape(-1, 1, 1)
    return native


def from_native(native, spec: GRUSpec) -> GRUParams:
    """The native layer's arrays by name -> canonical. Reset-after: ``nn.GRU``'s parameters (or
    their gradients); reset-before: GRUV2's ``w``, whose one bias comes back as ``b_x`` with
    ``b_h = 0`` (the same GRU, see :meth:`Backend.native_normal_form`)."""
    if spec.reset_after:
        return _cudnn_layout.from_native(native, spec, "mindspore.nn.GRU")
    expected = _onednn_shapes(spec)
    check_native_names(native, expected, "MindSpore's GRUV2", spec)
    H, cells = spec.hidden_size, [[] for _ in range(spec.num_layers)]
    for (l, d), (name, shape) in zip(spec.cells(), expected.items()):
        w = np.asarray(native[name])
        if w.shape != shape:
            raise InvalidArgumentError(
                f"{name} must have shape {shape} for a {spec.describe()}, got {w.shape}")
        w, I = w.reshape(-1), spec.layer_input_size(l)
        W_x, W_h, b = np.split(w, [3 * H * I, 3 * H * (I + H)])
        cells[l].append(CellParams(
            np.ascontiguousarray(W_x.reshape(3, H, I)[_ONEDNN_ORDER].transpose(0, 2, 1)),
            np.ascontiguousarray(W_h.reshape(3, H, H)[_ONEDNN_ORDER].transpose(0, 2, 1)),
            b.reshape(3, H)[_ONEDNN_ORDER].copy(), np.zeros((3, H), w.dtype)))
    return GRUParams(spec, cells)


def _new_native_layer(spec: GRUSpec, seed: int | None = None) -> nn.GRU:
    """``nn.GRU`` for ``spec``. Its initialiser draws from NumPy's global generator: seed it when
    asked and restore the caller's stream either way."""
    saved = np.random.get_state()
    try:
        if seed is not None:
            np.random.seed(seed)
        return nn.GRU(spec.input_size, spec.hidden_size, spec.num_layers, has_bias=True,
                      batch_first=False, bidirectional=spec.bidirectional)
    finally:
        np.random.set_state(saved)


def _short(name: str) -> str:
    """A parameter's own name: a Cell that holds the layer prefixes it (``gru.weight_ih_l0``)."""
    return name.rsplit(".", 1)[-1]


def _load_native(layer: nn.GRU, params: GRUParams):
    native = to_native(params)
    for p in layer.get_parameters():
        p.set_data(_tensor(native[_short(p.name)]))


def _read_native(layer: nn.GRU, spec: GRUSpec) -> GRUParams:
    return from_native({_short(p.name): p.asnumpy() for p in layer.get_parameters()}, spec)


# -- the book's loop in MindSpore ops ------------------------------------------------------
# Weights are fused per cell (d2lgru/backends/_layout.py): Wx [I, 3H] and Wh [H, 3H] with
# columns z | r | h, and biases [3H] -- a pure relayout, so gradients convert back exactly.
# MindSpore's CPU float32 tanh (PyNative and graph alike) is a clamped rational approximation,
# off by up to 1e-4 for 4 < |x| < 6; its sigmoid is good to 1e-6. The loop therefore computes
# the candidate as tanh(a) = 2 sigmoid(2a) - 1, with the factor 2 folded into the candidate's
# input and weights before the loop (scaling by 2 is exact in binary floating point).
def _book_step(xzr, xh2, h, Wzr, Whh2):
    """One step of the book's cell: ``(h', z, r, n, r h)``."""
    H = h.shape[1]
    zr = ops.sigmoid(xzr + ops.matmul(h, Wzr))
    z = zr[:, :H]
    r = zr[:, H:]
    rh = r * h
    s = ops.sigmoid(xh2 + ops.matmul(rh, Whh2))
    n = s + s - 1
    # n + z (h - n): one op instead of three where Lerp has the dtype (not float64)
    h = n + z * (h - n) if h.dtype == ms.float64 else ops.lerp(n, h, z)
    return h, z, r, n, rh


@ms.jit
def _book_forward(XP, h, Wh):
    """The book's cell over ``XP [T, N, 3H]`` (``x W_x`` and every bias, columns z | r | h)
    from ``h [N, H]`` with ``Wh [H, 3H]``: ``(Y, last, Z, R, NN, RH)``, the last four what
    :func:`_book_backward` reads. One compiled graph for the whole loop: MindSpore's PyNative
    dispatch costs tens of microseconds an op and a compiled call about as much, so 35 steps
    of 12 ops as one call run in a fraction of the time (see the module's notes)."""
    H = h.shape[1]
    XZR, XH2 = XP[:, :, :2 * H], 2 * XP[:, :, 2 * H:]
    Wzr, Whh2 = Wh[:, :2 * H], 2 * Wh[:, 2 * H:]
    ys, zs, rs, ns, rhs = [], [], [], [], []
    for xzr, xh2 in zip(ops.unstack(XZR, 0), ops.unstack(XH2, 0)):
        h, z, r, n, rh = _book_step(xzr, xh2, h, Wzr, Whh2)
        ys.append(h)
        zs.append(z)
        rs.append(r)
        ns.append(n)
        rhs.append(rh)
    return ops.stack(ys), h, ops.stack(zs), ops.stack(rs), ops.stack(ns), ops.stack(rhs)


@ms.jit
def _book_backward(h0, Wh, Y, Z, R, NN, RH, dY, dh):
    """The backward of :func:`_book_forward` from its outputs and their gradients ``dY``,
    ``dh``: ``(dXP, dh0, dWh)``, one compiled graph. The reverse loop carries only the state's
    gradient (two products a step); whatever does not depend on it is computed for all steps
    at once, and the recurrent weights' gradients are one product each over all ``T*N`` rows.
    (MindSpore's own backward of the loop multiplies by transposed views, which its CPU matmul
    takes 9-35x longer over than contiguous operands.)"""
    T, N, H = Y.shape
    WzrT = ops.transpose(Wh[:, :2 * H], (1, 0))
    WhhT = ops.transpose(2 * Wh[:, 2 * H:], (1, 0))
    H_prev = ops.concat((h0.reshape(1, N, H), Y[:-1]), 0)
    # h' = n + z (h - n), n = 2 sigmoid(a2) - 1, z = sigmoid(a_z), r = sigmoid(a_r):
    # da2 = g (1 - z) (1 - n^2) / 2, da_z = g (h - n) z (1 - z), da_r = (dL/d(r h)) h r (1 - r)
    D = (1 - NN * NN) * 0.5
    A = (H_prev - NN) * (Z - Z * Z)
    B = H_prev * (R - R * R)
    dYs, Zs, Ds, As, Bs, Rs = (ops.unstack(x, 0) for x in (dY, Z, D, A, B, R))
    dzrs, dns = [], []
    for t in range(T - 1, -1, -1):
        g = dh + dYs[t]
        gz = g * Zs[t]
        da2 = (g - gz) * Ds[t]
        ds = ops.matmul(da2, WhhT)  # s = r * h
        da_zr = ops.concat((g * As[t], ds * Bs[t]), 1)
        dh = gz + ds * Rs[t] + ops.matmul(da_zr, WzrT)
        dzrs.append(da_zr)
        dns.append(da2 + da2)  # the candidate's input was doubled
    DZR, DN = ops.stack(dzrs[::-1]), ops.stack(dns[::-1])
    dWzr = ops.matmul(ops.transpose(H_prev.reshape(T * N, H), (1, 0)), DZR.reshape(T * N, 2 * H))
    dWhh = ops.matmul(ops.transpose(RH.reshape(T * N, H), (1, 0)), DN.reshape(T * N, H))
    return ops.concat((DZR, DN), 2), dh, ops.concat((dWzr, dWhh), 1)


#: the most steps one graph of :func:`_book_forward` / :func:`_book_backward` unrolls: a graph is
#: compiled for each sequence length it meets (35 steps: about a second), so longer sequences
#: run as chunks of this many steps (a second graph for the remainder)
_GRAPH_STEPS = 48


class _BookCellLoop(nn.Cell):
    """The book's cell with both gates over time, its backward written out as in the torch, JAX
    and TensorFlow adapters; forward and backward each one compiled graph
    (:func:`_book_forward`, :func:`_book_backward`; sequences longer than
    :data:`_GRAPH_STEPS` in chunks of that many steps). ``construct(XP [T, N, 3H], h0, Wh) ->
    (Y, last, Z, R, NN, RH)``: ``XP`` holds the input projection and every bias; the last
    four outputs are what ``bprop`` reads back."""

    def construct(self, XP, h, Wh):
        T = XP.shape[0]
        if T <= _GRAPH_STEPS:
            return _book_forward(XP, h, Wh)
        chunks = []
        for t in range(0, T, _GRAPH_STEPS):
            chunk = _book_forward(XP[t:t + _GRAPH_STEPS], h, Wh)
            h = chunk[1]
            chunks.append(chunk)
        return (ops.concat([c[0] for c in chunks]), h,
                *(ops.concat([c[i] for c in chunks]) for i in range(2, 6)))

    def bprop(self, XP, h0, Wh, out, dout):
        Y, _, Z, R, NN, RH = out
        dY, dh = dout[0], dout[1]
        T = Y.shape[0]
        if T <= _GRAPH_STEPS:
            return _book_backward(h0, Wh, Y, Z, R, NN, RH, dY, dh)
        dXPs, dWh = [], None
        for t in reversed(range(0, T, _GRAPH_STEPS)):
            window = slice(t, t + _GRAPH_STEPS)
            dXP, dh, dW = _book_backward(h0 if t == 0 else Y[t - 1], Wh, Y[window], Z[window],
                                         R[window], NN[window], RH[window], dY[window], dh)
            dXPs.append(dXP)
            dWh = dW if dWh is None else dWh + dW
        return ops.concat(dXPs[::-1]), dh, dWh


_book_cell_loop = _BookCellLoop()


def _project(W, b, ids, X):
    """``x W + b`` for the one-hot of ``ids [T, N]`` (a row lookup in ``W + b``: the bias added
    to V rows, not T*N -- MindSpore's broadcast add over [35, 32, 768] alone takes 4 ms) or for
    ``X [T, N, I]``."""
    if ids is not None:
        return ops.gather(W + b, ids, 0)
    T, N = X.shape[0], X.shape[1]
    return (ops.matmul(X.reshape(T * N, -1), W) + b).reshape(T, N, -1)


def _book_direction(Wx, Wh, b, h, reverse: bool, ids, X):
    """One direction of the book's cell with both gates (:class:`_BookCellLoop`) on the one-hot
    of ``ids`` or on ``X``; ``b = b_x + b_h``, all the cell adds. The reverse direction reads
    its input reversed."""
    if reverse:
        ids, X = (ops.flip(ids, (0,)), None) if ids is not None else (None, ops.flip(X, (0,)))
    Y, h, *_ = _book_cell_loop(_project(Wx, b, ids, X), h, Wh)
    return (ops.flip(Y, (0,)) if reverse else Y), h


def _direction(xp, Wh, bh, h, reverse: bool, reset_after: bool, has_z: bool, has_r: bool):
    """One direction over time; ``xp [T, N, 3H] = x Wx + bx``, columns z | r | h. Returns
    ``Y [T, N, H]`` (in input order also when ``reverse``) and the last state. An ablated
    gate is pinned (Z = 0, R = 1), so its parameters get zero gradients."""
    H = Wh.shape[0]
    T = xp.shape[0]
    Wzr = Wh[:, :2 * H].contiguous()  # a view: MindSpore multiplies a strided one 9x slower
    steps = range(T - 1, -1, -1) if reverse else range(T)
    xzr = ops.unstack(xp[:, :, :2 * H] + bh[:2 * H], 0)
    ys = []
    if reset_after:
        xh2 = ops.unstack(2 * xp[:, :, 2 * H:], 0)
        Wcat = ops.concat((Wzr, 2 * Wh[:, 2 * H:]), 1)
        bhh2 = 2 * bh[2 * H:]
        for t in steps:
            hzr, hh2 = ops.split(ops.matmul(h, Wcat), (2 * H, H), 1)
            z, r = ops.split(ops.sigmoid(xzr[t] + hzr), H, 1)
            hh2 = hh2 + bhh2
            n = 2 * ops.sigmoid(xh2[t] + (r * hh2 if has_r else hh2)) - 1
            h = n + z * (h - n) if has_z else n
            ys.append(h)
    else:
        xh2 = ops.unstack(2 * (xp[:, :, 2 * H:] + bh[2 * H:]), 0)
        Whh2 = 2 * Wh[:, 2 * H:]
        for t in steps:
            z, r = ops.split(ops.sigmoid(xzr[t] + ops.matmul(h, Wzr)), H, 1)
            n = 2 * ops.sigmoid(xh2[t] + ops.matmul(r * h if has_r else h, Whh2)) - 1
            h = n + z * (h - n) if has_z else n
            ys.append(h)
    if reverse:
        ys = ys[::-1]
    return ops.stack(ys), h


def _scratch_forward(weights, h0, cell, num_layers: int, num_dirs: int, X=None, ids=None):
    """The stacked (bi)directional GRU on ``X [T, N, I]``, or, for the language model, on the
    one-hot of ``ids [T, N]`` (layer 0's projection is then a row lookup, exactly).
    ``cell`` is ``(reset_after, has_update_gate, has_reset_gate)``."""
    inp, hs = X, []
    for l in range(num_layers):
        outs = []
        for d in range(num_dirs):
            k = 4 * (l * num_dirs + d)
            Wx, Wh, bx, bh = weights[k], weights[k + 1], weights[k + 2], weights[k + 3]
            src_ids, src = (ids, None) if l == 0 and ids is not None else (None, inp)
            if cell == (False, True, True):  # the book's cell: its backward written out
                Y, h = _book_direction(Wx, Wh, bx + bh, h0[l * num_dirs + d], d == 1,
                                       src_ids, src)
            else:
                Y, h = _direction(_project(Wx, bx, src_ids, src), Wh, bh,
                                  h0[l * num_dirs + d], d == 1, *cell)
            outs.append(Y)
            hs.append(h)
        inp = outs[0] if num_dirs == 1 else ops.concat(outs, -1)
    return inp, ops.stack(hs)


def _cell(spec: GRUSpec):
    return spec.reset_after, spec.has_update_gate, spec.has_reset_gate


# -- the reset-before cell in oneDNN's GRU kernel (native) ---------------------------------
class _OneDNNGRU(nn.Cell):
    """One layer and direction of the reset-before GRU over a whole sequence: GRUV2, with a
    backward that works around MindSpore 2.10's GRUV2Grad, which declares the input gradient
    ``[T, H, I]`` instead of ``[T, N, I]`` (its kernel writes the ``T*N*I`` values from the
    start of that buffer). :class:`_FusedGRU` never gives it more than ``H`` rows, so the
    kernel never writes past the buffer."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.fwd = GRUV2(input_size, hidden_size, 1, True, False, 0.0)
        self.bwd = GRUV2Grad(input_size, hidden_size, 1, True, False, 0.0)

    def construct(self, x, h0, w, lengths):
        y, h_n, reserve, _ = self.fwd(x, h0, w, lengths)
        return y, h_n, reserve

    def bprop(self, x, h0, w, lengths, out, dout):
        y, h_n, reserve = out
        dx, dh0, dw = self.bwd(x, h0, w, lengths, y, h_n, dout[0], dout[1], reserve)
        return dx.reshape(-1)[:x.size].reshape(x.shape), dh0, dw, ops.zeros_like(lengths)


class _FusedGRU(nn.Cell):
    """The stacked (bi)directional reset-before GRU, one GRUV2 call per layer, direction and
    slice of at most ``H`` rows of the batch: ``construct(flat_weights, h0, X)`` with one
    :func:`to_native` ``w`` per cell (``spec.cells()`` order)."""

    def __init__(self, spec: GRUSpec):
        super().__init__()
        self.spec = spec
        self.layers = nn.CellList([_OneDNNGRU(spec.layer_input_size(l), spec.hidden_size)
                                   for l in range(spec.num_layers)])

    def construct(self, flat_weights, h0, X):
        D, H = self.spec.num_directions, self.spec.hidden_size
        T, N = X.shape[0], X.shape[1]
        inp, hs = X, []
        for l in range(self.spec.num_layers):
            outs = []
            for d in range(D):
                k = l * D + d
                x = ops.flip(inp, (0,)) if d else inp
                ys, lasts = [], []
                for s in range(0, N, H):  # rows are independent: slices change nothing
                    n = min(H, N - s)
                    y, h_n, _ = self.layers[l](x[:, s:s + n], h0[k:k + 1, s:s + n],
                                               flat_weights[k], ops.fill(ms.int32, (n,), T))
                    ys.append(y)
                    lasts.append(h_n[0])
                Y = ys[0] if len(ys) == 1 else ops.concat(ys, 1)
                outs.append(ops.flip(Y, (0,)) if d else Y)
                hs.append(lasts[0] if len(lasts) == 1 else ops.concat(lasts, 0))
            inp = outs[0] if D == 1 else ops.concat(outs, -1)
        return inp, ops.stack(hs)


def _onednn_weights(arrays):
    """The scratch layout's arrays (four a cell: ``Wx [I, 3H]``, ``Wh [H, 3H]``, ``bx``, ``bh``)
    -> GRUV2's flat ``w`` per cell, as tensors inside the step (so autodiff reaches the four).
    Both layouts stack the gates in the canonical order (ONEDNN_GATES), so transposing the
    weights is the whole relayout."""
    return [ops.concat((arrays[k].T.reshape(-1), arrays[k + 1].T.reshape(-1),
                        arrays[k + 2] + arrays[k + 3])).reshape(-1, 1, 1)
            for k in range(0, len(arrays), 4)]


def _cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits [M, V]`` against ``labels [M]``."""
    picked = ops.gather_elements(logits, 1, labels.reshape(-1, 1)).reshape(-1)
    return (ops.logsumexp(logits, 1) - picked).mean()


# -- the language model as a Cell (both impls) ---------------------------------------------
class _LM(nn.Cell):
    """one-hot(ids) -> GRU -> dense head; ``construct(X_ids [N, T], Y_ids [N, T], state)``
    returns ``(loss, logits [T*N, V], h_n)``."""

    def __init__(self, impl: str, model: LMParams):
        super().__init__()
        spec = model.spec
        self.impl, self.spec = impl, spec
        self.cell = _cell(spec)
        self.num_layers, self.num_dirs = spec.num_layers, spec.num_directions
        # nn.GRU's parameters for the native reset-after cell; otherwise the scratch layout's,
        # which the native reset-before cell turns into GRUV2's w inside the step (so each
        # reset-before b_h stays put, as trained() says, while GRUV2 gets b_x + b_h)
        self.nn_gru = impl == "native" and spec.reset_after
        self.fused = _FusedGRU(spec) if impl == "native" and not spec.reset_after else None
        if impl == "native":
            self.eye = _tensor(np.eye(model.vocab_size, dtype=model.dtype))
        if self.nn_gru:
            self.gru = _new_native_layer(spec)
            _load_native(self.gru, model.gru)
        else:  # the scratch layout's arrays, one parameter each, named after their lm_keys name
            self.gru_weights = ms.ParameterTuple([
                ms.Parameter(_tensor(a), name=k.replace(".", "_"))
                for k, a in zip(lm_keys(spec), _layout.cell_arrays(model.gru))])
        self.W_hq = ms.Parameter(_tensor(model.W_hq), name="W_hq")
        self.b_q = ms.Parameter(_tensor(model.b_q), name="b_q")

    def run(self, ids, state):
        """Time-major ids ``[T, N]`` -> ``(logits [T*N, V], h_n)``."""
        if self.nn_gru:
            out, h_n = self.gru(ops.gather(self.eye, ids, 0), state)
        elif self.fused is not None:
            out, h_n = self.fused(_onednn_weights(self.gru_weights), state,
                                  ops.gather(self.eye, ids, 0))
        else:
            out, h_n = _scratch_forward(self.gru_weights, state, self.cell, self.num_layers,
                                        self.num_dirs, ids=ids)
        T, N = ids.shape[0], ids.shape[1]
        return ops.matmul(out.reshape(T * N, -1), self.W_hq) + self.b_q, h_n

    def construct(self, X, Y, state):
        logits, h_n = self.run(X.T, state)
        return _cross_entropy(logits, Y.T.reshape(-1)), logits, h_n

    def keys(self) -> list[str]:
        """The :func:`d2lgru.model.lm_keys` name of each of ``trainable_params()``."""
        by_name = {**_cudnn_layout.keys(self.spec), "W_hq": "head.W_hq", "b_q": "head.b_q",
                   **{k.replace(".", "_"): k for k in lm_keys(self.spec)}}
        return [by_name[_short(p.name)] for p in self.trainable_params()]

    def read(self) -> LMParams:
        return self.to_lm([p.asnumpy() for p in self.trainable_params()])

    def to_lm(self, arrays) -> LMParams:
        """Arrays (weights or gradients) in ``trainable_params()`` order -> canonical."""
        return _layout.lm_params(self.spec, dict(zip(self.keys(), arrays, strict=True)),
                                 from_native if self.nn_gru else None)


def clip_and_sgd(params, grads, lr, clip):
    """The book's ``grad_clipping`` (the global L2 norm of ``grads`` scaled down to ``clip``
    when above it) then ``sgd`` (``p -= lr * g``), in place, on the device: no sync."""
    norm = ops.sqrt(ops.addn([(g * g).sum() for g in grads]))
    scale = lr * ops.minimum(ops.ones_like(norm), clip / norm)
    for p, g in zip(params, grads):
        ops.assign_sub(p, scale * g)


def _all_reduce_flat(tensors, all_reduce, divisor):
    """``tensors`` summed over the world by one ``AllReduce`` of their concatenation, divided
    by ``divisor``; same order and shapes (also inside a compiled step)."""
    flat = all_reduce(ops.concat([t.reshape(-1) for t in tensors]))
    if divisor != 1:
        flat = flat / divisor
    out, at = [], 0
    for t in tensors:
        out.append(flat[at:at + t.size].reshape(t.shape))
        at += t.size
    return out


class _TrainStep(nn.Cell):
    """loss -> grads -> (data-parallel: the world's mean gradient) -> global-norm clip -> SGD,
    in place on the LM's parameters."""

    #: set by the trainer before the first step (graph mode compiles them in as constants):
    #: the world's ``AllReduce`` and what its sum is divided by, or None in one process
    all_reduce = None
    divisor = 1

    def __init__(self, lm: _LM, lr: float, clip: float, dtype):
        super().__init__()
        self.lm = lm
        keep = trained(lm.spec)  # a reset-before cell's b_h stays put
        self.weights = ms.ParameterTuple([p for p, k in zip(lm.trainable_params(), lm.keys(),
                                                             strict=True) if k in keep])
        self.grad_fn = ms.value_and_grad(lm, None, self.weights, has_aux=True)
        self.lr = Tensor(lr, dtype)
        self.clip = Tensor(clip, dtype)

    def construct(self, X, Y, state):
        (loss, _, h_n), grads = self.grad_fn(X, Y, state)
        if self.all_reduce is not None:
            grads = _all_reduce_flat(grads, self.all_reduce, self.divisor)
        clip_and_sgd(self.weights, grads, self.lr, self.clip)
        return loss, ops.stop_gradient(h_n)


def _zeros_state(spec: GRUSpec, N: int, dtype) -> Tensor:
    return _tensor(np.zeros(spec.state_shape(N), dtype))


class MindSporeTrainer(Trainer):
    def __init__(self, model: LMParams, *, impl, lr, clip, mode, device):
        self.backend, self.impl, self.mode, self.device = "mindspore", impl, mode, device
        self.spec, self.dtype = model.spec, model.dtype
        self.lm = _LM(impl, model)
        self._step_cell = step = _TrainStep(self.lm, lr, clip, _MS_DTYPES[model.dtype])
        # graph: the whole step compiled once per batch shape (ms.jit caches by input shape)
        self._train_step = ms.jit(step.construct) if mode == "graph" else step
        self._reduction_set = False

    def _to_device(self, X, Y):
        return Tensor(np.ascontiguousarray(X, np.int64)), Tensor(np.ascontiguousarray(Y, np.int64))

    def _zeros_state(self, N):
        return _zeros_state(self.spec, N, self.dtype)

    def _step(self, ids, labels, state):
        if not self._reduction_set:
            self._set_reduction()
        return self._train_step(ids, labels, state)

    # -- data-parallel: mindspore.communication (msrun's scheduler, MCCL on CPU) -----------
    def _set_reduction(self):
        """What Trainer._average_gradients does, decided once before the first step and built
        into the step cell (its all-reduce runs inside the compiled graph in graph mode): the
        gradients' sum over the world divided by its size, or per $D2LGRU_DIST_REDUCTION."""
        how = reduction() if self._distributed else "none"
        if how != "none":
            self._step_cell.all_reduce = self._all_reduce_op()
            self._step_cell.divisor = self.world.size if how == "mean" else 1
        self._reduction_set = True

    def _all_reduce_op(self):
        if getattr(self, "_op", None) is None:
            self._op = ops.AllReduce(ops.ReduceOp.SUM)
        return self._op

    def _all_reduce(self, tensors, *, average):
        return _all_reduce_flat(list(tensors), self._all_reduce_op(),
                                self.world.size if average else 1)

    def _all_reduce_host(self, values):
        mean, = self._all_reduce([Tensor(np.ascontiguousarray(values, np.float32))],
                                 average=True)
        return mean.asnumpy()

    def _fetch_losses(self, handles):
        return ops.stack(handles).asnumpy()

    def params(self) -> LMParams:
        return self.lm.read()


class MindSporePredictor(Predictor):
    """The model as the trainer's Cell, run in PyNative a few tokens at a time."""

    def __init__(self, model: LMParams, impl: str):
        self.lm, self.spec, self.dtype = _LM(impl, model), model.spec, model.dtype

    def step(self, ids, state=None):
        if state is None:
            state = _zeros_state(self.spec, ids.shape[0], self.dtype)
        logits, h_n = self.lm.run(Tensor(np.ascontiguousarray(ids.T, np.int64)), state)
        return logits[-ids.shape[0]:].asnumpy(), h_n


# -- the backend ---------------------------------------------------------------------------
class MindSporeBackend(Backend):
    name = "mindspore"
    # CPU only, declared: MindSpore's device target is process-wide, this release's GPU plugin
    # is built for CUDA 11.1/11.6, and no machine here can run it (the 2.5 GB wheel cannot
    # travel to the GPU machines), so a GPU path would be untested; "gpu" gets one sentence.
    devices = ("cpu",)
    impls = {
        "scratch": ImplInfo(
            "the book's loop in MindSpore ops (input projection in one matmul, fused gate "
            "matmuls, row lookup for the one-hot input, tanh as 2 sigmoid(2x) - 1 since "
            "MindSpore's CPU float32 tanh is off by 1e-4), MindSpore autodiff (the book's cell "
            "with both gates: its backward written out as a Cell.bprop); training step in "
            "PyNative (mode graph: compiled with mindspore.jit)",
            gates=GATE_SETS, modes=MODES),
        "native": ImplInfo(
            "reset-before: MindSpore's oneDNN GRU kernel (GRUV2, the whole sequence in one call "
            "per layer and direction); reset-after: mindspore.nn.GRU (on CPU a loop of its "
            "cell, gates r, z, n); loaded from canonical weights; training step in PyNative "
            "(mode graph: compiled with mindspore.jit)",
            reset_before=GRUV2 is not None, dtypes=("float32",), modes=MODES,
            why_not={
                "reset_before_bias": "GRUV2 holds one bias per gate (the canonical b_x + b_h, "
                                     "all the reset-before cell depends on), so parameters read "
                                     "back from it have b_h = 0",
                "dtype": "mindspore.nn.GRU and its oneDNN GRU kernel accept float32/float16 "
                         "inputs only"} | ({} if GRUV2 is not None else {
                "reset_before": "this MindSpore release has no GRUV2 kernel (its oneDNN GRU), "
                                "and mindspore.nn.GRU computes only the reset-after cell"})),
    }

    def __init__(self):
        super().__init__()
        self._layers = {}
        self._user_op_threads = False

    def _setup(self):
        """CPU, few kernel threads, synchronous launches. Measured here: by default MindSpore
        starts 25 kernel threads and dispatches asynchronously, and its workers spin while
        they wait, so every small op costs milliseconds on a 2-core machine; with
        ``launch_blocking`` PyNative burns a seventh of the CPU and the compiled step is no
        slower. Settings the user made before first use are left alone."""
        from mindspore._c_expression import RuntimeConf

        ms.set_device("CPU")
        conf = RuntimeConf.get_instance()
        self._user_op_threads = conf.is_op_threads_num_configured()
        if not conf.is_dispatch_threads_num_configured():
            ms.runtime.dispatch_threads_num(1)
        if not conf.is_launch_blocking():
            ms.runtime.launch_blocking()

    def _thread_preference(self, cpus):
        # MindSpore's default of 25 kernel threads makes every op cost milliseconds on a small
        # machine; the book's ops are small, so a few suffice (one beside the dispatcher on 2)
        return max(1, min(4, cpus - 1))

    waits_passively = True

    def framework_threads(self):
        # MindSpore has no getter for its kernel threads; every BLAS it loaded must agree
        return max(_threads.blas_threads().values())

    def _set_threads(self, n):
        # MindSpore's public setter (op_tuning.threads_num) refuses a second call, so later
        # counts go to the runtime's own setter. A count the user set through MindSpore before
        # the backend's first use is left alone (MindSpore offers no way to read it back).
        super()._set_threads(n)
        if self._user_op_threads:
            return None
        from mindspore._c_expression import RuntimeConf

        RuntimeConf.get_instance().set_op_threads_num(n)
        return None

    def check_device(self, device):
        try:
            return super().check_device(device)
        except UnsupportedError as exc:
            if str(device).lower() not in ("gpu", "cuda", "ascend", "npu"):
                raise
            raise UnsupportedError(
                f"{exc} (this adapter runs MindSpore on CPU only: its device target is "
                f"process-wide and the 2.10 GPU plugin needs CUDA 11.1/11.6)") from None

    # -- plain GRU calls: PyNative (one-off shapes; nothing to compile) --------------------
    def _gru_fn(self, impl, spec, params):
        """``(fn(X, h0, *weights) -> (Y, h_n), weight tensors, nn.GRU or None)``; the weights
        are nn.GRU's parameters, else the scratch layout's arrays (see _LM)."""
        if impl == "native":
            layer = self._layers.get(spec)
            if layer is None:  # one layer per spec (prediction calls this once per character)
                layer = self._layers[spec] = (_new_native_layer(spec) if spec.reset_after
                                              else _FusedGRU(spec))
            if not spec.reset_after:
                return ((lambda X, h0, *w: layer(_onednn_weights(w), h0, X)),
                        [_tensor(a) for a in _layout.cell_arrays(params)], None)
            _load_native(layer, params)
            return (lambda X, h0, *w: layer(X, h0)), list(layer.trainable_params()), layer

        def fn(X, h0, *weights):
            return _scratch_forward(weights, h0, _cell(spec), spec.num_layers,
                                    spec.num_directions, X=X)
        return fn, [_tensor(a) for a in _layout.cell_arrays(params)], None

    def _gru(self, impl, params, X, h0):
        fn, weights, _ = self._gru_fn(impl, params.spec, params)
        Y, h_n = fn(_tensor(X), _tensor(h0), *weights)
        return Y.asnumpy(), h_n.asnumpy()

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        spec = params.spec
        fn, weights, layer = self._gru_fn(impl, spec, params)
        dY_t, dh_t = _tensor(dY), _tensor(dh_n)

        def scalar(X, h0, *w):
            Y, h_n = fn(X, h0, *w)
            return (Y * dY_t).sum() + (h_n * dh_t).sum()

        if layer is not None:
            grads = ms.grad(scalar, grad_position=(0, 1), weights=weights)(_tensor(X), _tensor(h0))
            (dX, dh0), dw = grads
            dparams = from_native({_short(p.name): g.asnumpy() for p, g in zip(weights, dw)},
                                   spec)
        else:
            n = len(weights)
            grads = ms.grad(scalar, grad_position=tuple(range(2 + n)))(
                _tensor(X), _tensor(h0), *weights)
            dX, dh0 = grads[0], grads[1]
            dparams = _layout.cell_params(spec, [g.asnumpy() for g in grads[2:]])
        return dparams, dX.asnumpy(), dh0.asnumpy()

    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        lm = _LM(impl, model)
        weights = lm.trainable_params()
        (loss, logits, h_n), grads = ms.value_and_grad(lm, None, weights, has_aux=True)(
            Tensor(X), Tensor(Y), _tensor(state))
        return LMResult(float(loss.asnumpy()), lm.to_lm([g.asnumpy() for g in grads]),
                        logits.asnumpy(), h_n.asnumpy())

    # -- data-parallel: msrun starts the scheduler and the workers -------------------------
    def _init_world(self, world, device):
        """Join msrun's world: ``mindspore.communication.init()`` meets the scheduler at
        ``MS_SCHED_HOST:MS_SCHED_PORT`` (msrun's environment) and sets up MCCL on CPU."""
        from mindspore.communication import get_group_size, get_rank, init

        if os.environ.get("MS_ROLE") != "MS_WORKER":
            raise UnsupportedError(
                "MindSpore's workers meet at msrun's scheduler: start them with d2lgru train "
                "--nproc N (which runs msrun), or under msrun")
        if not getattr(self, "_world_joined", False):
            init()
            self._world_joined = True
        if (get_rank(), get_group_size()) != (world.rank, world.size):
            raise UnsupportedError(f"msrun made this process rank {get_rank()} of "
                                   f"{get_group_size()}, not {world.rank} of {world.size}")

    def serve_world(self):
        """msrun's scheduler (``MS_ROLE=MS_SCHED``) runs the workers' command line: here it
        serves them; MindSpore's ``init()`` ends the process when the workers are done."""
        from mindspore.communication import init

        self._ensure_ready()
        init()
        return 0

    def _make_trainer(self, model, **kw):
        return MindSporeTrainer(model, **kw)

    def _make_predictor(self, model, *, impl, device):
        return MindSporePredictor(model, impl)

    # -- the native layout hooks -----------------------------------------------------------
    def _native_reference(self, spec, X, h0, seed):
        if spec.reset_after:
            layer = _new_native_layer(spec, seed)
            Y, h_n = layer(_tensor(X), _tensor(h0))
            return _read_native(layer, spec), Y.asnumpy(), h_n.asnumpy()
        # GRUV2 is a bare kernel without an initialiser: w from nn.GRU's U(+-1/sqrt(H))
        rng, bound = np.random.default_rng(seed), 1 / np.sqrt(spec.hidden_size)
        native = {k: rng.uniform(-bound, bound, shape).astype(X.dtype)
                  for k, shape in _onednn_shapes(spec).items()}
        Y, h_n = _FusedGRU(spec)([_tensor(w) for w in native.values()], _tensor(h0), _tensor(X))
        return from_native(native, spec), Y.asnumpy(), h_n.asnumpy()


backend = MindSporeBackend()
