"""JAX backend: the book's loop in ``jax.numpy`` under ``lax.scan`` (``scratch``), and Flax's
``flax.linen.GRUCell`` run by ``nn.RNN`` / ``nn.Bidirectional`` (``native``).

* ``scratch`` -- the book's GRU (both cells, gate ablations and the plain RNN, stacked,
  bidirectional) in ``jax.numpy``, ``jax.lax.scan`` over time, gradients from
  ``jax.value_and_grad``. Exact rewrites on the hot path: one matmul projects every step's input,
  the update and reset gates' recurrent products share one matmul, the biases that only ever add
  to the input projection are folded into it, and the language model looks layer 0's input
  projection up by row instead of multiplying by a one-hot matrix. The book's cell with both
  gates has its backward written out (``jax.custom_vjp``): the reverse scan carries only the
  state's gradient and the recurrent weights' gradients are one product over all steps.
* ``native`` -- ``flax.linen.GRUCell`` (Linen, not NNX: ``nnx.GRUCell``'s recurrent projection
  has no bias at all, so it cannot hold the reset-after cell's candidate bias ``b_hn``; Linen's
  ``apply`` is also a pure function of a parameter tree, which ``jit`` and ``grad`` take as is).

Flax's layout (read in ``flax/linen/recurrent.py``, ``GRUCell.__call__``): one ``Dense`` per gate
and side, kernels ``[in, H]`` (``x @ kernel``, the canonical orientation), named ``ir, iz, in``
(input side, with bias) and ``hr, hz, hn`` (recurrent side; only ``hn`` has a bias). It computes
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` -- the reset-after cell only -- and
``h' = (1 - z) * n + z * h``, the canonical update gate. The reset and update gates have ONE bias
each (``ir/bias``, ``iz/bias``): the canonical ``b_x + b_h``, all those gates depend on, so
reading a Flax cell back gives ``(b_x + b_h, 0)`` for them (``native_normal_form``), as
Keras' reset-before layer does for all three gates. :func:`to_native` / :func:`from_native` are
the only code that knows this layout; the trainer keeps ``b_x`` and ``b_h`` apart and hands Flax
their sum, so it trains exactly as the canonical model does.

Precision: 64-bit types are off in JAX by default (``jax_enable_x64``, process-wide). Every entry
point of this adapter runs inside ``jax.enable_x64(dtype == float64)``, JAX's thread-local
context for that flag, so float64 parameters compute in float64 and float32 ones in float32
whatever the process setting, and nothing outside the adapter sees the flag change (a float32 run
after a float64 one is a float32 run; ``tests/backends/test_jax.py`` checks it). Matmuls run at
``"highest"`` precision (a no-op on CPU; no TF32 on GPUs) the same way.

Threads: XLA sizes its CPU thread pool once, when JAX's backend starts (the first device query
or operation), from the CPUs the starting thread may run on; nothing changes it afterwards. In
jaxlib 0.10.2 no ``XLA_FLAGS`` entry limits it: ``--xla_cpu_multi_thread_eigen=false`` still
runs a 2048x2048 matmul on both pool threads of a 2-core machine, and the old recipe's bare
``intra_op_parallelism_threads=1`` is a fatal flag-parse error when it stands alone. So
:meth:`JaxBackend._set_threads` starts the backend itself with the calling thread's affinity
narrowed to ``n`` CPUs, then gives every thread back the full mask: the pool has ``n`` workers
that run on any CPU. Once the backend has started the count is fixed (reported as such).

Modes: ``jit`` (each training step -- loss, gradients, global-norm clipping, SGD on the trained
parameters -- is one ``jax.jit`` program, compiled once per batch shape, parameters donated and
kept on the device) and ``eager`` (the same step under ``jax.disable_jit()``).
"""

from __future__ import annotations

import contextlib
import functools
import os

import numpy as np
import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util
from jax._src import xla_bridge
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..distributed import SIZE_VAR, World, WorldBrokenError
from ..model import LMParams, lm_keys, trained
from ..spec import GATE_SETS, CellParams, GRUParams, GRUSpec
from ..errors import InvalidArgumentError
from ._base import (Backend, ImplInfo, LMResult, Predictor, Trainer, UnsupportedError,
                    check_native_names, check_world)
from ._layout import nest

