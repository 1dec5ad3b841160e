"""Bare JAX: the book's concise model (a GRU over one-hot input, then a dense layer), no d2lgru.

JAX has no GRU layer of its own, so ``jit`` writes the cuDNN (reset-after) cell that
``torch.nn.GRU`` computes straight in ``jax.numpy``: one matmul projects every step's one-hot
input, ``lax.scan`` runs the recurrence, cross-entropy, the global-norm clip and SGD follow, and
the whole step is one ``jax.jit`` with the parameters donated. ``flax`` is the same step around
Flax's layers (``nn.RNN(nn.GRUCell)`` + ``nn.Dense``), ``eager`` the ``jit`` step under
``jax.disable_jit()``. ``unroll`` (``lax.scan``'s, 1 by default) is a keyword of
:class:`Trainer` for measuring.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from benchmarks.bare._common import trainer_factory

NAME = "jax"
MODES = ("jit", "flax", "eager")


def _device(device):
    return jax.devices("gpu" if str(device).lower() in ("gpu", "cuda") else "cpu")[0]


def setup(threads=None, device="cpu"):
    # XLA sizes its CPU thread pool from the cores this process may run on, once, when the
    # backend starts; no flag of jaxlib 0.10 shrinks it, so a thread count is an affinity mask
    if threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
    _device(device)  # raises RuntimeError when this jaxlib has no such device


def info():
    import flax
    return {"framework": "jax", "version": jax.__version__, "flax": flax.__version__,
            "cpu_cores_allowed": len(os.sched_getaffinity(0)),
            "devices": [str(d) for d in jax.devices()]}


def _cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _gru(params, X, h, unroll):
    """The reset-after cell over time-major one-hot ``X [T, N, V]``; columns r | z | n."""
    H = h.shape[-1]
    xp = X @ params["W_x"] + params["b_x"]

    def step(h, x):
        hp = h @ params["W_h"] + params["b_h"]
        r = jax.nn.sigmoid(x[:, :H] + hp[:, :H])
        z = jax.nn.sigmoid(x[:, H:2 * H] + hp[:, H:2 * H])
        n = jnp.tanh(x[:, 2 * H:] + r * hp[:, 2 * H:])
        h = (1 - z) * n + z * h
        return h, h

    h, Y = jax.lax.scan(step, h, xp, unroll=unroll)
    return Y, h


class Trainer:
    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode="jit", device="cpu",
                 lr=1.0, clip=1.0, seed=0, unroll=1):
        self.vocab, self.dev, self.mode = vocab, _device(device), mode
        key = jax.random.key(seed)
        if mode == "flax":
            self.rnn = nn.RNN(nn.GRUCell(hidden), time_major=True, return_carry=True,
                              unroll=unroll)
            self.dense = nn.Dense(vocab)
            k1, k2 = jax.random.split(key)
            x = jnp.zeros((num_steps, batch_size, vocab))
            params = {"rnn": self.rnn.init(k1, x)["params"],
                      "dense": self.dense.init(k2, jnp.zeros((1, hidden)))["params"]}
        else:  # the book's init: N(0, 0.01) weights, zero biases
            shapes = {"W_x": (vocab, 3 * hidden), "W_h": (hidden, 3 * hidden),
                      "W_hq": (hidden, vocab)}
            keys = dict(zip(shapes, jax.random.split(key, len(shapes))))
            params = {k: 0.01 * jax.random.normal(keys[k], s) for k, s in shapes.items()}
            params.update(b_x=jnp.zeros(3 * hidden), b_h=jnp.zeros(3 * hidden),
                          b_q=jnp.zeros(vocab))
        self.params = jax.device_put(params, self.dev)
        self.state0 = jax.device_put(jnp.zeros((batch_size, hidden)), self.dev)

        def loss_fn(params, X, y, state):
            onehot = jax.nn.one_hot(X.T, vocab)
            if mode == "flax":
                state, Y = self.rnn.apply({"params": params["rnn"]}, onehot, initial_carry=state)
                logits = self.dense.apply({"params": params["dense"]}, Y.reshape(-1, hidden))
            else:
                Y, state = _gru(params, onehot, state, unroll)
                logits = Y.reshape(-1, hidden) @ params["W_hq"] + params["b_q"]
            return _cross_entropy(logits, y), state

        def step(params, X, y, state):
            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, X, y, state)
            leaves = jax.tree_util.tree_leaves(grads)
            norm = jnp.sqrt(sum(jnp.sum(g * g) for g in leaves))
            scale = lr * jnp.minimum(1.0, clip / norm)
            return jax.tree_util.tree_map(lambda p, g: p - scale * g, params, grads), loss, state

        self.step = step if mode == "eager" else jax.jit(step, donate_argnums=0)

    def train_epoch(self, batches):
        state, losses = self.state0, []
        with jax.disable_jit(self.mode == "eager"):
            for X, Y in batches:
                X = jax.device_put(X.astype(np.int32), self.dev)
                y = jax.device_put(np.ascontiguousarray(Y.T, np.int32).reshape(-1), self.dev)
                self.params, loss, state = self.step(self.params, X, y, state)
                losses.append(loss)
            return np.asarray(jnp.stack(losses))


make_trainer = trainer_factory(Trainer, MODES)


def gemm(n, device="cpu"):
    dev = _device(device)
    a, b = (jax.device_put(jax.random.normal(k, (n, n)), dev)
            for k in jax.random.split(jax.random.key(0)))
    mm = jax.jit(jnp.matmul)

    def run():
        mm(a, b).block_until_ready()
    return run


if __name__ == "__main__":
    from benchmarks.bare._common import standalone
    standalone(sys.modules[__name__])
