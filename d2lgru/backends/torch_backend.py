"""PyTorch backend: the book's loop in torch operations (``scratch``) and ``torch.nn.GRU``
(``native``), both differentiated by torch's autograd and trained as torch tensors.

``torch.nn.GRU`` stacks its gates in the order r, z, n (``weight_ih_l{k}[_reverse]`` ``[3H, I]``,
``weight_hh`` ``[3H, H]``, ``bias_ih``, ``bias_hh`` ``[3H]``; column vectors, ``x W^T``) and
computes only the reset-after cell ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` with
``h' = (h - n) * z + n`` -- the canonical update gate, not a flipped one (read in
``torch/_decomp/decompositions.py::gru_cell``, the Python twin of ATen's ``GRUCell``).
:func:`to_native` and :func:`from_native` are the only code that knows this layout.

The scratch hot path uses exact rewrites of the book's loop: one matmul projects every time
step's input, the gates share one matmul, a row lookup replaces the one-hot matmul, and
``torch.lerp(n, h, z)`` is ``n + z * (h - n)``. The book's cell with both gates has its backward
written out (:class:`_ResetBeforeLoop`, a ``torch.autograd.Function``), as in the JAX and
TensorFlow adapters; every other cell is differentiated op by op. Eager is the only execution
mode: it is the fastest at the book's config (see ``_WHY_EAGER``).
"""

from __future__ import annotations

import atexit
import os
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..distributed import WorldBrokenError, already_joined
from ..model import LMParams, lm_keys, trained
from ..spec import GATE_SETS, GRUParams, GRUSpec
from . import _cudnn_layout, _layout
from ._base import (Backend, ImplInfo, LMResult, Predictor, Trainer,
                    UnsupportedError)


