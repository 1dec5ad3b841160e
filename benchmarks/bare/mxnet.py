"""Bare MXNet (Gluon, NumPy interface): the book's concise model (``rnn.GRU`` + ``nn.Dense`` on
one-hot input), no d2lgru.

Modes: ``hybridize`` (the model as one cached graph, ``static_alloc``/``static_shape``) and
``imperative`` (the book's code). Clipping is the book's global norm, written without its
``if norm > theta`` so nothing waits on the engine mid-epoch: the scale is
``clip / max(norm, clip)``, which is 1 below the threshold and ``clip / norm`` above it.
"""

import os
import sys

import mxnet as mx
from mxnet import autograd, gluon, np, npx
from mxnet.gluon import nn, rnn

npx.set_np()

from benchmarks.bare._common import trainer_factory  # noqa: E402

NAME = "mxnet"
MODES = ("hybridize", "imperative")


def _ctx(device):
    return mx.gpu(0) if str(device).lower() in ("gpu", "cuda") else mx.cpu()


def setup(threads=None, device="cpu"):
    # MXNet reads OMP_NUM_THREADS / MXNET_CPU_WORKER_NTHREADS at import: the harness sets them
    if _ctx(device).device_type == "gpu" and mx.context.num_gpus() == 0:
        raise RuntimeError("device gpu asked for, but MXNet sees no GPU")


def info():
    return {"framework": "mxnet", "version": mx.__version__,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "worker_threads": os.environ.get("MXNET_CPU_WORKER_NTHREADS"),
            "gpus": mx.context.num_gpus()}


class RNNModel(nn.HybridBlock):
    """The book's ``RNNModel`` (section 9.6), hybridizable: ``hidden`` is fixed, not read off Y."""

    def __init__(self, vocab_size, num_hiddens):
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.rnn = rnn.GRU(num_hiddens)
        self.dense = nn.Dense(vocab_size, flatten=False)

    def hybrid_forward(self, F, inputs, state):
        X = F.npx.one_hot(inputs.T, self.vocab_size)
        Y, state = self.rnn(X, [state])
        return self.dense(Y.reshape(-1, self.num_hiddens)), state[0]


class Trainer:
    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode="hybridize", device="cpu",
                 lr=1.0, clip=1.0, seed=0):
        mx.random.seed(seed)
        self.ctx = _ctx(device)
        self.net = RNNModel(vocab, hidden)
        self.net.initialize(ctx=self.ctx)
        if mode == "hybridize":
            self.net.hybridize(static_alloc=True, static_shape=True)
        self.params = list(self.net.collect_params().values())
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.updater = gluon.Trainer(self.net.collect_params(), "sgd", {"learning_rate": lr})
        self.state0 = np.zeros((1, batch_size, hidden), ctx=self.ctx)
        self.clip = clip
        # parameters are created lazily: one forward pass makes them exist
        self.net(np.zeros((batch_size, num_steps), ctx=self.ctx), self.state0)

    def _clip(self):
        grads = [p.grad(self.ctx) for p in self.params]
        norm = np.sqrt(sum((g ** 2).sum() for g in grads))
        scale = self.clip / np.maximum(norm, self.clip)
        for g in grads:
            g *= scale

    def train_epoch(self, batches):
        state, losses = self.state0, []
        for X, Y in batches:
            X = np.array(X, ctx=self.ctx)
            y = np.array(Y.T.reshape(-1), ctx=self.ctx)
            with autograd.record():
                y_hat, state = self.net(X, state)
                loss = self.loss(y_hat, y).mean()
            loss.backward()
            state = state.detach()
            self._clip()
            self.updater.step(1)
            losses.append(loss)
        return np.stack(losses).asnumpy()


make_trainer = trainer_factory(Trainer, MODES)


def gemm(n, device="cpu"):
    ctx = _ctx(device)
    a, b = (np.random.normal(size=(n, n), ctx=ctx).astype("float32") for _ in range(2))

    def run():
        np.dot(a, b).wait_to_read()
    return run


if __name__ == "__main__":
    from benchmarks.bare._common import standalone
    standalone(sys.modules[__name__])
