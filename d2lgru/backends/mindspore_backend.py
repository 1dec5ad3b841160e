"""MindSpore backend: the book's loop in MindSpore ops (``scratch``) and ``mindspore.nn.GRU``
(``native``), gradients from MindSpore's autodiff, training as one compiled graph per step.

What the installed release (2.10.0) computes, read from ``mindspore/nn/layer/rnn_cells.py``
(``_gru_cell``) and ``mindspore/nn/layer/rnns.py`` (``_RNNBase``, ``_DynamicGRUCPUGPU``): on CPU
``nn.GRU`` is a Python loop over time steps of a reset-after cell whose weight rows are stacked
in the gate order r, z, n (``weight_ih_l{k}[_reverse] [3H, I]``, ``weight_hh_l{k}[_reverse]
[3H, H]``, ``bias_ih``/``bias_hh [3H]``), with ``h' = n + z * (h - n)`` (the canonical update
gate, not a flipped one). Its initialiser draws from NumPy's global generator, and its
``construct`` accepts float32/float16 inputs only.
"""

from __future__ import annotations

import os

import numpy as np

from .. import threads as _threads

# MindSpore reads its log level when it is imported; keep its INFO/WARNING lines quiet unless
# the user asked for them. Its oneDNN kernels run on GNU OpenMP (libgomp), which reads its wait
# policy when it loads: passive, so idle workers sleep instead of spinning (d2lgru/threads.py).
os.environ.setdefault("GLOG_v", "3")
_threads.wait_passively()

import mindspore as ms  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from ..distributed import reduction  # noqa: E402
from ..model import LMParams, lm_keys, trained  # noqa: E402
from ..spec import GATE_SETS, GRUParams, GRUSpec  # noqa: E402
from . import _cudnn_layout, _layout  # noqa: E402
from ._base import Backend, ImplInfo, LMResult, Predictor, Trainer, UnsupportedError  # noqa: E402

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
MODES = ("pynative", "graph")
_MS_DTYPES = {np.dtype(np.float32): ms.float32, np.dtype(np.float64): ms.float64}


def _tensor(a) -> Tensor:
    return Tensor(np.ascontiguousarray(a))


# -- the native layout: cuDNN's (see _cudnn_layout), rows r | z | n ------------------------
def to_native(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> ``nn.GRU``'s parameters by name: ``[3H, in]`` weights, rows r | z | n."""
    return _cudnn_layout.to_native(params)


def from_native(native, spec: GRUSpec) -> GRUParams:
    """``nn.GRU``'s parameters (or their gradients) by name -> canonical."""
    return _cudnn_layout.from_native(native, spec, "mindspore.nn.GRU")


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
# weights and biases before the loop (scaling by 2 is exact in binary floating point).
def _direction(xp, Wh, bh, h, reverse: bool, reset_after: bool, has_z: bool, has_r: bool):
    """One direction over time; ``xp [T, N, 3H] = x Wx + bx``, columns z | r | h. Returns
    ``Y [T, N, H]`` (in input order also when ``reverse``) and the last state. An ablated
    gate is pinned (Z = 0, R = 1), so its parameters get zero gradients."""
    H = Wh.shape[0]
    T = xp.shape[0]
    steps = range(T - 1, -1, -1) if reverse else range(T)
    xzr = ops.unstack(xp[:, :, :2 * H] + bh[:2 * H], 0)
    Wzr = Wh[:, :2 * H]
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
            if l == 0 and ids is not None:
                xp = ops.gather(Wx, ids, 0) + bx
            else:
                T, N = inp.shape[0], inp.shape[1]
                xp = (ops.matmul(inp.reshape(T * N, -1), Wx) + bx).reshape(T, N, -1)
            Y, h = _direction(xp, Wh, bh, h0[l * num_dirs + d], d == 1, *cell)
            outs.append(Y)
            hs.append(h)
        inp = outs[0] if num_dirs == 1 else ops.concat(outs, -1)
    return inp, ops.stack(hs)


def _cell(spec: GRUSpec):
    return spec.reset_after, spec.has_update_gate, spec.has_reset_gate


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
        if impl == "native":
            self.gru = _new_native_layer(spec)
            _load_native(self.gru, model.gru)
            self.eye = _tensor(np.eye(model.vocab_size, dtype=model.dtype))
        else:  # the scratch layout's arrays, one parameter each, named after their lm_keys name
            self.gru_weights = ms.ParameterTuple([
                ms.Parameter(_tensor(a), name=k.replace(".", "_"))
                for k, a in zip(lm_keys(spec), _layout.cell_arrays(model.gru))])
        self.W_hq = ms.Parameter(_tensor(model.W_hq), name="W_hq")
        self.b_q = ms.Parameter(_tensor(model.b_q), name="b_q")

    def run(self, ids, state):
        """Time-major ids ``[T, N]`` -> ``(logits [T*N, V], h_n)``."""
        if self.impl == "native":
            out, h_n = self.gru(ops.gather(self.eye, ids, 0), state)
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
        by_key = dict(zip(self.keys(), arrays, strict=True))
        if self.impl == "native":
            gru = from_native({n: by_key[k] for n, k in _cudnn_layout.keys(self.spec).items()},
                              self.spec)
        else:
            gru = _layout.cell_params(self.spec, [by_key[k] for k in lm_keys(self.spec)[:-2]])
        return LMParams(gru, by_key["head.W_hq"], by_key["head.b_q"])


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
    return _tensor(np.zeros((spec.num_layers * spec.num_directions, N, spec.hidden_size), dtype))


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
            "MindSpore's CPU float32 tanh is off by 1e-4), MindSpore autodiff; training step "
            "in PyNative (mode graph: compiled with mindspore.jit)",
            gates=GATE_SETS, modes=MODES),
        "native": ImplInfo(
            "mindspore.nn.GRU (on CPU a loop of its reset-after cell, gates r, z, n) loaded from "
            "canonical weights; training step in PyNative (mode graph: compiled with "
            "mindspore.jit)",
            reset_before=False, dtypes=("float32",), modes=MODES,
            why_not={
                "reset_before": "mindspore.nn.GRU computes only the reset-after cell "
                                "(r * (h W_hn + b_hn), see _gru_cell in "
                                "mindspore/nn/layer/rnn_cells.py)",
                "dtype": "mindspore.nn.GRU accepts float32/float16 inputs only (its construct "
                         "rejects float64)"}),
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
        """``(fn(X, h0, *weights) -> (Y, h_n), weight tensors, layer or None)``."""
        if impl == "native":
            layer = self._layers.get(spec)
            if layer is None:  # one nn.GRU per spec (prediction calls this once per character)
                layer = self._layers[spec] = _new_native_layer(spec)
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
        layer = _new_native_layer(spec, seed)
        Y, h_n = layer(_tensor(X), _tensor(h0))
        return _read_native(layer, spec), Y.asnumpy(), h_n.asnumpy()


backend = MindSporeBackend()