#: ``lax.scan``'s unroll factor in the scratch loop. With the hand-written VJP of the book's cell
#: (:func:`_reset_before_bwd`) at the book's config (hidden 256, batch 32, 35 steps, jit, one
#: thread), alternating in one process on the 2-core reference machine under load 4-4.5 from
#: other jobs, median tokens/s of 15 rounds: unroll 1 99k, 2 89k, 5 83k, 7 69k (bare Flax 79k in
#: the same run). Before that VJP, autodiff's own scan transpose measured best at 5 (unroll 1
#: 29k/51k/46k, 5 63k/60k/52k; 2 38k/51k, 10 50k, 35 28k in three runs at load 5-7).
SCRATCH_UNROLL = 1
#: Flax's ``nn.RNN`` unroll: its default 1, which beat 5 for the native layer in the same runs
#: (50k against 44k tokens/s)
NATIVE_UNROLL = 1


@contextlib.contextmanager
def _numerics(dtype):
    """64-bit types exactly for float64 work, and full-precision matmuls, in this thread only."""
    with jax.enable_x64(np.dtype(dtype) == np.float64), jax.default_matmul_precision("highest"):
        yield


# -- the native layout: Flax's GRUCell, keyed by its parameter paths -------------------------
_FLAX_GATES = (("r", 1), ("z", 0), ("n", 2))  # Flax's gate name, canonical gate index (z, r, h)


def flax_cell_paths(spec: GRUSpec) -> list[list[str]]:
    """The parameter-path prefix of every (layer, direction) cell of the stack built here:
    ``gru_{l}/cell`` or ``bidirectional_{l}/{forward|backward}_rnn/cell``."""
    if not spec.bidirectional:
        return [[f"gru_{l}/cell"] for l in range(spec.num_layers)]
    return [[f"bidirectional_{l}/{side}_rnn/cell" for side in ("forward", "backward")]
            for l in range(spec.num_layers)]


def _flax_arrays(spec: GRUSpec, cells) -> dict:
    """Per cell ``(W_x [3, I, H], W_h [3, H, H], b_x [3, H], b_h [3, H])`` -> Flax's arrays by
    path. Indexing and ``+`` only, so it maps NumPy arrays and traced JAX arrays alike."""
    native = {}
    for row, prefixes in zip(cells, flax_cell_paths(spec)):
        for (W_x, W_h, b_x, b_h), prefix in zip(row, prefixes):
            for name, g in _FLAX_GATES:
                native[f"{prefix}/i{name}/kernel"] = W_x[g]
                # r and z: one bias, b_x + b_h; the candidate keeps b_hn inside r * (...)
                native[f"{prefix}/i{name}/bias"] = b_x[g] if name == "n" else b_x[g] + b_h[g]
                native[f"{prefix}/h{name}/kernel"] = W_h[g]
                if name == "n":
                    native[f"{prefix}/hn/bias"] = b_h[g]
    return native


def flax_shapes(spec: GRUSpec) -> dict[str, tuple[int, ...]]:
    """Every native parameter's path and shape."""
    cells = [[tuple(np.empty(s, np.int8) for s in spec.cell_shapes(l).values())
              for _ in range(spec.num_directions)] for l in range(spec.num_layers)]
    return {k: a.shape for k, a in _flax_arrays(spec, cells).items()}


def to_native(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> ``flax.linen.GRUCell`` parameters keyed by path (``gru_0/cell/ir/kernel``...).
    The reset and update gates get ``b_x + b_h``, the one bias Flax has for them."""
    cells = [[(c.W_x, c.W_h, c.b_x, c.b_h) for c in row] for row in params.cells]
    return {k: np.ascontiguousarray(a) for k, a in _flax_arrays(params.spec, cells).items()}


def from_native(native: dict, spec: GRUSpec) -> GRUParams:
    """Flax's parameters (arrays by :func:`to_native`'s paths) -> canonical. The reset and update
    gates' single bias comes back as ``b_x`` with ``b_h = 0``."""
    shapes = flax_shapes(spec)
    if not isinstance(native, dict):
        raise InvalidArgumentError(f"Flax parameters must be a dict of arrays by path, got "
                                   f"{type(native).__name__}")
    check_native_names(native, shapes, "flax.linen.GRUCell", spec)
    arrays = {}
    for k, shape in shapes.items():
        a = np.asarray(native[k])
        if a.shape != shape:
            raise InvalidArgumentError(f"{k} must have shape {shape} for a {spec.describe()}, "
                                       f"got {a.shape}")
        arrays[k] = a
    if len({a.dtype for a in arrays.values()}) != 1:
        raise InvalidArgumentError(f"Flax parameters must share one dtype, got "
                                   f"{sorted({str(a.dtype) for a in arrays.values()})}")
    rows = []
    for prefixes in flax_cell_paths(spec):
        row = []
        for prefix in prefixes:
            gate = {g: {side: arrays[f"{prefix}/{side}{name}/kernel"] for side in "ih"}
                    for name, g in _FLAX_GATES}
            W_x = np.stack([gate[g]["i"] for g in range(3)])
            W_h = np.stack([gate[g]["h"] for g in range(3)])
            b_x = np.stack([arrays[f"{prefix}/i{name}/bias"] for name in "zrn"])
            b_h = np.zeros_like(b_x)
            b_h[2] = arrays[f"{prefix}/hn/bias"]
            row.append(CellParams(W_x, W_h, b_x, b_h))
        rows.append(row)
    return GRUParams(spec, rows)


