"""Bare PaddlePaddle: the book's concise model (``nn.GRU(time_major=True)`` + ``nn.Linear`` on
one-hot input), no d2lgru.

Modes: ``static`` (one static program: forward, loss, backward, global-norm clipping and SGD, run
by an ``Executor``), ``to_static`` (the model's forward through ``paddle.jit.to_static``; backward
and the optimizer in dynamic graph) and ``dygraph`` (the book's code). Clipping is the framework's
own ``ClipGradByGlobalNorm`` inside ``paddle.optimizer.SGD``.
"""

import sys
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "No ccache found", at import
    import paddle
import numpy as onp
from paddle import nn
from paddle.nn import functional as F

NAME = "paddle"
MODES = ("static", "to_static", "dygraph")


def _device(device):
    return "gpu" if str(device).lower() in ("gpu", "cuda") else "cpu"


def setup(threads=None, device="cpu"):
    if threads:
        paddle.base.core.set_num_threads(threads)
    if _device(device) == "gpu" and not paddle.is_compiled_with_cuda():
        raise RuntimeError("device gpu asked for, but this Paddle has no CUDA")
    paddle.set_device(_device(device))


def info():
    return {"framework": "paddle", "version": paddle.__version__,
            "device": paddle.device.get_device(), "cuda": paddle.is_compiled_with_cuda()}


class RNNModel(nn.Layer):
    """The book's ``RNNModel`` (section 9.6, concise RNN) around ``nn.GRU``."""

    def __init__(self, vocab_size, num_hiddens):
        super().__init__()
        self.vocab_size, self.num_hiddens = vocab_size, num_hiddens
        self.rnn = nn.GRU(vocab_size, num_hiddens, time_major=True)
        self.linear = nn.Linear(num_hiddens, vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T, self.vocab_size)
        Y, state = self.rnn(X, state)
        return self.linear(Y.reshape((-1, self.num_hiddens))), state


def _optimizer(lr, clip, parameters=None):
    return paddle.optimizer.SGD(learning_rate=lr, parameters=parameters,
                                grad_clip=nn.ClipGradByGlobalNorm(clip))


class DynamicTrainer:
    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode, lr, clip, seed):
        paddle.seed(seed)
        self.net = RNNModel(vocab, hidden)
        self.forward = paddle.jit.to_static(self.net) if mode == "to_static" else self.net
        self.loss = nn.CrossEntropyLoss()
        self.opt = _optimizer(lr, clip, self.net.parameters())
        self.state0 = paddle.zeros((1, batch_size, hidden))

    def train_epoch(self, batches):
        state, losses = self.state0, []
        for X, Y in batches:
            X, y = paddle.to_tensor(X), paddle.to_tensor(Y.T.reshape(-1))
            y_hat, state = self.forward(X, state)
            loss = self.loss(y_hat, y)
            loss.backward()
            self.opt.step()
            self.opt.clear_grad()
            state = state.detach()
            losses.append(loss)
        return paddle.stack(losses).numpy()


class StaticTrainer:
    """The whole step as one program; the state goes out and back in as a feed (``[1, N, H]``)."""

    def __init__(self, vocab, hidden, batch_size, num_steps, *, lr, clip, seed, device):
        paddle.enable_static()
        try:
            self.main, startup = paddle.static.Program(), paddle.static.Program()
            self.main.random_seed = startup.random_seed = seed
            with paddle.static.program_guard(self.main, startup):
                X = paddle.static.data("X", [batch_size, num_steps], "int64")
                y = paddle.static.data("y", [num_steps * batch_size], "int64")
                state = paddle.static.data("state", [1, batch_size, hidden], "float32")
                net = RNNModel(vocab, hidden)
                y_hat, new_state = net(X, state)
                loss = nn.CrossEntropyLoss()(y_hat, y)
                _optimizer(lr, clip).minimize(loss)
            place = paddle.CUDAPlace(0) if _device(device) == "gpu" else paddle.CPUPlace()
            self.exe = paddle.static.Executor(place)
            self.exe.run(startup)
            self.fetch = [loss, new_state]
        finally:
            paddle.disable_static()
        self.state0 = onp.zeros((1, batch_size, hidden), onp.float32)

    def train_epoch(self, batches):
        paddle.enable_static()
        try:
            state, losses = self.state0, []
            for X, Y in batches:
                loss, state = self.exe.run(self.main, feed={"X": X, "y": Y.T.reshape(-1),
                                                            "state": state},
                                           fetch_list=self.fetch)
                losses.append(loss)
            return onp.asarray(losses, onp.float32).reshape(-1)
        finally:
            paddle.disable_static()


def make_trainer(vocab, hidden, batch_size, num_steps, *, mode="static", device="cpu", lr=1.0,
                 clip=1.0, seed=0):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "static":
        return StaticTrainer(vocab, hidden, batch_size, num_steps, lr=lr, clip=clip, seed=seed,
                             device=device)
    return DynamicTrainer(vocab, hidden, batch_size, num_steps, mode=mode, lr=lr, clip=clip,
                          seed=seed)


def gemm(n, device="cpu"):
    a, b = (paddle.randn((n, n)) for _ in range(2))

    def run():
        float(paddle.matmul(a, b)[0, 0])  # reading one element waits for the product
    return run


if __name__ == "__main__":
    from benchmarks.bare._common import standalone
    standalone(sys.modules[__name__])
