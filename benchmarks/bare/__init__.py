"""The book's concise GRU language model written straight against each framework, no d2lgru code.

One module per framework, each with the same surface::

    NAME, MODES                       # framework name; execution modes, the usual fastest first
    setup(threads, device)            # per-framework settings, before anything else runs
    info() -> dict                    # version, threads and device as the framework reports them
    make_trainer(vocab, hidden, batch_size, num_steps, *, mode, device, lr, clip, seed)
        -> trainer with train_epoch([(X, Y), ...]) -> per-batch losses (NumPy)
    gemm(n, device) -> callable       # one n x n float32 matrix product, finished when it returns

``python -m benchmarks.bare.<name>`` times every mode at the book's configuration.
"""

#: Keras 3's own backends -- Keras' list, not d2lgru's registry -- and the modes each one's
#: benchmark run times (``benchmarks.run`` reads this without importing keras)
KERAS_MODES = {"tensorflow": ("fit", "jit_compile"), "torch": ("step",), "jax": ("fit",)}
KERAS_BACKENDS = tuple(KERAS_MODES)
