"""Bare TensorFlow/Keras: the book's concise model (``keras.layers.GRU`` + ``Dense`` on one-hot
input), no d2lgru.

Modes: ``function`` (the whole step -- forward, loss, gradients, clipping, SGD -- in one
``tf.function``), ``xla`` (the same with ``jit_compile=True``) and ``eager``. Keras 3 has no
``time_major``, so the model runs batch-major; the mean loss is the same in either order.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from benchmarks.bare._common import trainer_factory

NAME = "tensorflow"
MODES = ("function", "xla", "eager")


def _device(device):
    return "/GPU:0" if str(device).lower() in ("gpu", "cuda") else "/CPU:0"


def setup(threads=None, device="cpu"):
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    if _device(device) != "/CPU:0" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("device gpu asked for, but TensorFlow sees no GPU")


def info():
    return {"framework": "tensorflow", "version": tf.__version__, "keras": keras.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}


class Trainer:
    def __init__(self, vocab, hidden, batch_size, num_steps, *, mode="function", device="cpu",
                 lr=1.0, clip=1.0, seed=0):
        keras.utils.set_random_seed(seed)
        self.vocab, self.device = vocab, _device(device)
        with tf.device(self.device):
            self.rnn = keras.layers.GRU(hidden, return_sequences=True, return_state=True)
            self.dense = keras.layers.Dense(vocab)
            self.rnn.build((batch_size, num_steps, vocab))
            self.dense.build((batch_size, num_steps, hidden))
            self.params = self.rnn.trainable_variables + self.dense.trainable_variables
            self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            self.opt = keras.optimizers.SGD(learning_rate=lr)
            self.opt.build(self.params)
            self.state0 = tf.zeros((batch_size, hidden))
        self.clip = clip
        self.step = (self._step if mode == "eager" else
                     tf.function(self._step, jit_compile=(mode == "xla")))

    def _step(self, X, Y, state):
        with tf.GradientTape() as tape:
            Y_hat, state = self.rnn(tf.one_hot(X, self.vocab), initial_state=state)
            loss = self.loss(Y, self.dense(Y_hat))
        grads = tape.gradient(loss, self.params)
        grads, _ = tf.clip_by_global_norm(grads, self.clip)
        self.opt.apply(grads, self.params)
        return loss, tf.stop_gradient(state)

    def train_epoch(self, batches):
        state, losses = self.state0, []
        with tf.device(self.device):
            for X, Y in batches:
                loss, state = self.step(tf.constant(X), tf.constant(Y), state)
                losses.append(loss)
            return tf.stack(losses).numpy()


make_trainer = trainer_factory(Trainer, MODES)


def gemm(n, device="cpu"):
    with tf.device(_device(device)):
        a, b = (tf.random.normal((n, n)) for _ in range(2))

    def run():
        with tf.device(_device(device)):
            tf.reduce_sum(tf.linalg.matmul(a, b)[0, 0]).numpy()  # .numpy() waits; moves 4 bytes
    return run


if __name__ == "__main__":
    from benchmarks.bare._common import standalone
    standalone(sys.modules[__name__])
