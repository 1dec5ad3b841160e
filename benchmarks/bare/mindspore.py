"""Bare MindSpore: the book's concise model (``nn.GRU`` + ``nn.Dense`` on one-hot input), written
the MindSpore 2 way (``value_and_grad`` over a function), no d2lgru.

Modes: ``graph`` (``GRAPH_MODE`` context and the whole step -- forward, loss, gradients,
``ops.clip_by_global_norm``, SGD -- compiled by ``ms.jit``), ``jit`` (the same ``ms.jit`` step in
the default PyNative context) and ``pynative`` (everything eager).
"""

import os
import sys

os.environ.setdefault("GLOG_v", "3")  # errors only

import mindspore as ms
from mindspore import nn, ops

from benchmarks.bare._common import trainer_factory

NAME = "mindspore"
MODES = ("graph", "jit", "pynative")


def _target(device):
    return "GPU" if str(device).lower() in ("gpu", "cuda") else "CPU"


def setup(threads=None, device="cpu"):
    ms.set_device(_target(device))
    if threads:
        ms.device_context.cpu.op_tuning.threads_num(threads)


def info():
    return {"framework": "mindspore", "version": ms.__version__,
            "device_target": ms.get_context("device_target"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


class RNNModel(nn.Cell):
    """The book's ``RNNModel`` (section 9.6, concise RNN) around ``nn.GRU``."""

    def __init__(self, vocab_size, num_hiddens):
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.rnn = nn.GRU(vocab_size, num_hiddens)
        self.dense = nn.Dense(num_hiddens, vocab_size)

    def construct(self, inputs, state):
        X = ops.one_hot(inputs.T, self.vocab_size).astype(ms.float32)
        Y, state = self.rnn(X, state)
        return self.dense(Y.reshape((-1, self.num_hiddens))), state


class Trainer:
    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode="graph", device="cpu",
                 lr=1.0, clip=1.0, seed=0):
        ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
        ms.set_seed(seed)
        self.net = RNNModel(vocab, hidden)
        self.loss = nn.CrossEntropyLoss()
        self.opt = nn.SGD(self.net.trainable_params(), learning_rate=lr)
        self.grad_fn = ms.value_and_grad(self._forward, None, self.opt.parameters, has_aux=True)
        self.clip = clip
        self.state0 = ops.zeros((1, batch_size, hidden), ms.float32)
        self.step = self._step if mode == "pynative" else ms.jit(self._step)

    def _forward(self, X, y, state):
        y_hat, state = self.net(X, state)
        return self.loss(y_hat, y), state

    def _step(self, X, y, state):
        (loss, state), grads = self.grad_fn(X, y, state)
        self.opt(ops.clip_by_global_norm(grads, self.clip))
        return loss, ops.stop_gradient(state)

    def train_epoch(self, batches):
        state, losses = self.state0, []
        for X, Y in batches:
            loss, state = self.step(ms.Tensor(X), ms.Tensor(Y.T.reshape(-1).astype("int32")),
                                    state)
            losses.append(loss)
        return ops.stack(losses).asnumpy()


make_trainer = trainer_factory(Trainer, MODES)


def gemm(n, device="cpu"):
    a, b = (ops.randn((n, n), dtype=ms.float32) for _ in range(2))

    def run():
        ops.matmul(a, b)[0, 0].asnumpy()  # reading one element waits for the product
    return run


if __name__ == "__main__":
    from benchmarks.bare._common import standalone
    standalone(sys.modules[__name__])