class FlaxStack(nn.Module):
    """``num_layers`` ``nn.RNN(nn.GRUCell)`` layers (each in ``nn.Bidirectional`` when the spec
    is), time-major; ``(X [T, N, I], h0 [L*D, N, H]) -> (Y [T, N, D*H], h_n)``."""

    spec: GRUSpec
    param_dtype: object = jnp.float32
    bias_init: object = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, X, h0):
        spec, states = self.spec, []

        def rnn(name=None):  # parent=None: the cell belongs to its RNN, named "cell"
            cell = nn.GRUCell(spec.hidden_size, param_dtype=self.param_dtype,
                              bias_init=self.bias_init, parent=None)
            return nn.RNN(cell, time_major=True, return_carry=True, unroll=NATIVE_UNROLL,
                          name=name, parent=None if name is None else self)

        for l in range(spec.num_layers):
            if spec.bidirectional:
                layer = nn.Bidirectional(rnn(), rnn(), time_major=True, return_carry=True,
                                         name=f"bidirectional_{l}")
                (h_f, h_b), X = layer(X, initial_carry=(h0[2 * l], h0[2 * l + 1]))
                states += [h_f, h_b]
            else:
                h, X = rnn(f"gru_{l}")(X, initial_carry=h0[l])
                states.append(h)
        return X, jnp.stack(states)


def _run_native(spec, cells, X, h0):
    tree = traverse_util.unflatten_dict(_flax_arrays(spec, cells), sep="/")
    return FlaxStack(spec).apply({"params": tree}, X, h0)


