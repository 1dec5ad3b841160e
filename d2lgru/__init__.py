"""d2lgru: the GRU chapter of *Dive into Deep Learning* as one spec that runs on NumPy, PyTorch,
TensorFlow/Keras, MXNet, PaddlePaddle and MindSpore.

Importing this package imports no deep-learning framework; a backend's framework is imported
the first time :func:`get_backend` is asked for it.
"""

from .backends import (ALIASES, BACKENDS, UnsupportedError, available_backends, backend_context,
                       get_backend)
from .model import LMParams, init_lm
from .spec import GATES, CellParams, GRUParams, GRUSpec, ParamsFileError, init_params

__version__ = "0.1.0"

__all__ = ["ALIASES", "BACKENDS", "GATES", "CellParams", "GRUParams", "GRUSpec", "LMParams",
           "ParamsFileError", "UnsupportedError", "available_backends", "backend_context",
           "get_backend", "init_lm", "init_params", "__version__"]
