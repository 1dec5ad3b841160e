"""Backend-specific tests: only the selected backend's file is collected, so each tox
environment runs its own (the numpy environment runs test_numpy.py)."""

import os

from d2lgru.backends import resolve_name

_selected = resolve_name(os.environ.get("D2LGRU_BACKEND") or None)
collect_ignore_glob = [f for f in ("test_numpy.py", "test_torch.py", "test_tensorflow.py",
                                   "test_mxnet.py", "test_paddle.py", "test_mindspore.py")
                       if f != f"test_{_selected}.py"]