# -- scratch: the book's loop in jax.numpy --------------------------------------------------
def _cat(w):
    """``[3, A, H]`` gate-stacked -> ``[A, 3H]`` with columns z | r | h (traced: XLA folds it)."""
    return jnp.concatenate([w[0], w[1], w[2]], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _reset_before_scan(xp, h0, Wzr, Whh, reverse, unroll):
    """The book's cell (both gates) over time: ``xp [T, N, 3H]`` holds every bias and the input
    projection, ``Wzr = [W_hz | W_hr]``. Returns ``(Y, last)``; its VJP is written out below."""
    return _reset_before_fwd(xp, h0, Wzr, Whh, reverse, unroll)[0]


def _reset_before_fwd(xp, h0, Wzr, Whh, reverse, unroll):
    H = h0.shape[-1]

    def step(h, x):
        zr = jax.nn.sigmoid(x[:, :2 * H] + h @ Wzr)
        n = jnp.tanh(x[:, 2 * H:] + (zr[:, H:] * h) @ Whh)
        h = n + zr[:, :H] * (h - n)
        return h, (h, zr, n)

    last, (Y, zr, n) = jax.lax.scan(step, h0, xp, reverse=reverse, unroll=unroll)
    return (Y, last), (h0, Y, zr, n, Wzr, Whh)


def _reset_before_bwd(reverse, unroll, saved, cotangents):
    """The scan carries only ``dh`` back through time (two products per step); the weights'
    gradients are two products over all ``T*N`` rows after it. Autodiff's own transpose of the
    scan instead adds a ``[H, 3H]`` weight gradient into the carry at every step from two
    ``K = N`` products: ~1.4x slower at the book's config (see ``SCRATCH_UNROLL``)."""
    h0, Y, zr, n, Wzr, Whh = saved
    dY, dlast = cotangents
    H = h0.shape[-1]
    # the state each step started from, in the same (time) order as Y
    prev = jnp.concatenate([Y[1:], h0[None]]) if reverse else jnp.concatenate([h0[None], Y[:-1]])
    WzrT, WhhT = Wzr.T, Whh.T

    def step(dh, xs):
        dY_t, h, zr_t, n_t = xs
        g = dh + dY_t
        z, r = zr_t[:, :H], zr_t[:, H:]
        da_n = g * (1 - z) * (1 - n_t * n_t)  # through h' = n + z (h - n), n = tanh(a_n)
        ds = da_n @ WhhT  # s = r * h
        da_zr = jnp.concatenate([g * (h - n_t), ds * h], axis=1) * zr_t * (1 - zr_t)
        return g * z + ds * r + da_zr @ WzrT, (da_zr, da_n)

    dh0, (da_zr, da_n) = jax.lax.scan(step, dlast, (dY, prev, zr, n), reverse=not reverse,
                                      unroll=unroll)
    rows = Y.shape[0] * Y.shape[1]
    dWzr = prev.reshape(rows, H).T @ da_zr.reshape(rows, 2 * H)
    dWhh = (zr[..., H:] * prev).reshape(rows, H).T @ da_n.reshape(rows, H)
    return jnp.concatenate([da_zr, da_n], axis=-1), dh0, dWzr, dWhh


_reset_before_scan.defvjp(_reset_before_fwd, _reset_before_bwd)


def _direction(spec: GRUSpec, xp, h0, W_h, b_h, reverse):
    """One direction over time; ``xp [T, N, 3H]`` holds ``X W_x + b_x``. Returns ``Y`` in time
    order and the last state."""
    H = spec.hidden_size
    Wh = _cat(W_h)
    if spec.reset_after:  # only the candidate's b_hn stays inside the recurrence
        xp = xp + jnp.concatenate([b_h[0], b_h[1], jnp.zeros_like(b_h[2])])
    else:
        xp = xp + b_h.reshape(-1)
    # one [H, 2H] product for z and r: two [H, H] ones measured the same within the noise
    # (29k vs 28k, 51k vs 56k, 52k vs 48k tokens/s in the runs of SCRATCH_UNROLL's note)
    Wzr, Whh = Wh[:, :2 * H], W_h[2]
    if not spec.reset_after and spec.has_update_gate and spec.has_reset_gate:
        return _reset_before_scan(xp, h0, Wzr, Whh, reverse, SCRATCH_UNROLL)

    def gates(zr):
        z, r = zr[:, :H], zr[:, H:]
        if not spec.has_update_gate:  # pinned: Z = 0, R = 1, and their parameters get 0 grads
            z = jnp.zeros_like(z)
        if not spec.has_reset_gate:
            r = jnp.ones_like(r)
        return z, r

    def step(h, x):
        if spec.reset_after:
            hp = h @ Wh
            z, r = gates(jax.nn.sigmoid(x[:, :2 * H] + hp[:, :2 * H]))
            n = jnp.tanh(x[:, 2 * H:] + r * (hp[:, 2 * H:] + b_h[2]))
        else:
            z, r = gates(jax.nn.sigmoid(x[:, :2 * H] + h @ Wzr))
            n = jnp.tanh(x[:, 2 * H:] + (r * h) @ Whh)
        h = n + z * (h - n)
        return h, h

    last, Y = jax.lax.scan(step, h0, xp, reverse=reverse, unroll=SCRATCH_UNROLL)
    return Y, last


def _run_scratch(spec: GRUSpec, cells, X, h0, ids=None):
    """Stacked, optionally bidirectional GRU over ``cells`` (canonical arrays per cell) on
    ``X [T, N, I]`` -- or, for the language model, on token ids ``ids [T, N]``, where layer 0's
    projection is a row lookup (what multiplying by a one-hot matrix computes)."""
    D, inp, states = spec.num_directions, X, []
    for l, row in enumerate(cells):
        outs = []
        for d, (W_x, W_h, b_x, b_h) in enumerate(row):
            Wx, bx = _cat(W_x), b_x.reshape(-1)
            xp = Wx[ids] + bx if l == 0 and ids is not None else inp @ Wx + bx
            Y, last = _direction(spec, xp, h0[l * D + d], W_h, b_h, reverse=d == 1)
            outs.append(Y)
            states.append(last)
        inp = outs[0] if D == 1 else jnp.concatenate(outs, axis=-1)
    return inp, jnp.stack(states)


def _gru_forward(impl, spec, flat, X, h0):
    cells = nest(flat, spec)
    return (_run_scratch if impl == "scratch" else _run_native)(spec, cells, X, h0)


# -- the language model ----------------------------------------------------------------------
def _lm_logits(impl, spec, flat, ids, state):
    """``flat``: the GRU's canonical arrays then ``W_hq, b_q``; time-major ``ids [T, N]`` ->
    ``(logits [T*N, V], h_n)``."""
    cells, (W_hq, b_q) = nest(flat[:-2], spec), flat[-2:]
    if impl == "scratch":
        Y, h_n = _run_scratch(spec, cells, None, state, ids=ids)
    else:
        Y, h_n = _run_native(spec, cells, jax.nn.one_hot(ids, spec.input_size, dtype=W_hq.dtype),
                             state)
    return Y.reshape(-1, spec.output_size) @ W_hq + b_q, h_n


def _lm_loss(impl, spec, flat, ids, labels, state):
    """:func:`_lm_logits` and, against labels ``[T*N]``, the mean cross-entropy:
    ``(loss, (logits, h_n))``."""
    logits, h_n = _lm_logits(impl, spec, flat, ids, state)
    logp = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
    return loss, (logits, h_n)


def _sgd_step(impl, spec, mask, lr, clip, trained_arrays, frozen, ids, labels, state, *,
              average=None):
    """The whole training step: loss and gradients of the trained arrays, the book's global-norm
    clipping, then ``p - lr * g``. Returns ``(new trained arrays, loss, h_n)``. ``average``
    (the trainer's ``_average_gradients``, traced into the step) reduces the gradients over the
    world before the clip."""
    def loss_fn(tr):
        it_t, it_f = iter(tr), iter(frozen)
        flat = [next(it_t) if keep else next(it_f) for keep in mask]
        loss, (_, h_n) = _lm_loss(impl, spec, flat, ids, labels, state)
        return loss, h_n

    (loss, h_n), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained_arrays)
    if average is not None:
        grads = average(list(grads))
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads))
    scale = lr * jnp.minimum(1.0, clip / norm)  # clip / norm when norm > clip, else 1
    return [p - scale * g for p, g in zip(trained_arrays, grads)], loss, jax.lax.stop_gradient(h_n)


