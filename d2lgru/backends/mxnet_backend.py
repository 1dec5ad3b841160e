"""MXNet backend (legacy NDArray API, Gluon ``HybridBlock``), float32 and float64 on CPU.

* ``scratch``: the book's loop written with MXNet operators, both cell variants, any number of
  layers, bidirectional. The per-step graph is unrolled over the ``T`` steps, so a block is
  built per sequence length; the language model looks layer 0's input projection up by row
  (``Embedding`` of ``W_x + b_x``) instead of multiplying by one-hot vectors, which is exact.
* ``native``: ``mxnet.gluon.rnn.GRU`` (the fused ``RNN`` operator, oneDNN on CPU). It computes
  the cuDNN reset-after cell only, with gate rows ordered r, z, n and
  ``h' = (1 - z) * n + z * h`` (src/operator/rnn_impl.h, ``GruForwardTrainingSingleLayer``),
  so its update gate is ours and only the row order differs.

Gradients come from ``mxnet.autograd``. Training runs as one hybridized graph per sequence
length (``hybrid``, the default: static memory and engine segments of up to 1000 operators;
``hybrid-dynamic``: a plain ``hybridize()``) or operator by operator (``eager``).

Two MXNet 1.9.1 bugs shape this file, and the tests hold every mode to the NumPy oracle:

* ``hybridize(static_alloc=True)`` returns zero or uninitialised gradients when a graph input
  that needs no gradient is added directly to one that does (``elemwise_add``'s cloned
  gradient, apache/mxnet#20293). Our graphs never add the state or the ids directly.
* The CPU fused GRU backward (``GruBackward``, src/operator/rnn_impl.h) passes the input's
  gradient request to every layer, so with two or more layers and an input that needs no
  gradient (the one-hot ids) the lower layers read a stale buffer: see :func:`_onehot_table`.
  oneDNN's float32 kernel is unaffected; float64 always takes this path.

Threads: MXNet sizes its operators' OpenMP teams once, when ``libmxnet`` loads
(``engine::OpenMP``: ``$MXNET_OMP_MAX_THREADS``, else ``$OMP_NUM_THREADS``, else one thread per
two logical CPUs on x86); ``MXSetNumOMPThreads`` only changes the calling thread's own setting.
So the count is resolved (d2lgru/threads.py; MXNet's own default as the preference) and given
to MXNet through ``MXNET_OMP_MAX_THREADS`` right before the import, with passive OpenMP waiting;
``OMP_NUM_THREADS=2`` with spinning barriers made training ~20x slower while other jobs shared
the 2-vCPU reference machine. A later ``set_threads`` to another count is refused. The only
noise, the numpy 1.23 deprecation warnings raised while ``mxnet`` imports, is silenced there.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np

from .. import threads as _threads


def _default_omp_threads(cpus: int) -> int:
    """MXNet's own default on x86: one OpenMP thread per two logical CPUs."""
    return max(1, cpus // 2)


_ADDED_ENV = {}
if "mxnet" not in sys.modules:
    _ADDED_ENV = _threads.wait_passively({"MXNET_OMP_MAX_THREADS": str(
        _threads.resolve_threads(preference=_default_omp_threads)[0])})
#: the operator threads this process's MXNet runs with (fixed when it loaded)
_LOADED_THREADS = int(os.environ.get("MXNET_OMP_MAX_THREADS", "0") or 0) or None

# MXNet 1.9.1 imports numpy names that numpy 1.23 deprecates; keep that out of our users' logs.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet as mx
    from mxnet import autograd, gluon, nd
# its libgomp has read the wait policy; MXNET_OMP_MAX_THREADS stays (framework_threads reads it)
_threads.take_back(_ADDED_ENV, keep=("MXNET_OMP_MAX_THREADS",))

from ..distributed import WorldBrokenError
from ..model import LMParams, lm_keys, one_hot, trained
from ..spec import GATE_SETS, GRUParams, GRUSpec
from . import _cudnn_layout, _layout
from ._base import Backend, ImplInfo, LMResult, Predictor, Trainer, UnsupportedError

_BULK_NODES = 1000


# -- the native layer's layout: cuDNN's (see _cudnn_layout), named as Gluon names it -------
def _gluon_names(layer: int, direction: int) -> dict[str, str]:
    """Canonical array -> ``mxnet.gluon.rnn.GRU`` parameter name for one cell."""
    pre = f"{'lr'[direction]}{layer}_"
    return {"W_x": pre + "i2h_weight", "W_h": pre + "h2h_weight",
            "b_x": pre + "i2h_bias", "b_h": pre + "h2h_bias"}


def to_native(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> ``mxnet.gluon.rnn.GRU`` parameters: ``{l|r}{layer}_i2h_weight [3H, I]``,
    ``_h2h_weight [3H, H]``, ``_i2h_bias [3H]``, ``_h2h_bias [3H]``, row blocks r, z, n."""
    return _cudnn_layout.to_native(params, _gluon_names)


def from_native(native, spec: GRUSpec) -> GRUParams:
    """``mxnet.gluon.rnn.GRU`` parameters (as :func:`to_native` names them) -> canonical.
    Gradients with respect to those parameters convert the same way."""
    return _cudnn_layout.from_native(native, spec, "mxnet.gluon.rnn.GRU", _gluon_names)


def _context(device: str):
    return mx.gpu(0) if device == "gpu" else mx.cpu()


def _new_gluon_gru(spec: GRUSpec, dtype, ctx):
    layer = gluon.rnn.GRU(spec.hidden_size, spec.num_layers, layout="TNC",
                          bidirectional=spec.bidirectional, input_size=spec.input_size,
                          dtype=np.dtype(dtype).name)
    layer.initialize(mx.init.Zero(), ctx=ctx)  # loaded right after
    return layer


def _load_gluon_gru(layer, params: GRUParams):
    for name, a in to_native(params).items():
        getattr(layer, name).set_data(nd.array(a, dtype=a.dtype))


def _read_gluon_gru(layer, spec: GRUSpec, grad=False) -> GRUParams:
    read = (lambda p: p.grad()) if grad else (lambda p: p.data())
    return from_native({n: read(getattr(layer, n)).asnumpy()
                        for n in _cudnn_layout.shapes(spec, _gluon_names)}, spec)


# -- the scratch implementation's own layout: FullyConnected weights [3H, in], gates z | r | h
def _scratch_arrays(params: GRUParams) -> list[np.ndarray]:
    """Per cell (``h_n`` order): ``W_x [3H, I]``, ``W_h [3H, H]``, ``b_x [3H]``, ``b_h [3H]``."""
    return _layout.cell_arrays(params, rows=True)


def _scratch_params(arrays, spec: GRUSpec) -> GRUParams:
    return _layout.cell_params(spec, arrays, rows=True)


def _unstack(F, x, n):
    """``x``'s first axis as a list of ``n`` arrays (``split`` returns a bare array for 1)."""
    if n == 1:
        return [F.squeeze(x, axis=0)]
    parts = F.split(x, num_outputs=n, axis=0, squeeze_axis=True)
    return [parts[i] for i in range(n)]


def _scratch_direction(F, xzr, xn, h, Wh, bh, spec: GRUSpec):
    """The book's loop for one direction. ``xzr[t]`` and ``xn[t]`` are time step ``t``'s input
    projections (``X_t W_x + b_x``) for the z|r gates and the candidate. An ablated gate is
    pinned (Z = 0: ``H_t = H~``; R = 1), so its parameters get zero gradients.

    Measured on the reference machine (book config): ``FullyConnected`` with its bias beats
    ``dot`` and beats folding ``b_h`` into the input projection (a broadcast whose backward is
    slow), ``Activation`` (oneDNN) beats ``sigmoid``/``tanh`` by ~12%. Elementwise operators
    are spelled out: NDArray's ``+`` and ``*`` broadcast, which is slower eagerly."""
    add, sub, mul = F.elemwise_add, F.elemwise_sub, F.elemwise_mul
    H, use_z, use_r = spec.hidden_size, spec.has_update_gate, spec.has_reset_gate

    def sigmoid(x):
        return F.Activation(x, act_type="sigmoid")

    def tanh(x):
        return F.Activation(x, act_type="tanh")

    def halves(zr):  # two slices beat one two-way split (SliceChannel) by ~12% end to end
        return (F.slice_axis(zr, axis=1, begin=0, end=H),
                F.slice_axis(zr, axis=1, begin=H, end=None))

    ys = []
    if spec.reset_after:
        for xzr_t, xn_t in zip(xzr, xn):
            hp = F.FullyConnected(h, Wh, bh, num_hidden=3 * H)
            zr = sigmoid(add(xzr_t, F.slice_axis(hp, axis=1, begin=0, end=2 * H)))
            z, r = halves(zr)
            hn = F.slice_axis(hp, axis=1, begin=2 * H, end=None)
            n = tanh(add(xn_t, mul(r, hn) if use_r else hn))
            h = add(n, mul(z, sub(h, n))) if use_z else n
            ys.append(h)
    else:
        Wzr = F.slice_axis(Wh, axis=0, begin=0, end=2 * H)
        bzr = F.slice_axis(bh, axis=0, begin=0, end=2 * H)
        Whh = F.slice_axis(Wh, axis=0, begin=2 * H, end=None)
        bhh = F.slice_axis(bh, axis=0, begin=2 * H, end=None)
        for xzr_t, xn_t in zip(xzr, xn):
            zr = sigmoid(add(xzr_t, F.FullyConnected(h, Wzr, bzr, num_hidden=2 * H)))
            z, r = halves(zr)
            n = tanh(add(xn_t, F.FullyConnected(mul(r, h) if use_r else h, Whh, bhh,
                                                num_hidden=H)))
            h = add(n, mul(z, sub(h, n))) if use_z else n
            ys.append(h)
    return ys


def _scratch_gru(F, spec: GRUSpec, T, h0, weights, X=None, ids=None):
    """Stacked, optionally bidirectional scratch GRU on ``X [T, N, I]`` or, for the language
    model, on token ids ``[T, N]`` (layer 0's projection is then a row lookup)."""
    H, D = spec.hidden_size, spec.num_directions
    hs = _unstack(F, h0, spec.num_layers * D)
    inp, h_n = X, []
    for l in range(spec.num_layers):
        outs = []
        for d in range(D):
            k = l * D + d
            Wx, Wh, bx, bh = weights[4 * k:4 * k + 4]
            if l == 0 and ids is not None:
                table = F.broadcast_add(F.transpose(Wx), F.reshape(bx, shape=(1, -1)))
                xp = F.Embedding(ids, table, input_dim=spec.input_size, output_dim=3 * H)
            else:
                xp = F.FullyConnected(inp, Wx, bx, num_hidden=3 * H, flatten=False)
            xzr = _unstack(F, F.slice_axis(xp, axis=2, begin=0, end=2 * H), T)
            xn = _unstack(F, F.slice_axis(xp, axis=2, begin=2 * H, end=None), T)
            if d == 1:
                xzr, xn = xzr[::-1], xn[::-1]
            ys = _scratch_direction(F, xzr, xn, hs[k], Wh, bh, spec)
            h_n.append(ys[-1])
            outs.append(F.stack(*(ys if d == 0 else ys[::-1]), axis=0))
        inp = outs[0] if D == 1 else F.concat(*outs, dim=2)
    return inp, F.stack(*h_n, axis=0)


def _lm_head(F, spec: GRUSpec, Y, labels, W_q, b_q):
    """Dense head on ``Y [T, N, D*H]`` (rows time-major) and the mean cross-entropy."""
    logits = F.FullyConnected(F.reshape(Y, shape=(-3, 0)), W_q, b_q, num_hidden=spec.input_size)
    nll = -F.pick(F.log_softmax(logits, axis=1), F.reshape(labels, shape=(-1,)), axis=1)
    return F.mean(nll), logits


class _ScratchLM(gluon.HybridBlock):
    """The book's model with the scratch GRU unrolled over ``T`` steps. Weights arrive as inputs
    (the scratch layout, then the head ``W_q [V, D*H]`` and ``b_q [V]``)."""

    def __init__(self, spec: GRUSpec, T: int, with_logits: bool):
        super().__init__()
        self._spec, self._T, self._with_logits = spec, T, with_logits

    def hybrid_forward(self, F, ids, labels, h0, *weights):
        Y, h_n = _scratch_gru(F, self._spec, self._T, h0, weights[:-2], ids=ids)
        loss, logits = _lm_head(F, self._spec, Y, labels, *weights[-2:])
        return (loss, h_n, logits) if self._with_logits else (loss, h_n)


class _NativeLM(gluon.HybridBlock):
    """The book's model around ``mxnet.gluon.rnn.GRU``: one-hot ids -> fused GRU -> dense head.

    With two or more layers the one-hot input is looked up in an identity matrix that is a
    graph input with a gradient attached (see :func:`_onehot_table`)."""

    def __init__(self, spec: GRUSpec, dtype, with_logits: bool):
        super().__init__()
        self._spec, self._dtype, self._with_logits = spec, np.dtype(dtype).name, with_logits
        V = spec.input_size
        with self.name_scope():
            self.rnn = gluon.rnn.GRU(spec.hidden_size, spec.num_layers, layout="TNC",
                                     bidirectional=spec.bidirectional, input_size=V,
                                     dtype=self._dtype)
            self.W_q = self.params.get("W_q", shape=(V, spec.output_size), dtype=self._dtype)
            self.b_q = self.params.get("b_q", shape=(V,), dtype=self._dtype)

    def hybrid_forward(self, F, ids, labels, h0, *table, W_q, b_q):
        V = self._spec.input_size
        if table:
            x = F.Embedding(ids, table[0], input_dim=V, output_dim=V)
        else:
            x = F.one_hot(ids, V, dtype=self._dtype)
        Y, (h_n,) = self.rnn(x, [h0])
        loss, logits = _lm_head(F, self._spec, Y, labels, W_q, b_q)
        return (loss, h_n, logits) if self._with_logits else (loss, h_n)


def _native_lm(model: LMParams, ctx, with_logits: bool) -> _NativeLM:
    net = _NativeLM(model.spec, model.dtype, with_logits)
    net.initialize(mx.init.Zero(), ctx=ctx)  # loaded right after
    _load_gluon_gru(net.rnn, model.gru)
    net.W_q.set_data(nd.array(model.W_hq.T, dtype=model.dtype))
    net.b_q.set_data(nd.array(model.b_q, dtype=model.dtype))
    return net


def _onehot_table(spec: GRUSpec, dtype, ctx) -> list:
    """``[]``, or for two or more layers ``[identity [V, V]]`` with a gradient attached: MXNet
    1.9.1's CPU GRU backward (``GruBackward`` in src/operator/rnn_impl.h) hands the input's
    gradient request to every layer, so when the input needs none (one-hot ids) the layers
    below the top one are fed a stale gradient buffer. Needing ``dX`` keeps it honest."""
    if spec.num_layers == 1:
        return []
    table = nd.array(np.eye(spec.input_size), ctx=ctx, dtype=dtype)
    table.attach_grad()
    return [table]


# -- the trainer ----------------------------------------------------------------------------
def clip_and_sgd(params, grads, lr: float, clip: float):
    """The book's ``grad_clipping`` (the global L2 norm of ``grads`` scaled down to ``clip``
    when above it) then ``sgd`` (``p -= lr * g``), in place, on the device: no sync."""
    norm = nd.sqrt(nd.add_n(*[nd.sum(nd.square(g)) for g in grads]))
    scale = nd.minimum(clip / norm, 1.0) * lr
    for w, g in zip(params, grads):
        w -= nd.broadcast_mul(g, scale)


def _hybridize(block, mode):
    """``hybrid``: one CachedOp with static memory, run in engine segments of up to
    ``_BULK_NODES`` operators (the default, 15, pays the engine's per-segment cost dozens of
    times per unrolled step); ``hybrid-dynamic``: a CachedOp that plans memory per call;
    ``eager``: operator by operator."""
    if mode == "hybrid":
        block.hybridize(static_alloc=True, static_shape=True, forward_bulk_size=_BULK_NODES,
                        backward_bulk_size=_BULK_NODES)
    elif mode == "hybrid-dynamic":
        block.hybridize()


_KV = {"store": None, "keys": {}}  # this process's KVStore and its keys by (shape, dtype)


def _kv_sum(flat):
    """``flat`` (1-D) summed over the workers through the KVStore: one key per shape and dtype,
    initialised by every worker in the same order (the first use of a shape is collective)."""
    kv = _KV["store"]
    key = _KV["keys"].get((flat.shape, flat.dtype))
    if key is None:
        key = _KV["keys"][(flat.shape, flat.dtype)] = len(_KV["keys"])
        kv.init(key, nd.zeros(flat.shape, ctx=flat.context, dtype=flat.dtype))
    out = nd.empty(flat.shape, ctx=flat.context, dtype=flat.dtype)
    try:
        kv.push(key, flat)
        kv.pull(key, out=out)
        out.wait_to_read()
    except mx.base.MXNetError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WorldBrokenError(f"MXNet's KVStore push/pull failed, so a worker or its server "
                               f"has gone ({first[:200]})") from exc
    return out


class MXNetTrainer(Trainer):
    def __init__(self, model: LMParams, *, impl, lr, clip, mode, device):
        self.backend, self.impl, self.mode, self.device = "mxnet", impl, mode, device
        self.lr, self.clip = lr, clip
        self._spec, self._dtype = model.spec, model.dtype
        self._ctx = _context(device)
        if impl == "native":
            net = _native_lm(model, self._ctx, with_logits=False)
            _hybridize(net, mode)
            self._native = net
            self._inputs = _onehot_table(self._spec, self._dtype, self._ctx)
            self._params = [p.data(self._ctx) for p in net.collect_params().values()]
            self._grads = [p.grad(self._ctx) for p in net.collect_params().values()]
        else:
            arrays = _scratch_arrays(model.gru) + [model.W_hq.T, model.b_q]
            self._inputs = [nd.array(a, ctx=self._ctx, dtype=self._dtype) for a in arrays]
            keep = trained(model.spec)  # a reset-before cell's b_h stays put
            self._params = [w for w, k in zip(self._inputs, lm_keys(model.spec), strict=True)
                            if k in keep]
            for w in self._params:
                w.attach_grad()
            self._grads = [w.grad for w in self._params]
            self._blocks = {}

    def _net(self, T):
        if self.impl == "native":
            return self._native
        if T not in self._blocks:
            block = _ScratchLM(self._spec, T, with_logits=False)
            _hybridize(block, self.mode)
            self._blocks[T] = block
        return self._blocks[T]

    def _to_device(self, X, Y):
        return (nd.array(X.T, ctx=self._ctx, dtype=self._dtype),
                nd.array(Y.T, ctx=self._ctx, dtype=self._dtype))

    def _zeros_state(self, N):
        return _zeros_state(self._spec, N, self._ctx, self._dtype)

    def _step(self, ids, labels, state):
        net = self._net(ids.shape[0])
        with autograd.record():
            loss, h_n = net(ids, labels, state, *self._inputs)
        loss.backward()
        clip_and_sgd(self._params, self._average_gradients(self._grads), self.lr, self.clip)
        return loss, h_n.detach()  # not in place in MXNet: the carried state is the new array

    def _fetch_losses(self, handles):
        return nd.concat(*handles, dim=0).asnumpy()

    # -- data-parallel: a KVStore dist_sync (ps-lite scheduler and server) ----------------
    def _all_reduce(self, tensors, *, average):
        # one key for the whole gradient: pushed by every worker, the server stores their sum
        # (no optimizer is set on it), which every worker pulls
        flat = nd.concat(*[t.reshape(-1) for t in tensors], dim=0)
        summed = _kv_sum(flat)
        if average:
            summed /= self.world.size
        out, at = [], 0
        for t in tensors:
            out.append(summed[at:at + t.size].reshape(t.shape))
            at += t.size
        return out

    def _all_reduce_host(self, values):
        summed = _kv_sum(nd.array(np.ascontiguousarray(values, np.float32), ctx=mx.cpu()))
        return (summed / self.world.size).asnumpy()

    def params(self) -> LMParams:
        if self.impl == "native":
            net = self._native
            gru = _read_gluon_gru(net.rnn, self._spec)
            W_q, b_q = net.W_q.data(self._ctx), net.b_q.data(self._ctx)
        else:
            arrays = [w.asnumpy() for w in self._inputs]
            gru = _scratch_params(arrays[:-2], self._spec)
            W_q, b_q = self._inputs[-2:]
        return LMParams(gru, np.ascontiguousarray(W_q.asnumpy().T), b_q.asnumpy().copy())


def _zeros_state(spec: GRUSpec, N: int, ctx, dtype):
    return nd.zeros(spec.state_shape(N), ctx=ctx, dtype=dtype)


class MXNetPredictor(Predictor):
    """The GRU loaded once (as :meth:`MXNetBackend._gru` loads it per call) and run eagerly on
    the one-hot input; the head as one ``FullyConnected``."""

    def __init__(self, backend, model: LMParams, impl: str, ctx):
        self._spec, self._dtype, self._ctx, self._V = model.spec, model.dtype, ctx, model.vocab_size
        self._run, _ = backend._prepare(impl, model.gru, need_grads=False, ctx=ctx)
        self._W_q = nd.array(model.W_hq.T, ctx=ctx, dtype=model.dtype)
        self._b_q = nd.array(model.b_q, ctx=ctx, dtype=model.dtype)

    def step(self, ids, state=None):
        if state is None:
            state = _zeros_state(self._spec, ids.shape[0], self._ctx, self._dtype)
        X = nd.array(one_hot(ids, self._V, self._dtype), ctx=self._ctx, dtype=self._dtype)
        Y, h_n = self._run(X, state)
        logits = nd.FullyConnected(Y[-1], self._W_q, self._b_q, num_hidden=self._V)
        return logits.asnumpy(), h_n


# -- the backend ----------------------------------------------------------------------------
#: execution modes, the default (fastest correct, measured on the reference machine) first
_MODES = ("hybrid", "hybrid-dynamic", "eager")


class MXNetBackend(Backend):
    name = "mxnet"
    devices = ("cpu", "gpu")
    impls = {
        "scratch": ImplInfo(
            "the book's loop written with MXNet operators (FullyConnected, Activation, "
            "elementwise), unrolled into one hybridized Gluon graph",
            gates=GATE_SETS, modes=_MODES),
        "native": ImplInfo(
            "mxnet.gluon.rnn.GRU, the fused RNN operator (oneDNN on CPU), in a hybridized "
            "Gluon block", reset_before=False, modes=_MODES,
            why_not={"reset_before": "mxnet.gluon.rnn.GRU (the fused RNN operator) computes only "
                                     "the cuDNN reset-after cell; use impl 'scratch' for the "
                                     "book's reset-before cell",
                     "gates": "the fused RNN operator computes the full GRU only; use impl "
                              "'scratch' for gate ablations and the plain RNN"}),
    }

    def _init_world(self, world, device):
        """Join the KVStore ``dist_sync`` that d2lgru's spawner started (scheduler and server
        through the ``DMLC_*`` environment, see :func:`d2lgru.distributed.worker_env`). Its
        own worker numbering may differ from ``world.rank``, which picks the rows: a sum does
        not care."""
        if _KV["store"] is not None:
            return
        if os.environ.get("DMLC_ROLE") != "worker":
            raise UnsupportedError(
                "MXNet's workers meet at a KVStore scheduler and server: start them with "
                "d2lgru train --nproc N, or set DMLC_ROLE=worker, DMLC_PS_ROOT_URI, "
                "DMLC_PS_ROOT_PORT, DMLC_NUM_SERVER and DMLC_NUM_WORKER with those running")
        kv = mx.kv.create("dist_sync")
        if kv.num_workers != world.size:
            raise UnsupportedError(f"the KVStore has {kv.num_workers} workers, not "
                                   f"{world.size}")
        _KV["store"] = kv

    def _thread_preference(self, cpus):
        return _LOADED_THREADS or _default_omp_threads(cpus)

    waits_passively = True

    def framework_threads(self):
        # MXNet has no getter; libmxnet reads this variable once, when it loads
        return int(os.environ["MXNET_OMP_MAX_THREADS"])

    def _set_threads(self, n):
        super()._set_threads(n)  # NumPy's OpenBLAS and the one MXNet ships
        return _LOADED_THREADS

    def _why_threads_fixed(self, fixed):
        return (f"MXNet fixes its operator threads when it loads ($MXNET_OMP_MAX_THREADS), and "
                f"this process's MXNet runs {fixed}; start a new process with "
                f"D2LGRU_THREADS set to the count you want")

    # -- GRU forward and its vector-Jacobian product -----------------------------------
    def _prepare(self, impl, params, need_grads, ctx=None):
        """Load ``params`` (outside any recording): ``(run(X, h0) -> (Y, h_n), read_grads)``."""
        spec, dt, ctx = params.spec, params.dtype, ctx or mx.cpu()
        if impl == "native":
            layer = _new_gluon_gru(spec, dt, ctx)
            _load_gluon_gru(layer, params)

            def run_native(X, h0):
                Y, (h_n,) = layer(X, [h0])
                return Y, h_n
            return run_native, lambda: _read_gluon_gru(layer, spec, grad=True)
        weights = [nd.array(a, ctx=ctx, dtype=dt) for a in _scratch_arrays(params)]
        if need_grads:
            for w in weights:
                w.attach_grad()
        return (lambda X, h0: _scratch_gru(nd, spec, X.shape[0], h0, weights, X=X),
                lambda: _scratch_params([w.grad.asnumpy() for w in weights], spec))

    def _gru(self, impl, params, X, h0):
        dt = params.dtype
        run, _ = self._prepare(impl, params, need_grads=False)
        Y, h_n = run(nd.array(X, dtype=dt), nd.array(h0, dtype=dt))
        return Y.asnumpy(), h_n.asnumpy()

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        dt = params.dtype
        run, read_grads = self._prepare(impl, params, need_grads=True)
        X_nd, h0_nd = nd.array(X, dtype=dt), nd.array(h0, dtype=dt)
        dY_nd, dh_n_nd = nd.array(dY, dtype=dt), nd.array(dh_n, dtype=dt)
        X_nd.attach_grad()
        h0_nd.attach_grad()
        with autograd.record():
            Y, h_n = run(X_nd, h0_nd)
            s = nd.sum(Y * dY_nd) + nd.sum(h_n * dh_n_nd)
        s.backward()
        return read_grads(), X_nd.grad.asnumpy(), h0_nd.grad.asnumpy()

    # -- the language model -------------------------------------------------------------
    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        spec, dt = model.spec, model.dtype
        ids, labels = nd.array(X.T, dtype=dt), nd.array(Y.T, dtype=dt)
        h0 = nd.array(state, dtype=dt)
        if impl == "native":
            net = _native_lm(model, mx.cpu(), with_logits=True)
            weights = _onehot_table(spec, dt, mx.cpu())
        else:
            net = _ScratchLM(spec, X.shape[1], with_logits=True)
            weights = [nd.array(a, dtype=dt)
                       for a in _scratch_arrays(model.gru) + [model.W_hq.T, model.b_q]]
            for w in weights:
                w.attach_grad()
        with autograd.record():
            loss, h_n, logits = net(ids, labels, h0, *weights)
        loss.backward()
        if impl == "native":
            gru = _read_gluon_gru(net.rnn, spec, grad=True)
            dW_q, db_q = net.W_q.grad(), net.b_q.grad()
        else:
            gru = _scratch_params([w.grad.asnumpy() for w in weights[:-2]], spec)
            dW_q, db_q = weights[-2].grad, weights[-1].grad
        grads = LMParams(gru, np.ascontiguousarray(dW_q.asnumpy().T), db_q.asnumpy())
        return LMResult(float(loss.asscalar()), grads, logits.asnumpy(), h_n.asnumpy())

    def _device_absent(self, device):
        if mx.context.num_gpus() > 0:
            return None
        return ("MXNet sees no GPU (mx.context.num_gpus() == 0; the PyPI mxnet wheel is "
                "CPU-only, GPU builds are the mxnet-cuXXX packages)")

    def _make_trainer(self, model, *, impl, lr, clip, mode, device):
        return MXNetTrainer(model, impl=impl, lr=lr, clip=clip, mode=mode, device=device)

    def _make_predictor(self, model, *, impl, device):
        return MXNetPredictor(self, model, impl, _context(device))

    # -- the native layer's layout -------------------------------------------------------

    def _native_reference(self, spec, X, h0, seed):
        dt = X.dtype
        mx.random.seed(seed)
        # the framework's own initializer, biases included, so the bias layout is exercised too
        init = mx.init.Uniform(1.0 / np.sqrt(spec.hidden_size))
        layer = gluon.rnn.GRU(spec.hidden_size, spec.num_layers, layout="TNC",
                              bidirectional=spec.bidirectional, input_size=spec.input_size,
                              i2h_bias_initializer=init, h2h_bias_initializer=init,
                              dtype=np.dtype(dt).name)
        layer.initialize(init, ctx=mx.cpu())
        Y, (h_n,) = layer(nd.array(X, dtype=dt), [nd.array(h0, dtype=dt)])
        return _read_gluon_gru(layer, spec), Y.asnumpy(), h_n.asnumpy()


backend = MXNetBackend()
