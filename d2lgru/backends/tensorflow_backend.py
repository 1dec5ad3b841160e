"""TensorFlow / Keras 3 backend: the book's loop in TensorFlow ops, and ``keras.layers.GRU``.

* ``scratch`` -- the book's GRU written with TensorFlow ops (both cells, stacked, bidirectional),
  gradients from ``tf.GradientTape``. Exact rewrites on the hot path: every time step's input
  projection in one matmul, the gates' recurrent matmuls in one, a row lookup (``tf.gather``)
  instead of multiplying by a one-hot matrix, and the biases that only ever add to the input
  projection folded into it. Under XLA (mode ``xla``) the book's cell has its backward written
  out (``tf.custom_gradient``): the reverse loop carries only the state's gradient and the
  recurrent kernels' gradients are one product over all steps (measured alternating with the
  tape's own gradient of the same loop, one thread, load 9: 44k against 34k tokens/s, 75k
  against 57k by CPU time; bare Keras ``function`` 35k and 56k in the same run).
* ``native`` -- ``keras.layers.GRU`` (``reset_after`` True or False, stacked, wrapped in
  ``keras.layers.Bidirectional``), loaded from canonical parameters by :func:`to_native` and read
  back by :func:`from_native`. Keras 3 has no ``time_major``: inputs are transposed explicitly.
  Under XLA the trainer unrolls Keras' loop for short, narrow batches (:data:`_XLA_UNROLL_MAX`).

Keras' layout (read in ``keras/src/layers/rnn/gru.py``, ``GRUCell.build`` and ``GRUCell.call``):
``kernel [I, 3H]`` and ``recurrent_kernel [H, 3H]`` with columns in the gate order z | r | h
(the canonical order), ``h = z * h_prev + (1 - z) * hh`` (the canonical update gate). With
``reset_after=True`` the ``bias`` is ``[2, 3H]``: row 0 the input biases, row 1 the recurrent
ones -- exactly ``b_x`` and ``b_h``. With ``reset_after=False`` the layer has ONE bias ``[3H]``
that adds to the input projection only (``hh = tanh(x W_xh + b_h + (r * h) W_hh)``): the
canonical ``b_x + b_h``. Nothing can tell ``(b_x, b_h)`` from ``(b_x + b_h, 0)`` in the
reset-before cell, so that layout keeps their sum; see
:meth:`Backend.native_normal_form`.
``keras.layers.Bidirectional`` runs its ``backward_layer`` with ``go_backwards=True``, flips that
layer's outputs back into time order and concatenates ``[forward, backward]``; its states come
out forward first, so ``h_n[l * D + d]`` is direction ``d`` of layer ``l`` as in the spec.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile

import numpy as np

from ..model import LMParams, lm_keys, trained
from ..spec import CellParams, GRUParams, GRUSpec
from ..errors import BackendNotInstalledError, InvalidArgumentError
from . import _layout
from ._base import (Backend, ImplInfo, LMResult, Predictor, Trainer, UnsupportedError,
                    check_native_names)
from ._layout import cat as _cat, uncat as _uncat

# TensorFlow and Keras are imported by the backend's first use (_import_tensorflow), not with
# this module: what they read at import (log level, Keras' backend) is set right before that,
# and their import noise is filtered there, so importing the adapter changes nothing.
tf = keras = None

# TensorFlow 2.19+ prints "oneDNN custom operations are on" (and absl's "All log messages
# before absl::InitializeLog()") from C++ while it is imported, whatever TF_CPP_MIN_LOG_LEVEL
# says (tensorflow/tensorflow#100442); turning oneDNN off would silence it but costs a quarter of
# the speed here. So the import runs with file descriptor 2 captured, and only those lines are
# dropped: anything else (a real error) is written back to stderr.
_IMPORT_NOISE = ("oneDNN custom operations are on",
                 "All log messages before absl::InitializeLog() is called")


@contextlib.contextmanager
def _stderr_filtered(noise):
    """Within the block, file descriptor 2 goes to a temporary file; afterwards (error or not)
    fd 2 is restored and every captured line not matching ``noise`` is written to stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to keep clean
        yield
        return
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
            kept = [line for line in text.splitlines() if not any(n in line for n in noise)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


@contextlib.contextmanager
def _environ(name, value):
    """``$name`` is ``value`` within the block and what it was (or unset) after it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _import_tensorflow():
    """Import TensorFlow and Keras 3 once: C++ log level 2 unless the user chose one (read at
    import only), Keras on TensorFlow whatever ``$KERAS_BACKEND`` says elsewhere (set for the
    import and restored), the import noise above filtered out."""
    global tf, keras
    if tf is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _environ("KERAS_BACKEND", "tensorflow"):
        if "tensorflow" in sys.modules:
            import tensorflow
        else:
            with _stderr_filtered(_IMPORT_NOISE):
                import tensorflow
        import keras as keras_module
    if keras_module.backend.backend() != "tensorflow":
        raise BackendNotInstalledError(
            f"the tensorflow backend needs Keras on TensorFlow, but Keras was already imported "
            f"with the {keras_module.backend.backend()!r} backend; start a fresh process with "
            f"KERAS_BACKEND=tensorflow")
    tf, keras = tensorflow, keras_module


_TF_DEVICES = {"cpu": "/CPU:0", "gpu": "/GPU:0"}


# -- canonical <-> Keras layout (the only code that knows Keras' layout) -----------------------
def keras_layer_names(spec: GRUSpec) -> list[list[str]]:
    """The variable-path prefix of every (layer, direction) cell in the stack this backend
    builds: ``gru_{l}/gru_cell`` or ``bidirectional_{l}/{forward|backward}_gru_{l}/gru_cell``."""
    if not spec.bidirectional:
        return [[f"gru_{l}/gru_cell"] for l in range(spec.num_layers)]
    return [[f"bidirectional_{l}/{side}_gru_{l}/gru_cell" for side in ("forward", "backward")]
            for l in range(spec.num_layers)]


def keras_shapes(spec: GRUSpec) -> dict[str, tuple[int, ...]]:
    """Every native parameter's name (the Keras variable path) and shape, in layer order."""
    H = spec.hidden_size
    bias = (2, 3 * H) if spec.reset_after else (3 * H,)
    return {f"{prefix}/{name}": shape
            for l, row in enumerate(keras_layer_names(spec)) for prefix in row
            for name, shape in (("kernel", (spec.layer_input_size(l), 3 * H)),
                                ("recurrent_kernel", (H, 3 * H)), ("bias", bias))}


def to_native(params: GRUParams) -> dict[str, np.ndarray]:
    """Canonical -> Keras' variables (names are the variable paths of the layers built here).
    Reset-before: Keras' single bias is ``b_x + b_h`` (the one quantity the cell depends on)."""
    spec, native = params.spec, {}
    for l, row in enumerate(keras_layer_names(spec)):
        for d, prefix in enumerate(row):
            c = params.cell(l, d)
            native[f"{prefix}/kernel"] = _cat(c.W_x)
            native[f"{prefix}/recurrent_kernel"] = _cat(c.W_h)
            native[f"{prefix}/bias"] = (np.stack([c.b_x.reshape(-1), c.b_h.reshape(-1)])
                                        if spec.reset_after else (c.b_x + c.b_h).reshape(-1))
    return native


def _check_keras_dict(native, spec: GRUSpec):
    shapes = keras_shapes(spec)
    if not isinstance(native, dict):
        raise InvalidArgumentError(f"Keras parameters must be a dict of arrays by variable path, got "
                                   f"{type(native).__name__}")
    check_native_names(native, shapes, "Keras", spec)
    dtypes = set()
    for name, shape in shapes.items():
        a = native[name]
        if not isinstance(a, np.ndarray) or a.shape != shape:
            raise InvalidArgumentError(f"Keras parameter {name} must be a NumPy array of shape {shape}, got "
                                       f"{getattr(a, 'shape', type(a).__name__)}")
        dtypes.add(a.dtype)
    if len(dtypes) != 1:
        raise InvalidArgumentError(f"Keras parameters must share one dtype, got {sorted(map(str, dtypes))}")


def _from_native_layout(native, spec: GRUSpec, *, gradients: bool) -> GRUParams:
    _check_keras_dict(native, spec)
    H, cells = spec.hidden_size, []
    for l, row in enumerate(keras_layer_names(spec)):
        cells.append([])
        for prefix in row:
            bias = native[f"{prefix}/bias"]
            if spec.reset_after:
                b_x, b_h = bias[0].reshape(3, H).copy(), bias[1].reshape(3, H).copy()
            else:
                b_x = bias.reshape(3, H).copy()
                # weights: the sum lives in b_x; gradients: d(b_x + b_h) reaches both terms
                b_h = b_x.copy() if gradients else np.zeros_like(b_x)
            cells[-1].append(CellParams(_uncat(native[f"{prefix}/kernel"]),
                                        _uncat(native[f"{prefix}/recurrent_kernel"]), b_x, b_h))
    return GRUParams(spec, cells)


def from_native(native: dict, spec: GRUSpec) -> GRUParams:
    """Keras' variables -> canonical (inverse of :func:`to_native`). Reset-before: the folded
    bias comes back as ``b_x`` with ``b_h = 0``."""
    return _from_native_layout(native, spec, gradients=False)


def grads_from_native(native_grads: dict, spec: GRUSpec) -> GRUParams:
    """Gradients with respect to Keras' variables -> canonical gradients: the transpose of
    :func:`to_native` (for the reset-before bias ``b_x + b_h`` both terms get its gradient)."""
    return _from_native_layout(native_grads, spec, gradients=True)


# -- scratch: the book's loop in TensorFlow ops ------------------------------------------------
def _reset_before_while(x_zr, x_h, h0, rk_zr, rk_h, reverse):
    return _reset_before_while_fn(reverse)(x_zr, x_h, h0, rk_zr, rk_h)


@functools.cache  # one custom-gradient function per direction, made once TensorFlow is in
def _reset_before_while_fn(reverse):
    """The book's cell (both gates) under ``tf.while_loop`` -- ``x_zr [T, N, 2H]`` and ``x_h``
    hold every bias and the input projection -- with its backward written out: the reverse
    loop carries only the state's gradient (two products a step) and the recurrent kernels'
    gradients are one product each over all ``T*N`` rows afterwards, where the tape's own
    gradient of the loop adds a ``[H, 3H]`` product from ``K = N`` rows into them at every step.
    Returns ``(Y [T, N, H] in time order, last)``."""
    @tf.custom_gradient
    def run(x_zr, x_h, h0, rk_zr, rk_h):
        return _reset_before_while_run(x_zr, x_h, h0, rk_zr, rk_h, reverse)
    return run


def _reset_before_while_run(x_zr, x_h, h0, rk_zr, rk_h, reverse):
    H, T = h0.shape[-1], tf.shape(x_zr)[0]
    order = (lambda t: T - 1 - t) if reverse else (lambda t: t)

    def body(t, h, ys, zrs, ns):
        i = order(t)
        zr = tf.sigmoid(x_zr[i] + tf.matmul(h, rk_zr))
        n = tf.tanh(x_h[i] + tf.matmul(zr[:, H:] * h, rk_h))
        h = n + zr[:, :H] * (h - n)
        return t + 1, h, ys.write(i, h), zrs.write(i, zr), ns.write(i, n)

    arrays = [tf.TensorArray(x_zr.dtype, size=T) for _ in range(3)]
    _, last, ys, zrs, ns = tf.while_loop(lambda t, *_: t < T, body, (tf.constant(0), h0, *arrays),
                                         maximum_iterations=x_zr.shape[0])
    Y, zr, n = ys.stack(), zrs.stack(), ns.stack()

    def grad(dY, dlast):
        dY = tf.zeros_like(Y) if dY is None else dY
        dlast = tf.zeros_like(h0) if dlast is None else dlast
        # the state each step started from, in time order
        prev = (tf.concat([Y[1:], h0[None]], 0) if reverse else tf.concat([h0[None], Y[:-1]], 0))

        def back(t, dh, dzrs, dns):
            i = order(T - 1 - t)  # the forward loop's steps, last first
            g = dh + dY[i]
            zr_t, n_t, h = zr[i], n[i], prev[i]
            z, r = zr_t[:, :H], zr_t[:, H:]
            da_n = g * (1 - z) * (1 - n_t * n_t)  # through h' = n + z (h - n), n = tanh(a_n)
            ds = tf.matmul(da_n, rk_h, transpose_b=True)  # s = r * h
            da_zr = tf.concat([g * (h - n_t), ds * h], 1) * zr_t * (1 - zr_t)
            dh = g * z + ds * r + tf.matmul(da_zr, rk_zr, transpose_b=True)
            return t + 1, dh, dzrs.write(i, da_zr), dns.write(i, da_n)

        arrays = [tf.TensorArray(x_zr.dtype, size=T) for _ in range(2)]
        _, dh0, dzrs, dns = tf.while_loop(lambda t, *_: t < T, back, (tf.constant(0), dlast,
                                                                      *arrays),
                                          maximum_iterations=x_zr.shape[0])
        da_zr, da_n = dzrs.stack(), dns.stack()
        rows = tf.shape(Y)[0] * tf.shape(Y)[1]
        d_rk_zr = tf.matmul(tf.reshape(prev, [rows, H]), tf.reshape(da_zr, [rows, 2 * H]),
                            transpose_a=True)
        d_rk_h = tf.matmul(tf.reshape(zr[..., H:] * prev, [rows, H]),
                           tf.reshape(da_n, [rows, H]), transpose_a=True)
        return da_zr, da_n, dh0, d_rk_zr, d_rk_h

    return (Y, last), grad



def _direction(xp, h, rk, b_h, reset_after, reverse, loop):
    """One direction over time; ``xp [T, N, 3H]`` already holds ``X W_x + b_x``. Returns the
    outputs in time order and the last state. ``loop``: "unroll" (a Python loop: eager, and
    the fastest plain graph) or "while" (``tf.while_loop``: what XLA compiles best)."""
    H = rk.shape[0]
    # the recurrent biases that only add to the input projection are folded into it
    if reset_after:
        xp = xp + tf.concat([b_h[:2 * H], tf.zeros_like(b_h[2 * H:])], 0)
        b_hh = b_h[2 * H:]
    else:
        xp = xp + b_h
        rk_zr, rk_h = rk[:, :2 * H], rk[:, 2 * H:]
    x_zr, x_h = xp[..., :2 * H], xp[..., 2 * H:]

    def step(h, x_zr, x_h):
        if reset_after:
            hp = tf.matmul(h, rk)
            z, r = tf.split(tf.sigmoid(x_zr + hp[:, :2 * H]), 2, axis=1)
            n = tf.tanh(x_h + r * (hp[:, 2 * H:] + b_hh))
        else:
            z, r = tf.split(tf.sigmoid(x_zr + tf.matmul(h, rk_zr)), 2, axis=1)
            n = tf.tanh(x_h + tf.matmul(r * h, rk_h))
        return n + z * (h - n)

    if loop == "while" and not reset_after:
        return _reset_before_while(x_zr, x_h, h, rk_zr, rk_h, reverse)
    if loop == "while":
        T = tf.shape(xp)[0]
        ta = tf.TensorArray(xp.dtype, size=T)

        def body(t, h, ta):
            i = T - 1 - t if reverse else t
            h = step(h, x_zr[i], x_h[i])
            return t + 1, h, ta.write(i, h)

        _, last, ta = tf.while_loop(lambda t, *_: t < T, body, (tf.constant(0), h, ta),
                                    maximum_iterations=xp.shape[0])
        return ta.stack(), last
    order = range(xp.shape[0] - 1, -1, -1) if reverse else range(xp.shape[0])
    zrs, hs = tf.unstack(x_zr), tf.unstack(x_h)
    outs = [None] * xp.shape[0]
    for t in order:
        h = outs[t] = step(h, zrs[t], hs[t])
    return tf.stack(outs), h


def scratch_forward(spec: GRUSpec, cells, X=None, h0=None, *, ids=None, loop="unroll"):
    """Stacked, optionally bidirectional GRU on time-major ``X [T, N, I]`` -- or, for the language
    model, on token ids ``ids [T, N]`` (layer 0's projection becomes a row lookup, which is what
    multiplying by a one-hot matrix computes). Returns ``Y [T, N, D*H]`` and ``h_n``."""
    D = spec.num_directions
    states, inp = [], X
    for l, row in enumerate(cells):
        outs = []
        for d, (k, rk, b_x, b_h) in enumerate(row):
            if l == 0 and ids is not None:
                xp = tf.gather(k, ids) + b_x
            else:
                T, N = tf.shape(inp)[0], tf.shape(inp)[1]
                xp = tf.reshape(tf.matmul(tf.reshape(inp, [T * N, -1]), k) + b_x, [T, N, -1])
            Y, last = _direction(xp, h0[l * D + d], rk, b_h, spec.reset_after,
                                 reverse=d == 1, loop=loop)
            outs.append(Y)
            states.append(last)
        inp = outs[0] if D == 1 else tf.concat(outs, -1)
    return inp, tf.stack(states)


# -- native: keras.layers.GRU stacked (and wrapped in Bidirectional) ---------------------------
class KerasStack:
    """The Keras layers of one spec and dtype, built once and run stateless (weights passed in
    as tensors, so one stack serves every parameter set)."""

    def __init__(self, spec: GRUSpec, dtype, *, seed: int | None = None):
        self.spec, self.layers = spec, []
        dtype = np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name

        def gru(l, d, name):
            init = {}
            if seed is not None:  # Keras' own initialisers (its defaults, seeded per cell;
                # biases random instead of zeros so that reading them back is tested too)
                s = seed * 1000 + 10 * l + 3 * d
                init = {"kernel_initializer": keras.initializers.GlorotUniform(s),
                        "recurrent_initializer": keras.initializers.Orthogonal(seed=s + 1),
                        "bias_initializer": keras.initializers.RandomNormal(stddev=0.5, seed=s + 2)}
            return keras.layers.GRU(spec.hidden_size, activation="tanh",
                                    recurrent_activation="sigmoid", reset_after=spec.reset_after,
                                    return_sequences=True, return_state=True, go_backwards=d == 1,
                                    dtype=dtype, name=name, **init)

        for l in range(spec.num_layers):
            # Bidirectional renames its forward layer forward_gru_{l}; the backward one is built
            # here (not copied from the forward one) so that seeded weights differ
            layer = (keras.layers.Bidirectional(gru(l, 0, f"gru_{l}"), dtype=dtype,
                                                backward_layer=gru(l, 1, f"backward_gru_{l}"),
                                                name=f"bidirectional_{l}")
                     if spec.bidirectional else gru(l, 0, f"gru_{l}"))
            layer.build((None, None, spec.layer_input_size(l)))
            self.layers.append(layer)
        paths = [v.path for v in self.variables()]
        if paths != list(keras_shapes(spec)):  # the converters' names are Keras' own
            raise RuntimeError(f"Keras named the GRU variables {paths}, expected "
                               f"{list(keras_shapes(spec))}")

    def variables(self):
        return [v for layer in self.layers for v in layer.trainable_variables]

    def __call__(self, values, X, h0, *, unroll=False):
        """``values``: one tensor per Keras variable (in :func:`keras_shapes` order). Batch-major
        ``X [N, T, I]``, ``h0 [L*D, N, H]`` -> batch-major ``Y [N, T, D*H]`` and ``h_n``.
        ``unroll``: Keras' ``unroll`` for this call (a Python loop in the graph instead of a
        ``while``), read by the layers when they are called."""
        D, i, states, inp = self.spec.num_directions, 0, [], X
        for l, layer in enumerate(self.layers):
            for gru in ((layer.forward_layer, layer.backward_layer) if D == 2 else (layer,)):
                gru.unroll = unroll
            n = len(layer.trainable_variables)
            (inp, *last), _ = layer.stateless_call(
                list(values[i:i + n]), layer.non_trainable_variables, inp,
                initial_state=[h0[l * D + d] for d in range(D)])
            i += n
            states.extend(last)
        return inp, tf.stack(states)


def _native_values(spec, variables):
    """The trainer's native parameters -> one tensor per Keras variable. Reset-before keeps
    ``b_x`` and ``b_h`` as separate variables (so SGD updates them as the canonical model does)
    and hands Keras their sum."""
    if spec.reset_after:
        return variables
    return [v for row in _layout.nest(variables, spec) for k, rk, b_x, b_h in row
            for v in (k, rk, b_x + b_h)]


# -- the language model ------------------------------------------------------------------------
#: XLA (``loop="while"``) runs Keras' GRU loop unrolled up to this many steps and rows, and as
#: a ``while`` beyond. Tokens/s of the native trainer, ``while`` -> unrolled, either cell
#: (2 threads, the book's model): T=35 N=32 +25% (reset-before; +29% reset-after), T=10 +81%,
#: T=40 +20%, N=8 +80%, N=64 +2%; but N=128 -3%, T=50 0% and T=70 -40%, while compiling
#: grows with T^2 (5.5 s more at T=35, 20 s at 70, 81 s at 140).
_XLA_UNROLL_MAX = (40, 64)


def _lm_forward(stack, spec, gru_vars, W_hq, b_q, ids, state, loop="unroll"):
    """Time-major token ids ``[T, N]`` -> logits ``[T*N, V]`` (time-major rows) and ``h_n``.
    ``loop``: the scratch loop's (see :func:`_direction`); under XLA (``"while"``) Keras' loop
    is unrolled for short, narrow batches (:data:`_XLA_UNROLL_MAX`)."""
    if stack is None:
        Y, h_n = scratch_forward(spec, _layout.nest(gru_vars, spec), h0=state, ids=ids,
                                 loop=loop)
    else:
        onehot = tf.transpose(tf.one_hot(ids, spec.input_size, dtype=W_hq.dtype), [1, 0, 2])
        unroll = loop == "while" and all(n <= m for n, m in zip(ids.shape, _XLA_UNROLL_MAX))
        Y, h_n = stack(_native_values(spec, gru_vars), onehot, state, unroll=unroll)
        Y = tf.transpose(Y, [1, 0, 2])
    return tf.matmul(tf.reshape(Y, [-1, spec.output_size]), W_hq) + b_q, h_n


def _lm_loss(logits, labels):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def _batch_tensors(X, Y):
    """A batch ``X, Y [N, T]`` -> time-major ids ``[T, N]`` and labels ``Y.T.reshape(-1)`` (the
    book's order), transposed on the host: TensorFlow's int32 transpose logs a oneDNN error
    line on CPUs without AVX-512."""
    return (tf.constant(np.ascontiguousarray(X.T), tf.int32),
            tf.constant(np.ascontiguousarray(Y.T).reshape(-1), tf.int32))


def _gru_arrays(impl, params: GRUParams):
    """Canonical -> the flat list of GRU arrays an impl trains: Keras' variables for the native
    reset-after layer; otherwise per cell ``kernel, recurrent_kernel, b_x, b_h`` (Keras'
    concatenated weights with the two biases apart, so that the native reset-before layer,
    which gets their sum, is trained exactly as the canonical model is)."""
    if impl == "native" and params.spec.reset_after:
        return list(to_native(params).values())
    return _layout.cell_arrays(params)


def _gru_params_from_arrays(impl, spec, arrays) -> GRUParams:
    """Inverse of :func:`_gru_arrays` (also for gradients: each array's gradient has its
    shape and meaning)."""
    arrays = [np.asarray(a) for a in arrays]
    if impl == "native" and spec.reset_after:
        return from_native(dict(zip(keras_shapes(spec), arrays)), spec)
    return _layout.cell_params(spec, arrays)


def clip_and_sgd(params, grads, lr, clip):
    """The book's ``grad_clipping`` (the global L2 norm of ``grads`` scaled down to ``clip``
    when above it) then ``sgd`` (``p -= lr * g``), in place, on the device: no sync."""
    norm = tf.linalg.global_norm(grads)
    scale = lr * tf.minimum(tf.ones_like(norm), clip / norm)
    for v, g in zip(params, grads):
        v.assign_sub(scale * g)


class TensorFlowTrainer(Trainer):
    def __init__(self, backend, model: LMParams, *, impl, lr, clip, mode, device):
        self.backend, self.impl, self.mode, self.device = "tensorflow", impl, mode, device
        self.spec, self.dtype = model.spec, model.dtype
        self._tf_device = _TF_DEVICES[device]
        with tf.device(self._tf_device):
            self.stack = backend._stack(model.spec, model.dtype) if impl == "native" else None
            self.gru_vars = [tf.Variable(a) for a in _gru_arrays(impl, model.gru)]
            self.W_hq, self.b_q = tf.Variable(model.W_hq), tf.Variable(model.b_q)
        self.variables = self.gru_vars + [self.W_hq, self.b_q]
        # reset-before: the variables are the scratch layout's, one per lm_keys name, and each
        # b_h stays put; reset-after trains every variable (Keras' native one holds three a cell)
        self.trained = self.variables if model.spec.reset_after else [
            v for v, k in zip(self.variables, lm_keys(model.spec), strict=True)
            if k in trained(model.spec)]
        lr, clip = tf.constant(lr, self.dtype), tf.constant(clip, self.dtype)
        # XLA compiles a tf.while_loop better than 35 unrolled steps; plain graphs the reverse
        loop = "while" if mode == "xla" else "unroll"

        def loss_and_grads(ids, labels, state):
            with tf.GradientTape() as tape:
                logits, state = _lm_forward(self.stack, self.spec, self.gru_vars, self.W_hq,
                                            self.b_q, ids, state, loop)
                loss = _lm_loss(logits, labels)
            return loss, state, [tf.convert_to_tensor(g) for g in
                                 tape.gradient(loss, self.trained)]

        def step(ids, labels, state):
            loss, state, grads = loss_and_grads(ids, labels, state)
            clip_and_sgd(self.trained, grads, lr, clip)
            return loss, state

        def replica_step(ids, labels, state):
            # data-parallel: XLA cannot compile the collective, so only the forward and
            # backward pass are compiled (an XLA cluster inside the graph); the all-reduce and
            # the update run in the graph around it
            loss, state, grads = local_grads(ids, labels, state)
            clip_and_sgd(self.trained, self._average_gradients(grads), lr, clip)
            return loss, state

        compiled = (lambda f, **kw: f) if mode == "eager" else tf.function
        self._train_step = compiled(step, jit_compile=mode == "xla")
        local_grads = compiled(loss_and_grads, jit_compile=mode == "xla")
        self._replica_step = replica_step
        self._distributed_step = None  # built at the first step (make_trainer sets the world)

    def _epoch_context(self):
        return tf.device(self._tf_device)

    def _to_device(self, X, Y):
        return _batch_tensors(X, Y)

    def _zeros_state(self, N):
        return _zeros_state(self.spec, N, self.dtype)

    def _step(self, ids, labels, state):
        if self._distributed:
            if self._distributed_step is None:
                self._distributed_step = _in_strategy(self._replica_step, self.mode)
            return self._distributed_step(ids, labels, state)
        return self._train_step(ids, labels, state)

    def _fetch_losses(self, handles):
        return tf.stack(handles).numpy()  # the losses stay on the device until the epoch ends

    # -- data-parallel: tf.distribute.MultiWorkerMirroredStrategy's collectives --------------
    def _all_reduce(self, tensors, *, average):
        # inside the strategy's replica function (see _in_strategy): one batched all-reduce
        summed = _replica_sum(tensors)
        return [t / self.world.size for t in summed] if average else list(summed)

    def _all_reduce_host(self, values):
        if self._host_mean is None:
            size = self.world.size

            def mean(v):
                return _replica_sum([v])[0] / size

            self._host_mean = tf.function(_in_strategy(mean, "eager"),
                                          input_signature=[tf.TensorSpec([None], tf.float32)])
        return self._host_mean(tf.constant(values, tf.float32)).numpy()

    _host_mean = None

    def params(self) -> LMParams:
        gru = _gru_params_from_arrays(self.impl, self.spec, [v.numpy() for v in self.gru_vars])
        return LMParams(gru, self.W_hq.numpy(), self.b_q.numpy())


#: this process's tf.distribute.MultiWorkerMirroredStrategy (TensorFlowBackend._init_world)
_strategy = None


def _in_strategy(fn, mode):
    """``fn`` run as this worker's replica of the strategy (its collectives then reach the other
    workers), on the worker's device, as a graph unless ``mode`` is eager."""
    def run(*args):
        # the worker's device by name: without it the collective has no destination in a graph
        with tf.device(_strategy.extended.worker_devices[0]):
            out = _strategy.run(fn, args=args)
        return tf.nest.map_structure(lambda v: _strategy.experimental_local_results(v)[0], out)

    return run if mode == "eager" else tf.function(run)


def _replica_sum(tensors):
    """The tensors summed over every worker's replica (call inside :func:`_in_strategy`). Each
    is first copied on the replica's device: the collective's destination is its input's
    device, which a graph's inputs and function results do not carry."""
    local = [tf.identity(t) for t in tensors]
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)


