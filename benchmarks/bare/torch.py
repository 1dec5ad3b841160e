"""Bare PyTorch: the book's concise model (``nn.GRU`` + ``nn.Linear`` on one-hot input), no d2lgru.

Modes: ``eager`` (the book's code) and ``compile`` (``torch.compile`` of the whole step: forward,
loss, backward; clipping and SGD stay the foreach kernels). Clipping is the framework's own global
norm (``clip_grad_norm_``), which, unlike the book's ``if norm > theta``, never waits on the device.
"""

import sys

import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.bare._common import trainer_factory

NAME = "torch"
MODES = ("eager", "compile")


def _device(device):
    return torch.device("cuda" if str(device).lower() in ("gpu", "cuda") else "cpu")


def setup(threads=None, device="cpu"):
    if threads:
        torch.set_num_threads(threads)
    if _device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device gpu asked for, but torch sees no CUDA device")


def info():
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"framework": "torch", "version": torch.__version__, "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(), "cuda_device": dev}


class RNNModel(nn.Module):
    """The book's ``RNNModel`` (section 9.6, concise RNN) around ``nn.GRU``."""

    def __init__(self, vocab_size, num_hiddens):
        super().__init__()
        self.vocab_size = vocab_size
        self.rnn = nn.GRU(vocab_size, num_hiddens)
        self.linear = nn.Linear(num_hiddens, vocab_size)

    def forward(self, inputs, state):
        X = F.one_hot(inputs.T.long(), self.vocab_size).to(torch.float32)
        Y, state = self.rnn(X, state)
        return self.linear(Y.reshape((-1, Y.shape[-1]))), state


class Trainer:
    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode="eager", device="cpu",
                 lr=1.0, clip=1.0, seed=0):
        torch.manual_seed(seed)
        self.device = _device(device)
        self.net = RNNModel(vocab, hidden).to(self.device)
        self.params = list(self.net.parameters())
        self.opt = torch.optim.SGD(self.params, lr=lr)
        self.clip = clip
        self.state0 = torch.zeros(1, batch_size, hidden, device=self.device)
        self.step = torch.compile(self._loss_and_grads) if mode == "compile" else self._loss_and_grads

    def _loss_and_grads(self, X, y, state):
        y_hat, state = self.net(X, state)
        loss = F.cross_entropy(y_hat, y)
        loss.backward()
        return loss.detach(), state.detach()

    def train_epoch(self, batches):
        state, losses = self.state0, []
        for X, Y in batches:
            X = torch.from_numpy(X).to(self.device, non_blocking=True)
            y = torch.from_numpy(Y).to(self.device, non_blocking=True).T.reshape(-1)
            self.opt.zero_grad(set_to_none=True)
            loss, state = self.step(X, y, state)
            nn.utils.clip_grad_norm_(self.params, self.clip)
            self.opt.step()
            losses.append(loss)
        return torch.stack(losses).cpu().numpy()


make_trainer = trainer_factory(Trainer, MODES)


def gemm(n, device="cpu"):
    dev = _device(device)
    a, b = (torch.randn(n, n, device=dev) for _ in range(2))
    c = torch.empty(n, n, device=dev)

    def run():
        torch.mm(a, b, out=c)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    return run


if __name__ == "__main__":
    from benchmarks.bare._common import standalone
    standalone(sys.modules[__name__])
