"""NumPy backend: the oracle. Forward and backward (BPTT) written by hand, float32 or float64.

The per-step work is the book's loop; the hot path uses the usual exact rewrites: the input
projection of every time step in one matmul, the three gates' matmuls in one, and a row
lookup instead of multiplying by a one-hot matrix (one-hot times W picks a row exactly).
"""

from __future__ import annotations

import numpy as np

from ..model import LMParams, lm_keys, trained
from ..spec import GATE_SETS, CellParams, GRUParams
from .. import threads as _threads
from ._base import Backend, ImplInfo, LMResult, Trainer
from ._layout import cat as _cat, uncat as _uncat


def sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def cell_forward(XP, cell: CellParams, h0, spec):
    """One direction over time. ``XP [T, N, 3H]`` is the input projection ``X W_x + b_x``.
    Returns ``Y [T, N, H]`` and what the backward pass needs. An ablated gate is pinned
    (Z = 0 or R = 1); the backward pass needs no special case, as sigmoid's derivative
    ``s (1 - s)`` is zero there."""
    reset_after = spec.reset_after
    pin_z, pin_r = not spec.has_update_gate, not spec.has_reset_gate
    T, N, H3 = XP.shape
    H = H3 // 3
    Wh = _cat(cell.W_h)
    bh = cell.b_h.reshape(-1)
    Y = np.empty((T, N, H), XP.dtype)
    Z, R, Nc, HH = (np.empty((T, N, H), XP.dtype) for _ in range(4))
    h = h0
    if reset_after:
        for t in range(T):
            hp = h @ Wh + bh
            zr = sigmoid(XP[t, :, :2 * H] + hp[:, :2 * H])
            _pin(zr, H, pin_z, pin_r)
            z, r = zr[:, :H], zr[:, H:]
            hh = hp[:, 2 * H:]
            n = np.tanh(XP[t, :, 2 * H:] + r * hh)
            h = n + z * (h - n)
            Z[t], R[t], Nc[t], HH[t], Y[t] = z, r, n, hh, h
    else:
        Wzr, Whh = Wh[:, :2 * H], cell.W_h[2]
        for t in range(T):
            zr = sigmoid(XP[t, :, :2 * H] + h @ Wzr + bh[:2 * H])
            _pin(zr, H, pin_z, pin_r)
            z, r = zr[:, :H], zr[:, H:]
            rh = r * h
            n = np.tanh(XP[t, :, 2 * H:] + rh @ Whh + bh[2 * H:])
            h = n + z * (h - n)
            Z[t], R[t], Nc[t], HH[t], Y[t] = z, r, n, rh, h
    # HH holds H W_hh + b_hh (reset-after) or R * H (reset-before)
    return Y, (h0, Z, R, Nc, HH, Y)


def _pin(zr, H, pin_z, pin_r):
    if pin_z:
        zr[:, :H] = 0.0
    if pin_r:
        zr[:, H:] = 1.0


def cell_backward(dY, dh_last, cell: CellParams, cache, reset_after: bool):
    """BPTT for one direction. Returns the gate pre-activation gradients ``G [T, N, 3H]``
    (input side), the recurrent weight and bias gradients and ``dh0``."""
    h0, Z, R, Nc, HH, Y = cache
    T, N, H = Z.shape
    Wh = _cat(cell.W_h)
    Wzr_T = np.ascontiguousarray(Wh[:, :2 * H].T)
    Wh_T = np.ascontiguousarray(Wh.T)
    Whh_T = np.ascontiguousarray(cell.W_h[2].T)
    G = np.empty((T, N, 3 * H), dY.dtype)
    GH = np.empty((T, N, 3 * H), dY.dtype) if reset_after else G
    Hprev = np.empty((T, N, H), dY.dtype)
    Hprev[0] = h0
    Hprev[1:] = Y[:-1]
    dh = dh_last
    for t in range(T - 1, -1, -1):
        dh = dh + dY[t]
        z, r, n, hp = Z[t], R[t], Nc[t], Hprev[t]
        da = dh * (1 - z) * (1 - n * n)
        dzp = dh * (hp - n) * z * (1 - z)
        g = G[t]
        g[:, :H] = dzp
        g[:, 2 * H:] = da
        if reset_after:
            g[:, H:2 * H] = da * HH[t] * r * (1 - r)
            gh = GH[t]
            gh[:, :2 * H] = g[:, :2 * H]
            gh[:, 2 * H:] = da * r
            dh = dh * z + gh @ Wh_T
        else:
            drh = da @ Whh_T
            g[:, H:2 * H] = drh * hp * r * (1 - r)
            dh = dh * z + drh * r + g[:, :2 * H] @ Wzr_T
    Hf = Hprev.reshape(-1, H)
    if reset_after:
        dWh = _uncat(Hf.T @ GH.reshape(-1, 3 * H))
    else:
        Gf = G.reshape(-1, 3 * H)
        dWh = np.empty_like(cell.W_h)
        dWh[:2] = _uncat(Hf.T @ Gf[:, :2 * H], 2)
        dWh[2] = HH.reshape(-1, H).T @ Gf[:, 2 * H:]
    dbh = GH.sum(axis=(0, 1)).reshape(3, H)
    return G, dWh, dbh, dh


