"""Keras 3's own backends -- Keras' list, not d2lgru's registry -- and what each one's benchmark
run times (``benchmarks.run`` reads this without importing keras)."""

MODES_BY_BACKEND = {"tensorflow": ("fit", "jit_compile"), "torch": ("step",), "jax": ("fit",)}
KERAS_BACKENDS = tuple(MODES_BY_BACKEND)