def _jax_device(device):
    # this process's own device (in a world of processes jax.devices() lists every process's)
    return jax.local_devices(backend="gpu" if device in ("gpu", "cuda") else "cpu")[0]


#: the mesh axis of the data-parallel world: one device per process, in rank order
_DP = "dp"


class JaxTrainer(Trainer):
    def __init__(self, model: LMParams, *, impl, lr, clip, mode, device, jax_device):
        self.backend, self.impl, self.mode, self.device = "jax", impl, mode, device
        self.spec, self.dtype, self._device = model.spec, model.dtype, jax_device
        keep = trained(model.spec)
        self.mask = tuple(k in keep for k in lm_keys(model.spec))
        with self._numerics():
            arrays = [jax.device_put(a, jax_device) for a in model.flat()]
        self.trained = [a for a, keep in zip(arrays, self.mask) if keep]
        self.frozen = [a for a, keep in zip(arrays, self.mask) if not keep]
        update = functools.partial(_sgd_step, impl, model.spec, self.mask, lr, clip,
                                   average=self._average_gradients)
        # the trained arrays are donated: each step updates them in place on the device
        self._update = jax.jit(update, donate_argnums=0) if mode == "jit" else update
        self._step_fn = update
        self._world_update = None  # the step over the world's mesh, built at the first step

    def _numerics(self):
        stack = contextlib.ExitStack()
        stack.enter_context(_numerics(self.dtype))
        if self.mode == "eager":
            stack.enter_context(jax.disable_jit())
        return stack

    # -- the shared epoch loop's hooks (Trainer.train_epoch) ----------------------------------
    def _epoch_context(self):
        return self._numerics()

    def _zeros_state(self, N):
        return jax.device_put(np.zeros(self.spec.state_shape(N), self.dtype), self._device)

    def _to_device(self, X, Y):
        ids = jax.device_put(np.ascontiguousarray(X.T, np.int32), self._device)
        labels = jax.device_put(np.ascontiguousarray(Y.T, np.int32).reshape(-1), self._device)
        return ids, labels

    def _step(self, ids, labels, state):
        if self._distributed:
            return self._world_step(ids, labels, state)
        self.trained, loss, state = self._update(self.trained, self.frozen, ids, labels, state)
        return loss, state

    def _fetch_losses(self, handles):
        # the losses stay on the device until the epoch ends: one transfer
        with self._peers_gone("a training step"):
            return np.asarray(jnp.stack(handles), np.float64).reshape(-1)

    # -- data-parallel: jax.distributed, one device per process, the step under shard_map ----
    # The step is the one-process step run by jax.shard_map over a mesh of one device per rank:
    # each device computes its rows' loss and gradients, _average_gradients (traced into the
    # step) sums them with one lax.psum of the flattened gradient -- an XLA all-reduce, over
    # gloo on CPU -- and every device applies the same clip and SGD. One compiled program per
    # step, collective included; nothing leaves the device but the epoch's losses.
    def _world_step(self, ids, labels, state):
        if self._world_update is None:
            self._build_world_step()
        put = self._global
        if state.is_fully_addressable:  # a fresh local state from _zeros_state
            state = put(state, self._rows3)
        self.trained, loss, state = self._world_update(
            self.trained, self.frozen, put(ids, self._rows2), put(labels, self._rows1), state)
        return loss.addressable_data(0), state

    def _build_world_step(self):
        devices = {}
        for d in jax.devices(self._device.platform):  # each process's first: its own device
            devices.setdefault(d.process_index, d)
        if sorted(devices) != list(range(self.world.size)):
            raise UnsupportedError(f"JAX sees the processes {sorted(devices)} in its world, not "
                                   f"the {self.world.size} ranks d2lgru started")
        self._mesh = mesh = Mesh(np.array([devices[r] for r in sorted(devices)]), (_DP,))
        P = PartitionSpec
        self._replicated, self._rows1, self._rows2, self._rows3 = (
            NamedSharding(mesh, s) for s in (P(), P(_DP), P(None, _DP), P(None, _DP, None)))
        self.trained = [self._global(a, self._replicated) for a in self.trained]
        self.frozen = [self._global(a, self._replicated) for a in self.frozen]
        update = self._step_fn

        def per_rank(trained_arrays, frozen, ids, labels, state):
            new, loss, h_n = update(trained_arrays, frozen, ids, labels, state)
            return new, loss.reshape(1), h_n

        # check_vma=False: under $D2LGRU_DIST_REDUCTION=none the parameters differ by rank on
        # purpose (each process keeps its own); with the psum they are replicated anyway
        step = jax.shard_map(per_rank, mesh=mesh, check_vma=False,
                             in_specs=(P(), P(), P(None, _DP), P(_DP), P(None, _DP, None)),
                             out_specs=(P(), P(_DP), P(None, _DP, None)))
        self._world_update = jax.jit(step, donate_argnums=0) if self.mode == "jit" else step

    def _global(self, local, sharding):
        """This process's array as its part of a world-wide one (no copy): the whole of a
        replicated array, or this rank's rows."""
        shape = list(local.shape)
        for axis, name in enumerate(sharding.spec):
            if name == _DP:
                shape[axis] *= self.world.size
        return jax.make_array_from_single_device_arrays(tuple(shape), sharding, [local])

    def _all_reduce(self, tensors, *, average):
        # traced inside the shard_map'd step: one psum of the gradients flattened into a buffer
        flat = jax.lax.psum(jnp.concatenate([t.reshape(-1) for t in tensors]), _DP)
        if average:
            flat = flat / self.world.size
        cuts = np.cumsum([t.size for t in tensors])[:-1]
        return [piece.reshape(t.shape) for piece, t in zip(jnp.split(flat, cuts), tensors)]

    def _all_reduce_host(self, values):
        with self._peers_gone("an all-gather of the losses"):
            gathered = multihost_utils.process_allgather(np.ascontiguousarray(values, np.float32))
        return np.mean(np.asarray(gathered), axis=0, dtype=np.float32)

    @contextlib.contextmanager
    def _peers_gone(self, what):
        try:
            yield
        except jax.errors.JaxRuntimeError as exc:  # gloo / the coordination service: a peer
            if not self._distributed:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise WorldBrokenError(f"rank {self.world.rank} of {self.world.size}: JAX's "
                                   f"collective in {what} failed, so another worker has gone "
                                   f"({first[:200]})") from exc

    def params(self) -> LMParams:
        it_t, it_f = iter(self.trained), iter(self.frozen)
        flat = [np.array(next(it_t) if keep else next(it_f)) for keep in self.mask]
        return LMParams(_params_like(self.spec, flat[:-2]), flat[-2], flat[-1])