def forward(params: GRUParams, X=None, h0=None, *, first_xp=None):
    """Stacked, optionally bidirectional GRU. ``first_xp`` replaces layer 0's projection
    (the language model passes a row lookup). Returns ``Y, h_n, caches``."""
    spec = params.spec
    H, D = spec.hidden_size, spec.num_directions
    inp = X
    T, N = (X if X is not None else first_xp[0]).shape[:2]
    if h0 is None:
        h0 = np.zeros(spec.state_shape(N), params.dtype)
    h_n = np.empty_like(h0)
    caches = []
    for l in range(spec.num_layers):
        if l == 0 and first_xp is not None:
            proj = first_xp
        else:
            flat = inp.reshape(T * N, -1)
            proj = [(flat @ _cat(c.W_x) + c.b_x.reshape(-1)).reshape(T, N, 3 * H)
                    for c in params.cells[l]]
        outs, layer_caches = [], []
        for d in range(D):
            cell = params.cell(l, d)
            xp = proj[d] if d == 0 else proj[d][::-1]
            Y, cache = cell_forward(xp, cell, h0[l * D + d], spec)
            h_n[l * D + d] = Y[-1]
            outs.append(Y if d == 0 else Y[::-1])
            layer_caches.append(cache)
        caches.append((inp, layer_caches))
        inp = outs[0] if D == 1 else np.concatenate(outs, axis=-1)
    return inp, h_n, caches


def backward(params: GRUParams, caches, dY, dh_n, *, need_dx=True, first_input_grad=None):
    """Backward of :func:`forward`. ``first_input_grad(G_per_direction)`` computes layer 0's
    input-weight gradients when its input was a row lookup. Returns ``dparams, dX, dh0``."""
    spec = params.spec
    H, D = spec.hidden_size, spec.num_directions
    dh0 = np.empty_like(dh_n)
    grads = [[None] * D for _ in range(spec.num_layers)]
    dinp = dY
    for l in range(spec.num_layers - 1, -1, -1):
        inp, layer_caches = caches[l]
        Gs = []
        for d in range(D):
            cell = params.cell(l, d)
            dY_d = dinp[..., d * H:(d + 1) * H]
            if d == 1:
                dY_d = dY_d[::-1]
            G, dWh, dbh, dh0[l * D + d] = cell_backward(
                dY_d, dh_n[l * D + d], cell, layer_caches[d], spec.reset_after)
            if d == 1:
                G = G[::-1]
            Gs.append(G)
            grads[l][d] = [None, dWh, G.sum(axis=(0, 1)).reshape(3, H), dbh]
        if inp is None:  # layer 0 fed by a row lookup
            for d, dWx in enumerate(first_input_grad(Gs)):
                grads[l][d][0] = dWx
            dinp = None
            continue
        T, N = inp.shape[:2]
        flat = inp.reshape(T * N, -1)
        dnext = None
        for d, G in enumerate(Gs):
            Gf = G.reshape(T * N, 3 * H)
            grads[l][d][0] = _uncat(flat.T @ Gf)
            if l > 0 or need_dx:
                dx = Gf @ _cat(params.cell(l, d).W_x).T
                dnext = dx if dnext is None else dnext + dx
        dinp = None if dnext is None else dnext.reshape(T, N, -1)
    dparams = GRUParams(spec, [[CellParams(*g) for g in row] for row in grads])
    return dparams, dinp, dh0


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def lm_step(model: LMParams, X, Y, state, *, need_grads=True):
    """Loss, gradients (an :class:`LMParams`), logits and new state of the book's model."""
    spec = model.spec
    V, H, D = model.vocab_size, spec.hidden_size, spec.num_directions
    N, T = X.shape
    ids = X.T  # time-major [T, N]
    first_xp = [(_cat(c.W_x) + c.b_x.reshape(-1))[ids] for c in model.gru.cells[0]]
    Yh, h_n, caches = forward(model.gru, None, state, first_xp=first_xp)
    caches[0] = (None, caches[0][1])
    O = Yh.reshape(T * N, D * H)
    logits = O @ model.W_hq + model.b_q
    labels = Y.T.reshape(-1)
    logp = _log_softmax(logits)
    loss = float(-logp[np.arange(T * N), labels].mean())
    if not need_grads:
        return LMResult(loss, None, logits, h_n)
    dlogits = np.exp(logp)
    dlogits[np.arange(T * N), labels] -= 1
    dlogits /= T * N
    dW_hq = O.T @ dlogits
    db_q = dlogits.sum(axis=0)
    dO = (dlogits @ model.W_hq.T).reshape(T, N, D * H)
    onehot_T = np.eye(V, dtype=model.dtype)[ids.reshape(-1)].T  # [V, T*N]

    def first_input_grad(Gs):
        return [_uncat(onehot_T @ G.reshape(T * N, 3 * H)) for G in Gs]

    dgru, _, _ = backward(model.gru, caches, dO, np.zeros_like(h_n), need_dx=False,
                          first_input_grad=first_input_grad)
    return LMResult(loss, LMParams(dgru, dW_hq, db_q), logits, h_n)


