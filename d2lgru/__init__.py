"""d2lgru: the GRU chapter of *Dive into Deep Learning* as one spec that runs on NumPy, PyTorch,
TensorFlow/Keras, MXNet, PaddlePaddle and MindSpore.

Importing this package imports nothing but the standard library: the names below load their
module (NumPy included) when first used, and a backend's framework is imported the first time
:func:`get_backend` is asked for it. So ``d2lgru`` starts in milliseconds, and a Ctrl-C at any
moment of the command line's start reaches its handler instead of an import.
"""

import importlib

__version__ = "0.5.0"

#: public name -> the module that defines it
_EXPORTS = {
    "ALIASES": "backends", "BACKENDS": "backends", "UnsupportedError": "backends",
    "available_backends": "backends", "backend_context": "backends", "get_backend": "backends",
    "LMParams": "model", "init_lm": "model",
    "GATES": "spec", "CellParams": "spec", "GRUParams": "spec", "GRUSpec": "spec",
    "ParamsFileError": "spec", "init_params": "spec",
    "D2lgruError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

#: public modules, loaded when first used as ``d2lgru.data.load_data_time_machine``
_MODULES = ("backends", "checkpoint", "data", "errors", "model", "spec", "train")


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it here too
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'd2lgru' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
