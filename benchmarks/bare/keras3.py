"""Keras 3: the book's concise model as a Keras user writes it, on whichever backend
``$KERAS_BACKEND`` names (tensorflow, torch or jax), no d2lgru.

One-hot input -> ``keras.layers.GRU(H, return_sequences=True, return_state=True,
stateful=True)`` -> ``Dense(V)``, SGD at lr 1 with ``global_clipnorm=1``, the mean
cross-entropy, trained by ``model.fit``. ``fit`` carries the state the book's way: a stateful
layer keeps each row's last state in a variable (so no gradient flows back into the previous
batch, the book's ``detach``) and starts the next batch from it, and ``train_epoch`` resets it
to zeros before each epoch (the book's ``state = None``). Consecutive batches of the epoch are
handed to one ``fit`` call in order (``shuffle=False``), so row i of a batch continues row i of
the batch before. On torch, ``fit`` cannot train a stateful layer (Keras 3.15 assigns the state
variable in place inside the step, and torch's backward refuses a tensor modified in place:
"one of the variables needed for gradient computation has been modified by an inplace
operation"), so torch runs ``step``: Keras' documented custom training loop for torch (the
model takes the state as a second input and returns the new one, which the loop detaches and
feeds to the next batch), the same model, loss and optimizer.

Modes: ``fit`` (Keras' default ``jit_compile="auto"``: XLA on jax, and on tensorflow when the
model allows it; plain on torch), ``jit_compile`` (``True``: XLA, or ``torch.compile`` on
torch), ``no_jit`` (``False``: a ``tf.function`` graph on tensorflow, eager on torch) and
``step`` (torch only, see above). ``benchmarks.bare.KERAS_MODES`` leaves out the modes that repeat ``fit``
(or fail) on a backend.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from benchmarks.bare._common import trainer_factory

NAME = "keras3"
MODES = ("fit", "jit_compile", "no_jit", "step")
_JIT = {"fit": "auto", "jit_compile": True, "no_jit": False}


def backend() -> str:
    return keras.backend.backend()


def setup(threads=None, device="cpu"):
    if str(device).lower() in ("gpu", "cuda"):
        raise RuntimeError("the Keras 3 rows are CPU only: run them on the CPU")
    if threads and backend() == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    elif threads and backend() == "torch":
        import torch
        torch.set_num_threads(threads)


def info():
    framework = sys.modules.get(backend()) or __import__(backend())
    return {"framework": f"keras {keras.__version__} on {backend()}", "version": keras.__version__,
            "keras_backend": backend(), "backend_version": getattr(framework, "__version__", None)}


class Trainer:
    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode="fit", device="cpu",
                 lr=1.0, clip=1.0, seed=0):
        keras.utils.set_random_seed(seed)
        self.batch_size = batch_size
        tokens = keras.Input(batch_shape=(batch_size, num_steps), dtype="int32")
        self.rnn = keras.layers.GRU(hidden, return_sequences=True, return_state=True,
                                    stateful=True)
        outputs, _ = self.rnn(keras.ops.one_hot(tokens, vocab))
        self.model = keras.Model(tokens, keras.layers.Dense(vocab)(outputs))
        self.model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=lr, global_clipnorm=clip),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=_JIT[mode])
        self.jit_compile = self.model.jit_compile  # what "auto" resolved to

    def train_epoch(self, batches):
        """One ``fit`` epoch over ``batches`` in order, from a zero state; its mean loss."""
        X = np.concatenate([x for x, _ in batches]).astype(np.int32)
        Y = np.concatenate([y for _, y in batches]).astype(np.int32)
        self.rnn.reset_state()
        history = self.model.fit(X, Y, batch_size=self.batch_size, epochs=1, shuffle=False,
                                 verbose=0)
        return np.asarray(history.history["loss"][-1:], dtype=np.float64)


class TorchStepTrainer:
    """Keras' custom training loop for torch, the state an input and an output of the model."""

    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode="step", device="cpu",
                 lr=1.0, clip=1.0, seed=0):
        if backend() != "torch":
            raise ValueError(f"mode 'step' is the torch loop; KERAS_BACKEND is {backend()!r}")
        import torch
        self.torch = torch
        keras.utils.set_random_seed(seed)
        tokens = keras.Input(batch_shape=(batch_size, num_steps), dtype="int32")
        state = keras.Input(batch_shape=(batch_size, hidden))
        outputs, new_state = keras.layers.GRU(hidden, return_sequences=True,
                                              return_state=True)(
            keras.ops.one_hot(tokens, vocab), initial_state=state)
        self.model = keras.Model([tokens, state], [keras.layers.Dense(vocab)(outputs), new_state])
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self.opt = keras.optimizers.SGD(learning_rate=lr, global_clipnorm=clip)
        self.opt.build(self.model.trainable_variables)
        self.state0 = np.zeros((batch_size, hidden), np.float32)
        self.jit_compile = False

    def train_epoch(self, batches):
        torch, params = self.torch, self.model.trainable_variables
        state, losses = torch.as_tensor(self.state0), []
        for X, Y in batches:
            logits, state = self.model([torch.as_tensor(X, dtype=torch.int32), state],
                                       training=True)
            loss = self.loss(torch.as_tensor(Y), logits)
            self.model.zero_grad()
            loss.backward()
            with torch.no_grad():
                self.opt.apply([v.value.grad for v in params], params)
            state = state.detach()
            losses.append(loss.detach())
        return torch.stack(losses).numpy()


make_trainer = trainer_factory(
    lambda *a, mode, **kw: (TorchStepTrainer if mode == "step" else Trainer)(*a, mode=mode, **kw),
    MODES)


if __name__ == "__main__":
    from benchmarks.bare._common import standalone
    standalone(sys.modules[__name__])