def clip_and_sgd(params: list, grads: list, lr: float, clip: float):
    """The book's ``grad_clipping`` (the global L2 norm of ``grads`` scaled down to ``clip``
    when above it) then ``sgd`` (``p -= lr * g``), in place. Returns the norm."""
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads))
    scale = lr * (clip / norm if norm > clip else 1.0)
    for p, g in zip(params, grads):
        p -= (scale * g).astype(p.dtype, copy=False)
    return norm


class NumpyTrainer(Trainer):
    def __init__(self, model: LMParams, *, impl, lr, clip, mode, device):
        self.backend, self.impl, self.mode, self.device = "numpy", impl, mode, device
        self.model = model.copy()
        self.lr, self.clip = lr, clip
        self.trained_keys = [k for k in lm_keys(model.spec) if k in trained(model.spec)]

    def _epoch_context(self):
        # a diverging run overflows; train() detects non-finite losses and weights itself
        return np.errstate(all="ignore")

    def _to_device(self, X, Y):
        return X, Y

    def _zeros_state(self, N):
        return np.zeros(self.model.spec.state_shape(N), self.model.dtype)

    def _step(self, ids, labels, state):
        res = lm_step(self.model, ids, labels, state)
        params, grads = self.model.to_arrays(), res.grads.to_arrays()
        clip_and_sgd([params[k] for k in self.trained_keys],
                     [grads[k] for k in self.trained_keys], self.lr, self.clip)
        # Held until the next step has run: freeing all of a step's arrays at once lets glibc
        # return the heap to the OS, and the next step faults it back in (measured: 5k page
        # faults a step instead of 0.7k, a third slower)
        self._last_step = res
        return res.loss, res.state

    def params(self) -> LMParams:
        return self.model.copy()


class NumpyBackend(Backend):
    name = "numpy"
    impls = {"scratch": ImplInfo(
        "the book's loop with hand-written BPTT in NumPy (the oracle)",
        gates=GATE_SETS, why_not={"native": "NumPy has no fused GRU layer"})}
    # data-parallel training runs on each framework's own engine (issue #19), never on sockets
    # or an all-reduce written by hand, and NumPy has none
    distributed_refusal = ("NumPy has no distributed engine of its own, and d2lgru trains "
                           "data-parallel only on a framework's (torch.distributed, "
                           "tf.distribute, ...); `d2lgru backends` lists the backends that do")

    # Every usable CPU, followed while training runs (retune_threads): on the idle 2-core
    # reference machine two OpenBLAS threads trained the book's config at 54-56k tokens/s
    # against 43-44k for one, but OpenBLAS's workers spin while they wait (its switch,
    # OPENBLAS_THREAD_TIMEOUT, is read when numpy loads), so two trainings with two threads
    # each kept 0.26 of it; following the load they keep 0.67-0.68 (benchmarks.contention,
    # 2026-12-02).
    retunes_threads = True

    def framework_threads(self):
        return min(_threads.blas_threads().values())

    def _gru(self, impl, params, X, h0):
        Y, h_n, _ = forward(params, X, h0)
        return Y, h_n

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        _, _, caches = forward(params, X, h0)
        return backward(params, caches, dY, dh_n)

    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        return lm_step(model, X, Y, state)

    def _make_trainer(self, model, **kw):
        return NumpyTrainer(model, **kw)


backend = NumpyBackend()