def _zeros_state(spec: GRUSpec, N: int, dtype):
    return tf.zeros(spec.state_shape(N), dtype)


class TensorFlowPredictor(Predictor):
    """The model as constant tensors on the device, run eagerly (the scratch loop unrolled, or
    the Keras stack) a few tokens at a time."""

    def __init__(self, backend, model: LMParams, impl: str, device: str):
        self.spec, self.dtype, self._tf_device = model.spec, model.dtype, _TF_DEVICES[device]
        with tf.device(self._tf_device):
            self.stack = backend._stack(model.spec, model.dtype) if impl == "native" else None
            self.gru = [tf.constant(a) for a in _gru_arrays(impl, model.gru)]
            self.W_hq, self.b_q = tf.constant(model.W_hq), tf.constant(model.b_q)

    def step(self, ids, state=None):
        N = ids.shape[0]
        with tf.device(self._tf_device):
            if state is None:
                state = _zeros_state(self.spec, N, self.dtype)
            ids_T = tf.constant(np.ascontiguousarray(ids.T), tf.int32)
            logits, h_n = _lm_forward(self.stack, self.spec, self.gru, self.W_hq, self.b_q,
                                      ids_T, state)
            return logits[-N:].numpy(), h_n


class TensorFlowBackend(Backend):
    name = "tensorflow"
    devices = ("cpu", "gpu")
    impls = {
        "scratch": ImplInfo(
            "the book's loop in TensorFlow ops, gradients by tf.GradientTape",
            # measured at the book's config on a quiet 2-core machine: the unrolled loop compiled
            # by XLA 98-101k tokens/s, as a plain graph 86-87k, eager ~26k
            modes=("xla", "graph", "eager")),
        "native": ImplInfo(
            "keras.layers.GRU (reset_after True or False) stacked, in keras.layers.Bidirectional",
            # measured: Keras' tf.while_loop compiled by XLA runs ~2.5x faster than as a graph
            modes=("xla", "graph", "eager"),
            why_not={"reset_before_bias":
                     "keras' reset-before GRU holds one bias per gate (the canonical b_x + b_h, "
                     "all the cell depends on), so parameters read back from it have b_h = 0"}),
    }

    def __init__(self):
        super().__init__()
        self._stacks = {}

    def _init_world(self, world, device):
        """tf.distribute.MultiWorkerMirroredStrategy over CPU collective ops (ring all-reduce),
        configured by ``$TF_CONFIG`` (``d2lgru train --nproc`` sets it for each worker). It
        must be created before TensorFlow's runtime starts, so before any other TF op."""
        global _strategy
        if _strategy is not None:
            return
        if device != "cpu":
            raise UnsupportedError("data-parallel training on the tensorflow backend runs on "
                                   "CPU collective ops only; use --device cpu")
        from ..distributed import World
        described = World.from_env({"TF_CONFIG": os.environ.get("TF_CONFIG", "")})
        if (described.rank, described.size) != (world.rank, world.size):
            raise UnsupportedError(
                f"tensorflow's MultiWorkerMirroredStrategy reads the cluster from $TF_CONFIG, "
                f"which describes rank {described.rank} of {described.size}, not rank "
                f"{world.rank} of {world.size}; set TF_CONFIG for this worker (d2lgru train "
                f"--nproc sets it)")
        ring = tf.distribute.experimental.CommunicationImplementation.RING
        try:
            _strategy = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(
                    implementation=ring))
        except RuntimeError as exc:
            raise UnsupportedError(f"tensorflow could not start MultiWorkerMirroredStrategy: "
                                   f"{exc}; it must be created before TensorFlow's runtime "
                                   f"starts (start a fresh process)") from None

    def version(self) -> str:
        _import_tensorflow()
        return tf.__version__

    def _setup(self):
        _import_tensorflow()

    # Threads: the policy's default preference (every usable CPU). TensorFlow's intra-op pool is
    # Eigen's, not OpenMP, so OMP_WAIT_POLICY does not reach it, and the switch that stops its
    # spinning (ConfigProto.experimental.disable_thread_spinning) is not reachable from TF2's
    # eager API; but Eigen spins only briefly before it sleeps, and two trainings with two
    # threads each did not collapse (benchmarks/contention.py, 2-core machine, load 5-12).

    def framework_threads(self):
        return tf.config.threading.get_intra_op_parallelism_threads()

    def _set_threads(self, n):
        # Both pools are sized once, when TensorFlow's runtime starts (its first op); after
        # that tf.config.threading refuses any change, so a count that differs from the one in
        # force is reported as fixed (Backend.set_threads then says so, or keeps it).
        super()._set_threads(n)
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
        except RuntimeError:
            # 0 is TensorFlow's "unset": one thread per CPU it may run on
            current = (tf.config.threading.get_intra_op_parallelism_threads()
                       or len(os.sched_getaffinity(0)))
            return current if current != n else None
        return None

    def _why_threads_fixed(self, fixed):
        return (f"TensorFlow sizes its thread pools when its runtime starts (its first op) and "
                f"this process's runtime has started with {fixed} intra-op thread(s); set "
                f"$D2LGRU_THREADS "
                f"or call set_threads before the backend's first use")

    def _stack(self, spec, dtype) -> KerasStack:
        key = (spec, np.dtype(getattr(dtype, "as_numpy_dtype", dtype)).name)
        if key not in self._stacks:
            self._stacks[key] = KerasStack(spec, dtype)
        return self._stacks[key]

    # -- native layout ----------------------------------------------------------------------
    def _native_reference(self, spec, X, h0, seed):
        stack = KerasStack(spec, X.dtype, seed=seed)
        Y, h_n = stack(stack.variables(), tf.transpose(X, [1, 0, 2]), tf.constant(h0))
        native = {v.path: np.asarray(v.numpy()) for v in stack.variables()}
        return from_native(native, spec), tf.transpose(Y, [1, 0, 2]).numpy(), h_n.numpy()

    # -- the GRU ----------------------------------------------------------------------------
    def _tensors(self, impl, params):
        arrays = (_layout.cell_arrays(params) if impl == "scratch"
                  else list(to_native(params).values()))
        return [tf.constant(a) for a in arrays]

    def _gru(self, impl, params, X, h0):
        values = self._tensors(impl, params)
        run = self._run_scratch if impl == "scratch" else self._run_native
        Y, h_n = run(params.spec, values, tf.constant(X), tf.constant(h0))
        return Y.numpy(), h_n.numpy()

    def _run_scratch(self, spec, values, X, h0):
        return scratch_forward(spec, _layout.nest(values, spec), X, h0)

    def _run_native(self, spec, values, X, h0):
        Y, h_n = self._stack(spec, X.dtype)(values, tf.transpose(X, [1, 0, 2]), h0)
        return tf.transpose(Y, [1, 0, 2]), h_n

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        spec = params.spec
        values = self._tensors(impl, params)
        X, h0 = tf.constant(X), tf.constant(h0)
        run = self._run_scratch if impl == "scratch" else self._run_native
        with tf.GradientTape() as tape:
            tape.watch(values + [X, h0])
            Y, h_n = run(spec, values, X, h0)
            scalar = tf.reduce_sum(Y * dY) + tf.reduce_sum(h_n * dh_n)
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(scalar, values + [X, h0])]
        *gp, dX, dh0 = grads
        if impl == "scratch":
            dparams = _layout.cell_params(spec, gp)
        else:
            dparams = grads_from_native(dict(zip(keras_shapes(spec), gp)), spec)
        return dparams, dX, dh0

    # -- the language model ------------------------------------------------------------------
    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        spec = model.spec
        stack = self._stack(spec, model.dtype) if impl == "native" else None
        gru_vars = [tf.constant(a) for a in _gru_arrays(impl, model.gru)]
        W_hq, b_q = tf.constant(model.W_hq), tf.constant(model.b_q)
        with tf.GradientTape() as tape:
            tape.watch(gru_vars + [W_hq, b_q])
            ids, labels = _batch_tensors(X, Y)
            logits, h_n = _lm_forward(stack, spec, gru_vars, W_hq, b_q, ids, tf.constant(state))
            loss = _lm_loss(logits, labels)
        *g_gru, dW_hq, db_q = [tf.convert_to_tensor(g).numpy()
                               for g in tape.gradient(loss, gru_vars + [W_hq, b_q])]
        grads = LMParams(_gru_params_from_arrays(impl, spec, g_gru), dW_hq, db_q)
        return LMResult(float(loss.numpy()), grads, logits.numpy(), h_n.numpy())

    def _device_absent(self, device):
        _import_tensorflow()
        if tf.config.list_physical_devices("GPU"):
            return None
        return ("TensorFlow found no GPU (tf.config.list_physical_devices('GPU') is empty"
                + ("" if tf.test.is_built_with_cuda() else
                   "; this build, like the tensorflow-cpu wheel, has no GPU support")
                + "), so use device 'cpu'")

    def _make_trainer(self, model, *, impl, lr, clip, mode, device):
        return TensorFlowTrainer(self, model, impl=impl, lr=lr, clip=clip, mode=mode,
                                 device=device)

    def _make_predictor(self, model, *, impl, device):
        return TensorFlowPredictor(self, model, impl, device)


backend = TensorFlowBackend()