class JaxPredictor(Predictor):
    """The model on the device once, one jitted forward per prefix length."""

    def __init__(self, model: LMParams, impl, jax_device):
        self.spec, self.dtype, self._device = model.spec, model.dtype, jax_device
        with _numerics(self.dtype):
            self.flat = [jax.device_put(a, jax_device) for a in model.flat()]
        self._forward = jax.jit(functools.partial(_lm_logits, impl, model.spec))

    def step(self, ids, state=None):
        spec, (N, T) = self.spec, ids.shape
        with _numerics(self.dtype):
            if state is None:
                state = jax.device_put(np.zeros(spec.state_shape(N), self.dtype), self._device)
            ids_T = jax.device_put(np.ascontiguousarray(ids.T, np.int32), self._device)
            logits, state = self._forward(self.flat, ids_T, state)
            return np.asarray(logits).reshape(T, N, -1)[-1], state


class JaxBackend(Backend):
    name = "jax"
    impls = {
        "scratch": ImplInfo(
            "the book's loop in jax.numpy under lax.scan (input projection in one matmul, fused "
            "gate matmuls, row lookup for the one-hot input), gradients by jax.value_and_grad, "
            "the whole training step in one jax.jit",
            gates=GATE_SETS, modes=("jit", "eager")),
        "native": ImplInfo(
            "flax.linen.GRUCell (gates r, z, n; one bias for r and z) in nn.RNN and "
            "nn.Bidirectional, loaded from canonical parameters, gradients by jax.value_and_grad",
            reset_before=False, modes=("jit", "eager"),
            why_not={"reset_before": "flax.linen.GRUCell computes only the reset-after cell "
                                     "n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) and Flax has "
                                     "no reset-before GRU, so the book's cell has no native layer",
                     "gates": "flax.linen.GRUCell always computes both gates; the ablations "
                              "and the plain RNN run in the scratch impl",
                     "reset_after_bias": "flax.linen.GRUCell holds one bias for each of the "
                                         "reset and update gates (the canonical b_x + b_h), so "
                                         "parameters read back from it have b_hr = b_hz = 0"}),
    }

    def __init__(self):
        super().__init__()
        self._devices = None
        self._fns = {}

    @property
    def devices(self) -> tuple[str, ...]:
        """``cpu``, plus ``gpu`` (alias ``cuda``) where the installed jaxlib has a CUDA backend
        with a device (asked of JAX the first time, never at import; asking starts JAX's
        backend, so the thread count is applied first)."""
        if self._devices is None:
            self._ensure_ready()
            self._devices = ("cpu", "gpu", "cuda") if _gpus() else ("cpu",)
        return self._devices

    # Threads: the policy's default preference (every usable CPU); XLA's pool is Eigen's, whose
    # idle workers spin only briefly before they sleep, and OMP_WAIT_POLICY does not reach it.
    def framework_threads(self):
        return _xla_pool_size()

    def _set_threads(self, n):
        super()._set_threads(n)  # NumPy's BLAS, which the adapter's conversions use
        if not xla_bridge.backends_are_initialized():
            if os.environ.get(SIZE_VAR):  # a spawned worker: join before the backends start
                _join_world(World.from_env())
            _start_xla(n)
            return None
        fixed = _xla_pool_size()
        return None if fixed == n else fixed

    def _why_threads_fixed(self, fixed):
        return (f"XLA sizes its CPU thread pool when JAX's backend starts and this process's "
                f"backend has started with {fixed} thread(s); set $D2LGRU_THREADS or call "
                f"set_threads before the backend's first use (and before any other JAX work)")

    # -- data-parallel: jax.distributed (see JaxTrainer._world_step) --------------------------
    #: why eager mode does not train on several processes (jit does)
    eager_world_refusal = (
        "in eager mode every operation of the sharded step is its own program compiled and "
        "run across all the processes (on 2 loaded cores, 2 workers did not finish one step "
        "of a hidden-8 model in 90 s), so data-parallel training on JAX runs in jit mode only "
        "(--mode jit)")

    def make_trainer(self, model, *, world=None, **kwargs):
        if check_world(world) is not None and world.distributed:
            impl = kwargs.get("impl", "scratch")
            if impl in self.impls and self.check_mode(impl, kwargs.get("mode")) == "eager":
                raise UnsupportedError(f"backend {self.name!r} cannot train on {world.size} "
                                       f"processes in eager mode: {self.eager_world_refusal}")
            # jax.distributed.initialize must precede the backends' start, which the base's
            # make_trainer begins with (threads, devices): a fresh process joins here
            if not xla_bridge.backends_are_initialized():
                _join_world(world)
        return super().make_trainer(model, world=world, **kwargs)

    def _init_world(self, world, device):
        if not jax.distributed.is_initialized():
            raise UnsupportedError(
                "JAX's backend started in this process before it joined the world, and "
                "jax.distributed.initialize must come first: make the data-parallel trainer "
                "before any other JAX work, or set $D2LGRU_WORLD_SIZE, $D2LGRU_RANK and "
                "$D2LGRU_COORDINATOR before the process starts")
        joined = (jax.process_index(), jax.process_count())
        if joined != (world.rank, world.size):
            raise UnsupportedError(f"this process already joined jax.distributed as rank "
                                   f"{joined[0]} of {joined[1]}, not {world.rank} of "
                                   f"{world.size}")

    # -- jitted functions, one per (what, impl, spec); jit caches one program per shape ------
    def _fn(self, what, impl, spec):
        key = (what, impl, spec)
        if key not in self._fns:
            if what == "gru":
                fn = functools.partial(_gru_forward, impl, spec)
            elif what == "vjp":
                def fn(flat, X, h0, dY, dh_n):
                    _, vjp = jax.vjp(functools.partial(_gru_forward, impl, spec), flat, X, h0)
                    return vjp((dY, dh_n))
            else:
                def fn(flat, ids, labels, state):
                    (loss, (logits, h_n)), grads = jax.value_and_grad(
                        functools.partial(_lm_loss, impl, spec), has_aux=True)(
                        flat, ids, labels, state)
                    return loss, grads, logits, h_n
            self._fns[key] = jax.jit(fn)
        return self._fns[key]

    def _gru(self, impl, params, X, h0):
        with _numerics(params.dtype):
            Y, h_n = self._fn("gru", impl, params.spec)(params.flat(), X, h0)
            return np.asarray(Y), np.asarray(h_n)

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        spec = params.spec
        with _numerics(params.dtype):
            dflat, dX, dh0 = self._fn("vjp", impl, spec)(params.flat(), X, h0, dY, dh_n)
            return _params_like(spec, dflat), np.asarray(dX), np.asarray(dh0)

    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        spec = model.spec
        with _numerics(model.dtype):
            loss, grads, logits, h_n = self._fn("lm", impl, spec)(
                model.flat(), np.ascontiguousarray(X.T, np.int32),
                np.ascontiguousarray(Y.T, np.int32).reshape(-1), state)
            grads = [np.asarray(g) for g in grads]
            return LMResult(float(loss), LMParams(_params_like(spec, grads[:-2]), *grads[-2:]),
                            np.asarray(logits), np.asarray(h_n))

    def _make_trainer(self, model, *, impl, lr, clip, mode, device):
        return JaxTrainer(model, impl=impl, lr=lr, clip=clip, mode=mode, device=device,
                          jax_device=_jax_device(device))

    def _make_predictor(self, model, *, impl, device):
        return JaxPredictor(model, impl, _jax_device(device))

    # -- the native layer's layout (to_native / from_native above) ------------------------

    def _native_reference(self, spec, X, h0, seed):
        """Flax's own initialisers (lecun_normal kernels, orthogonal recurrent kernels), seeded;
        biases N(0, 0.5) instead of zeros so that reading them back is tested too."""
        with _numerics(X.dtype):
            stack = FlaxStack(spec, param_dtype=X.dtype,
                              bias_init=nn.initializers.normal(0.5, dtype=X.dtype))
            variables = stack.init(jax.random.key(seed), X, h0)
            Y, h_n = stack.apply(variables, X, h0)
            native = traverse_util.flatten_dict(variables["params"], sep="/")
            return from_native(native, spec), np.asarray(Y), np.asarray(h_n)


