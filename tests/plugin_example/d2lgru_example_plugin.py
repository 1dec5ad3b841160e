"""An example third-party backend: the whole contract of a d2lgru backend in one file.

A backend subclasses :class:`d2lgru.backends.Backend`, names itself (the entry point's name),
declares what each implementation can run (:class:`~d2lgru.backends.ImplInfo`: cells, layers,
dtypes, modes, gate ablations, and one sentence for each thing it lacks) and fills in four
hooks. NumPy arrays go in and out of every hook; the base class has already checked them. This
one computes with d2lgru's own NumPy oracle, so it passes the conformance suite exactly -- a
real framework's adapter does the same work in its framework's operations.
"""

from d2lgru.backends import Backend, ImplInfo
from d2lgru.backends import numpy_backend as oracle
from d2lgru.spec import GATE_SETS


class ExampleBackend(Backend):
    name = "example"
    framework = "numpy"  # version() reports this module's __version__
    impls = {"scratch": ImplInfo("the NumPy oracle, registered as a third-party plugin",
                                 gates=GATE_SETS)}

    def _gru(self, impl, params, X, h0):
        Y, h_n, _ = oracle.forward(params, X, h0)
        return Y, h_n

    def _gru_backward(self, impl, params, X, h0, dY, dh_n):
        _, _, caches = oracle.forward(params, X, h0)
        return oracle.backward(params, caches, dY, dh_n)

    def _lm_loss_and_grads(self, impl, model, X, Y, state):
        return oracle.lm_step(model, X, Y, state)

    def _make_trainer(self, model, **kw):
        trainer = oracle.NumpyTrainer(model, **kw)
        trainer.backend = self.name
        return trainer