# -- the native layout: cuDNN's (see _cudnn_layout), named as named_parameters() names it --
def to_native(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> ``torch.nn.GRU``'s ``named_parameters()`` names and layout."""
    return _cudnn_layout.to_native(params)


def from_native(native: dict, spec: GRUSpec) -> GRUParams:
    """``torch.nn.GRU``'s parameters (or their gradients; tensors or arrays), keyed as
    :func:`to_native` keys them -> canonical :class:`GRUParams`."""
    arrays = {k: a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
              for k, a in native.items()}
    return _cudnn_layout.from_native(arrays, spec, "torch.nn.GRU")


def _native_gru(spec: GRUSpec, native: dict, dtype, device) -> torch.nn.GRU:
    """A ``torch.nn.GRU`` holding ``native``'s weights (built on the meta device first, so
    the default initialiser neither runs nor draws from torch's global generator)."""
    gru = torch.nn.GRU(spec.input_size, spec.hidden_size, spec.num_layers,
                       bidirectional=spec.bidirectional, dtype=dtype, device="meta")
    gru = gru.to_empty(device=device)
    with torch.no_grad():
        for name, p in gru.named_parameters():
            p.copy_(torch.from_numpy(native[name]))
    gru.flatten_parameters()
    return gru


# -- the scratch loop ----------------------------------------------------------------------
def _reset_before_loop(XP: torch.Tensor, h: torch.Tensor, Wh: torch.Tensor,
                       pin: Optional[Tuple[torch.Tensor, torch.Tensor]]):
    """One direction of the book's cell. ``XP [T, N, 3H]`` already holds ``x W_x + b_x + b_h``."""
    H = h.shape[1]
    Wzr, Whh = Wh[:, :2 * H], Wh[:, 2 * H:]
    xzr, xn = XP[:, :, :2 * H].unbind(0), XP[:, :, 2 * H:].unbind(0)
    outs: List[torch.Tensor] = []
    for t in range(len(xzr)):
        zr = torch.sigmoid(torch.addmm(xzr[t], h, Wzr))
        if pin is not None:
            zr = torch.addcmul(pin[1], zr, pin[0])
        z, r = zr[:, :H], zr[:, H:]
        n = torch.tanh(torch.addmm(xn[t], r * h, Whh))
        h = torch.lerp(n, h, z)
        outs.append(h)
    return torch.stack(outs), h


class _ResetBeforeLoop(torch.autograd.Function):
    """The book's cell with both gates, its backward written out: the reverse loop carries only
    the state's gradient (two products a step) and the recurrent weights' gradients are one
    product each over all ``T*N`` rows afterwards, where autograd's own backward of the loop
    multiplies ``[H, N] @ [N, 3H]`` at every step (torch's slowest shape here: 60 GFLOP/s against
    157 for a large product, see ``benchmarks.limits``). The same backward as the JAX and
    TensorFlow adapters'. ``forward(XP, h0, Wzr, Whh) -> (Y [T, N, H], last)``; ``XP [T, N, 3H]``
    holds every bias and the input projection. At the book's config it trained 1.35x as fast as
    the op-by-op loop (``benchmarks.ab --backends torch``, default threads, 2026-12-02)."""

    @staticmethod
    def forward(ctx, XP, h0, Wzr, Whh):
        T, N, H = XP.shape[0], h0.shape[0], h0.shape[1]
        Y, ZR, NN, RH = (XP.new_empty(T, N, k * H) for k in (1, 2, 1, 1))
        h = h0
        for t in range(T):
            zr = torch.sigmoid(torch.addmm(XP[t, :, :2 * H], h, Wzr), out=ZR[t])
            rh = torch.mul(zr[:, H:], h, out=RH[t])
            n = torch.tanh(torch.addmm(XP[t, :, 2 * H:], rh, Whh), out=NN[t])
            h = torch.lerp(n, h, zr[:, :H], out=Y[t])
        ctx.save_for_backward(h0, Y, ZR, NN, RH, Wzr, Whh)
        return Y, h.clone()  # not a view of Y: autograd keeps the two outputs apart

    @staticmethod
    def backward(ctx, dY, dlast):
        h0, Y, ZR, NN, RH, Wzr, Whh = ctx.saved_tensors
        T, N, H = Y.shape
        DXP = Y.new_empty(T, N, 3 * H)  # [da_z | da_r | da_n] per step
        WzrT, WhhT = Wzr.t(), Whh.t()
        dh = dlast
        for t in range(T - 1, -1, -1):
            h = Y[t - 1] if t else h0
            zr, n = ZR[t], NN[t]
            z, r = zr[:, :H], zr[:, H:]
            g = dh + dY[t]
            gz = g * z
            # h' = n + z (h - n), n = tanh(a_n): da_n = (g - g z)(1 - n^2)
            da_n = torch.mul(g - gz, 1 - n * n, out=DXP[t, :, 2 * H:])
            ds = torch.mm(da_n, WhhT)  # s = r * h
            dzr = torch.cat([g * (h - n), ds * h], 1)
            da_zr = torch.mul(dzr, zr - zr * zr, out=DXP[t, :, :2 * H])
            dh = torch.addmm(torch.addcmul(gz, ds, r), da_zr, WzrT)
        rows = T * N
        DZR, DN = DXP[..., :2 * H].reshape(rows, 2 * H), DXP[..., 2 * H:].reshape(rows, H)
        dWzr = torch.mm(h0.t(), DZR[:N]) + torch.mm(Y[:-1].reshape(rows - N, H).t(), DZR[N:])
        dWhh = torch.mm(RH.reshape(rows, H).t(), DN)
        return DXP, dh, dWzr, dWhh


def _reset_after_loop(XP: torch.Tensor, h: torch.Tensor, Wh: torch.Tensor, bh: torch.Tensor,
                      pin: Optional[Tuple[torch.Tensor, torch.Tensor]]):
    """One direction of the cuDNN cell. ``XP [T, N, 3H]`` holds ``x W_x + b_x``."""
    H = h.shape[1]
    xzr, xn = XP[:, :, :2 * H].unbind(0), XP[:, :, 2 * H:].unbind(0)
    outs: List[torch.Tensor] = []
    for t in range(len(xzr)):
        hp = torch.addmm(bh, h, Wh)
        zr = torch.sigmoid(xzr[t] + hp[:, :2 * H])
        if pin is not None:
            zr = torch.addcmul(pin[1], zr, pin[0])
        z, r = zr[:, :H], zr[:, H:]
        n = torch.tanh(torch.addcmul(xn[t], r, hp[:, 2 * H:]))
        h = torch.lerp(n, h, z)
        outs.append(h)
    return torch.stack(outs), h


def _gate_pin(spec: GRUSpec, like: torch.Tensor):
    """For an ablated gate, ``(keep, value)`` with ``zr -> value + zr * keep`` pinning Z to 0 or
    R to 1 exactly (and giving its parameters zero gradients); None for the full GRU."""
    if spec.gates == "both":
        return None
    H = spec.hidden_size
    keep = torch.ones(2 * H, dtype=like.dtype, device=like.device)
    value = torch.zeros(2 * H, dtype=like.dtype, device=like.device)
    if not spec.has_update_gate:
        keep[:H] = 0.0
    if not spec.has_reset_gate:
        keep[H:], value[H:] = 0.0, 1.0
    return keep, value


class _ScratchGRU:
    """The stacked, optionally bidirectional scratch GRU over per-cell tensors
    ``(W_x [I, 3H], W_h [H, 3H], b_x [3H], b_h [3H])``, columns in the canonical gate order."""

    def __init__(self, spec: GRUSpec):
        self.spec, self.reset_after = spec, spec.reset_after

    def input_bias(self, cell):
        # reset-before adds every b_h outside the recurrent matmul, so it joins the projection
        return cell[2] if self.reset_after else cell[2] + cell[3]

    def run_direction(self, XP, h0, cell):
        pin = _gate_pin(self.spec, XP)
        if self.reset_after:
            return _reset_after_loop(XP, h0, cell[1], cell[3], pin)
        if pin is None:
            H = h0.shape[1]
            return _ResetBeforeLoop.apply(XP, h0, cell[1][:, :2 * H], cell[1][:, 2 * H:])
        return _reset_before_loop(XP, h0, cell[1], pin)

    def __call__(self, layers, X, h0, first_xp=None):
        D = len(layers[0])
        inp, h_n = X, []
        for l, cells in enumerate(layers):
            if l == 0 and first_xp is not None:
                xps = first_xp
            else:
                T, N = inp.shape[:2]
                flat = inp.reshape(T * N, -1)
                xps = [torch.addmm(self.input_bias(c), flat, c[0]).view(T, N, -1) for c in cells]
            outs = []
            for d, cell in enumerate(cells):
                Y, h = self.run_direction(xps[d] if d == 0 else xps[d].flip(0),
                                          h0[l * D + d], cell)
                h_n.append(h)
                outs.append(Y if d == 0 else Y.flip(0))
            inp = outs[0] if D == 1 else torch.cat(outs, dim=-1)
        return inp, torch.stack(h_n)

    def lm_first_xp(self, layers, ids_T):
        """Layer 0's projection of one-hot tokens, as a row lookup: ``[T, N, 3H]``."""
        return [F.embedding(ids_T, c[0]) + self.input_bias(c) for c in layers[0]]


def _scratch_params(spec: GRUSpec, flat) -> GRUParams:
    """Scratch tensors (or their gradients), flat in :func:`_layout.cell_arrays` order ->
    canonical GRUParams (copies: never views of tensors that training goes on updating)."""
    return _layout.cell_params(spec, [t.detach().cpu().numpy() for t in flat])


# -- the language model --------------------------------------------------------------------
class _LanguageModel:
    """The book's model as a function of a flat tensor list ``gru tensors + [W_hq, b_q]``:
    ``loss(flat, ids_T [T, N], labels [T*N], state) -> (loss, logits, h_n)``. The GRU tensors
    are the scratch cells' four tensors each, or ``torch.nn.GRU``'s parameters in its order."""

    def __init__(self, impl: str, spec: GRUSpec, vocab_size: int, gru=None):
        self.impl, self.spec, self.V = impl, spec, vocab_size
        self.scratch = _ScratchGRU(spec) if impl == "scratch" else None
        self.gru = gru  # the torch.nn.GRU whose parameters are the flat list's head (native)

    def forward(self, flat: List[torch.Tensor], ids_T, state):
        """``(logits [T*N, V] with time-major rows, h_n)``."""
        W_hq, b_q = flat[-2], flat[-1]
        if self.scratch is not None:
            layers = _layout.nest(flat[:-2], self.spec)
            Y, h_n = self.scratch(layers, None, state,
                                  first_xp=self.scratch.lm_first_xp(layers, ids_T))
        else:
            X = F.one_hot(ids_T, self.V).to(W_hq.dtype)
            Y, h_n = self.gru(X, state)
        T, N = ids_T.shape
        return torch.addmm(b_q, Y.reshape(T * N, -1), W_hq), h_n

    def __call__(self, flat: List[torch.Tensor], ids_T, labels, state):
        logits, h_n = self.forward(flat, ids_T, state)
        return F.cross_entropy(logits, labels), logits, h_n


class _Model:
    """The book's model as torch tensors on ``dev``: ``flat`` (the GRU's tensors, then
    ``W_hq, b_q``), ``keys`` (each one's :func:`d2lgru.model.lm_keys` name) and ``lm``."""

    def __init__(self, model: LMParams, impl: str, device: str):
        self.spec = spec = model.spec
        self.dev = dev = torch.device("cuda" if device in ("cuda", "gpu") else "cpu")
        head = [torch.tensor(model.W_hq, device=dev), torch.tensor(model.b_q, device=dev)]
        if impl == "scratch":
            self.gru = None
            gru_flat = [torch.tensor(a, device=dev) for a in _layout.cell_arrays(model.gru)]
            keys = lm_keys(spec)[:-2]
        else:
            self.gru = _native_gru(spec, to_native(model.gru), head[0].dtype, dev)
            native_keys = _cudnn_layout.keys(spec)
            named = list(self.gru.named_parameters())
            gru_flat, keys = [p for _, p in named], [native_keys[n] for n, _ in named]
        self.flat, self.keys = gru_flat + head, keys + ["head.W_hq", "head.b_q"]
        self.lm = _LanguageModel(impl, spec, model.vocab_size, gru=self.gru)

    def lm_params(self, tensors) -> LMParams:
        """Tensors in :attr:`flat` order (the weights or their gradients) -> canonical."""
        return _layout.lm_params(self.spec, {k: t.detach().cpu().numpy() for k, t in
                                             zip(self.keys, tensors, strict=True)},
                                 None if self.gru is None else from_native)

    def zeros_state(self, N: int) -> torch.Tensor:
        return torch.zeros(self.spec.state_shape(N), dtype=self.flat[0].dtype, device=self.dev)


def clip_and_sgd(params: List[torch.Tensor], grads: List[torch.Tensor], lr: float, clip: float):
    """The book's ``grad_clipping`` (the global L2 norm of ``grads`` scaled down to ``clip``
    when above it) then ``sgd`` (``p -= lr * g``), in place, on the device: no sync."""
    norm = torch.nn.utils.get_total_norm(grads)
    scale = lr * torch.clamp(clip / norm, max=1.0)  # clip/norm when norm > clip, else 1
    for p, g in zip(params, grads):
        p.sub_(g * scale)


class TorchTrainer(Trainer):
    def __init__(self, model: LMParams, *, impl, lr, clip, mode, device):
        self.backend, self.impl, self.mode, self.device = "torch", impl, mode, device
        self.spec, self.lr, self.clip = model.spec, lr, clip
        self.model = m = _Model(model, impl, device)
        self.dev, self.gru, self.loss_fn = m.dev, m.gru, m.lm
        self.flat = [t.requires_grad_(True) for t in m.flat]  # lm_loss_and_grads: all
        keep = trained(model.spec)
        self.trained = [t for t, k in zip(self.flat, m.keys, strict=True) if k in keep]

    def _device_batches(self, batches):
        if len({X.shape for X, _ in batches}) > 1:
            return super()._device_batches(batches)
        # one host->device copy of the epoch's ids when every batch has the same shape
        ids = torch.from_numpy(np.stack([X.T for X, _ in batches]).astype(np.int64))
        labels = torch.from_numpy(np.stack([Y.T.reshape(-1) for _, Y in batches])
                                  .astype(np.int64))
        return zip(ids.to(self.dev), labels.to(self.dev))

    def _to_device(self, X, Y):
        return (torch.from_numpy(np.ascontiguousarray(X.T, np.int64)).to(self.dev),
                torch.from_numpy(np.ascontiguousarray(Y.T.reshape(-1), np.int64)).to(self.dev))

    def _zeros_state(self, N):
        return self.model.zeros_state(N)

    def _step(self, ids, labels, state):
        loss, _, h_n = self.loss_fn(self.flat, ids, labels, state)
        grads = self._average_gradients(list(torch.autograd.grad(loss, self.trained)))
        with torch.no_grad():
            clip_and_sgd(self.trained, grads, self.lr, self.clip)
        self._last_step = loss, h_n, grads  # held until the next step: see NumpyTrainer._step
        return loss.detach(), h_n.detach()

    def _fetch_losses(self, handles):
        return torch.stack(handles).cpu().numpy()

    # -- data-parallel: torch.distributed (gloo on CPU, nccl on CUDA) -------------------------
    def _all_reduce(self, tensors, *, average):
        # one collective for the whole gradient: the tensors flattened into one buffer
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._sum_over_world(flat)
        if average:
            flat /= self.world.size
        return [piece.view_as(t) for piece, t in
                zip(flat.split([t.numel() for t in tensors]), tensors)]

    def _all_reduce_host(self, values):
        t = torch.from_numpy(np.ascontiguousarray(values)).to(self.dev)
        self._sum_over_world(t)
        return (t / self.world.size).cpu().numpy()

    def _sum_over_world(self, t):
        try:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        except RuntimeError as exc:  # gloo/nccl: a peer closed its connection or timed out
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise WorldBrokenError(f"rank {self.world.rank} of {self.world.size}: "
                                   f"torch.distributed's all-reduce failed, so another worker "
                                   f"has gone ({first[:200]})") from exc

    def params(self) -> LMParams:
        return self.model.lm_params(self.flat)


class TorchPredictor(Predictor):
    def __init__(self, model: LMParams, impl: str, device: str):
        self.model = _Model(model, impl, device)

    @torch.no_grad()
    def step(self, ids, state=None):
        m, N = self.model, ids.shape[0]
        ids_T = torch.from_numpy(np.ascontiguousarray(ids.T, np.int64)).to(m.dev)
        logits, h_n = m.lm.forward(m.flat, ids_T, m.zeros_state(N) if state is None else state)
        return logits[-N:].cpu().numpy(), h_n


#: measured through d2lgru at the book's config on two idle cores (median epoch, tokens/s)
_WHY_EAGER = ("eager is the only mode: torch.compile trained at 52k tokens/s against eager's "
              "38-49k but spent 92 s compiling the 35-step loop, about as long as the whole "
              "500-epoch eager run, and torch.jit.script (deprecated) was slower than eager "
              "(40k vs 49k)")


def _leave_world():
    if dist.is_initialized():
        dist.destroy_process_group()


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda", "gpu")  # "gpu" is an alias of "cuda"
    impls = {
        "scratch": ImplInfo(
            "the book's loop in torch operations (input projection in one matmul, fused gate "
            "matmuls, row lookup for the one-hot input), differentiated by autograd (the book's "
            "cell with both gates through a written-out backward)",
            gates=GATE_SETS,
            why_not={"compile": _WHY_EAGER}),
        "native": ImplInfo(
            "torch.nn.GRU (gates r, z, n; two bias vectors) loaded from canonical parameters, "
            "differentiated by autograd",
            reset_before=False,
            why_not={"reset_before": "torch.nn.GRU computes only the reset-after (cuDNN) cell "
                                     "n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), so the "
                                     "book's reset-before cell has no native layer",
                     "gates": "torch.nn.GRU always computes both gates; the ablations and the "
                              "plain RNN run in the scratch impl",
                     "compile": "torch.compile refuses torch.nn.GRU (Dynamo: 'does not support "
                                "RNN, GRU, or LSTM'), so the native layer runs eagerly"}),
    }

    def framework_threads(self):
        return torch.get_num_threads()

    def _init_world(self, world, device):
        """torch.distributed's default process group: gloo on CPU, nccl on CUDA. Under torchrun
        (``MASTER_ADDR``/``MASTER_PORT`` set) it meets at the launcher's store (``env://``);
        otherwise at ``world.coordinator`` over TCP."""
        if already_joined("torch.distributed", (dist.get_rank(), dist.get_world_size())
                          if dist.is_initialized() else None, world):
            return
        engine = "nccl" if device in ("cuda", "gpu") else "gloo"
        if device in ("cuda", "gpu"):  # a device make_trainer checked
            torch.cuda.set_device(world.local_rank)
        if os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
            init = "env://"
        elif world.coordinator:
            init = f"tcp://{world.coordinator}"
        else:
            raise UnsupportedError("torch.distributed needs a coordinator: run under torchrun, "
                                   "or set $D2LGRU_COORDINATOR (host:port of rank 0)")
        dist.init_process_group(engine, init_method=init, rank=world.rank,
                                world_size=world.size)
        # left at exit: a process group still open when the interpreter ends aborts the process
        # (SIGABRT, "terminate called without an active exception") once its peers are gone
        atexit.register(_leave_world)

    # Every usable CPU, followed while training runs (retune_threads), and GNU OpenMP's own
    # waiting (it spins a while before it sleeps). At the book's shapes a second thread pays
    # only while it spins: on two idle cores two threads trained at 42-46k tokens/s against
    # 33-35k for one, and with passive waiting at 12-18k (waking the second thread costs more
    # than it gains on [32,256] @ [256,768] products). Spinning threads collapse when another
    # job takes a core (two trainings at once: 0.16 of one alone each); following the load,
    # which gives the core back within a second, they keep 0.67-0.69. Measured on the quiet
    # 2-core reference machine, 2026-12-02 (d2lgru train, benchmarks.contention).
    retunes_threads = True
    keeps_freed_memory = True  # tensors are posix_memalign'd: see keep_freed_memory

    def _set_threads(self, n):
        super()._set_threads(n)
        torch.set_num_threads(n)

    def _setup(self):
        # Full-precision float32 on GPUs (cuDNN's GRU would otherwise run in TF32):
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    # -- forward and VJP on NumPy arrays ------------------------------------------------
    def _run(self, impl, params, X, h0, requires_grad):
        if impl == "scratch":
            leaves = [torch.tensor(a).requires_grad_(requires_grad)
                      for a in _layout.cell_arrays(params)]
            layers = _layout.nest(leaves, params.spec)
            Y, h_n = _ScratchGRU(params.spec)(layers, X, h0)
        else:
            gru = _native_gru(params.spec, to_native(params), X.dtype, "cpu")
            gru.requires_grad_(requires_grad)
            leaves = list(gru.parameters())
            Y, h_n = gru(X, h0)
        return Y, h_n, leaves, gru if impl == "native" else layers

    def _gru(self, impl, params, X, h0):
        with torch.no_grad():
            Y, h_n, _, _ = self._run(impl, params, torch.from_numpy(X), torch.from_numpy(h0),
                                     False)
        return Y.numpy(), h_n.numpy()

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        Xt = torch.tensor(X, requires_grad=True)
        h0t = torch.tensor(h0, requires_grad=True)
        Y, h_n, leaves, holder = self._run(impl, params, Xt, h0t, True)
        grads = torch.autograd.grad([Y, h_n], leaves + [Xt, h0t],
                                    [torch.from_numpy(dY), torch.from_numpy(dh_n)],
                                    materialize_grads=True)
        dparams = self._gru_grads(impl, params.spec, holder, grads[:-2])
        return dparams, grads[-2].numpy(), grads[-1].numpy()

    @staticmethod
    def _gru_grads(impl, spec, holder, grads) -> GRUParams:
        if impl == "scratch":
            return _scratch_params(spec, grads)
        names = [name for name, _ in holder.named_parameters()]
        return from_native(dict(zip(names, grads)), spec)

    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        trainer = TorchTrainer(model, impl=impl, lr=1.0, clip=1.0, mode="eager", device="cpu")
        loss, logits, h_n = trainer.loss_fn(trainer.flat, torch.from_numpy(X.T.copy()),
                                            torch.from_numpy(Y.T.reshape(-1).copy()),
                                            torch.from_numpy(state))
        dmodel = trainer.model.lm_params(torch.autograd.grad(loss, trainer.flat))
        return LMResult(float(loss.detach()), dmodel, logits.detach().numpy(), h_n.detach().numpy())

    def _device_absent(self, device):
        if torch.cuda.is_available():
            return None
        return (f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is "
                + ("False)" if torch.backends.cuda.is_built() else
                   "False: this torch build is CPU-only)"))

    def _make_trainer(self, model, *, impl, lr, clip, mode, device):
        return TorchTrainer(model, impl=impl, lr=lr, clip=clip, mode=mode, device=device)

    def _make_predictor(self, model, *, impl, device):
        return TorchPredictor(model, impl, device)

    # -- the native layer's layout -------------------------------------------------------

    def _native_reference(self, spec, X, h0, seed):
        dtype = torch.float64 if X.dtype == np.float64 else torch.float32
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gru = torch.nn.GRU(spec.input_size, spec.hidden_size, spec.num_layers,
                               bidirectional=spec.bidirectional, dtype=dtype)
        with torch.no_grad():
            Y, h_n = gru(torch.from_numpy(X), torch.from_numpy(h0))
        return from_native(dict(gru.named_parameters()), spec), Y.numpy(), h_n.numpy()


backend = TorchBackend()