def _params_like(spec, flat) -> GRUParams:
    """Canonical arrays (or their gradients) in :meth:`GRUParams.flat` order -> GRUParams."""
    cells = nest([np.asarray(a) for a in flat], spec)
    return GRUParams(spec, [[CellParams(*c) for c in row] for row in cells])


#: the name XLA gives its CPU intra-op pool's threads
_XLA_POOL_THREAD = "tf_XLAEigen"


def _start_xla(n: int) -> None:
    """Start JAX's backends with an intra-op pool of ``n`` threads: XLA sizes the pool from the
    starting thread's CPU affinity, so that is narrowed to ``n`` CPUs while it starts, and every
    thread (the pool's included) gets the full mask back."""
    try:
        full = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # no affinity to narrow: XLA's default
        jax.devices()
        return
    if n >= len(full):
        jax.devices()
        return
    os.sched_setaffinity(0, sorted(full)[:n])
    try:
        jax.devices()
    finally:
        for tid in _thread_ids() or [0]:
            try:
                os.sched_setaffinity(tid, full)
            except OSError:  # a thread that has ended
                pass


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _xla_pool_size() -> int:
    """The workers of XLA's CPU pool, counted by their thread name (all usable CPUs where
    threads cannot be listed)."""
    names = []
    for tid in _thread_ids():
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue
    return names.count(_XLA_POOL_THREAD) or len(os.sched_getaffinity(0))


def _join_world(world: World) -> None:
    """``jax.distributed.initialize`` as ``world.rank`` of ``world.size`` at
    ``world.coordinator`` (rank 0 runs the coordination service there), with gloo for the CPU
    collectives (``jax_cpu_collectives_implementation``: JAX 0.10.2's default, set all the same
    so that the choice does not rest on a default). Must run before JAX's backends start (the
    CPU client is made with the distributed client and the collectives); once per process."""
    if jax.distributed.is_initialized():
        return
    if not world.coordinator:
        raise UnsupportedError("jax.distributed needs a coordinator: set $D2LGRU_COORDINATOR "
                               "(host:port where rank 0 listens)")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # its SIGTERM handler holds the signal for a preemption sync point d2lgru never reaches,
    # so a worker told to stop (the spawner's SIGTERM when a peer fails) would wait for SIGKILL
    jax.config.update("jax_enable_preemption_service", False)
    jax.distributed.initialize(world.coordinator, world.size, world.rank,
                               local_device_ids=[world.local_rank],  # a GPU per process
                               cluster_detection_method="deactivate")


def _gpus() -> bool:
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:  # this jaxlib has no GPU backend, or it found no device
        return False


backend = JaxBackend()
