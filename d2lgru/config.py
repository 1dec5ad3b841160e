"""A run's configuration: every option that defines a training, with the book's defaults.

It is stored in every checkpoint's ``state.json`` (:mod:`d2lgru.checkpoint`), so reading one back
checks every field's type and range.
"""

from __future__ import annotations

import dataclasses
import math

from .data import TOKEN_KINDS
from .errors import InvalidArgumentError, InvalidTypeError
from .spec import GATE_SETS


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; the book's defaults."""

    hidden_size: int = 256
    num_layers: int = 1
    reset_after: bool = False
    gates: str = "both"  # "none" is the plain RNN (exercise 3); ablations are exercise 4
    batch_size: int = 32
    num_steps: int = 35
    max_tokens: int = 10000
    token: str = "char"
    use_random_iter: bool = False
    lr: float = 1.0
    clip: float = 1.0
    epochs: int = 500
    seed: int = 0
    data: str | None = None
    #: SHA-1 of the corpus file the run trains on (filled in by :func:`train`)
    corpus_sha1: str | None = None

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "batch_size", "num_steps", "epochs"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise InvalidArgumentError(f"{name.replace('_', '-')} must be a positive integer, "
                                           f"got {value!r}")
        for name in ("max_tokens", "seed"):
            if type(getattr(self, name)) is not int:
                raise InvalidArgumentError(f"{name.replace('_', '-')} must be an integer, got "
                                           f"{getattr(self, name)!r}")
        if self.seed < 0:
            raise InvalidArgumentError(f"seed must be a non-negative integer, got {self.seed}")
        for name in ("lr", "clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not 0 < value < math.inf:
                raise InvalidArgumentError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("reset_after", "use_random_iter"):
            if type(getattr(self, name)) is not bool:
                raise InvalidArgumentError(f"{name} must be true or false, got "
                                           f"{getattr(self, name)!r}")
        if self.gates not in GATE_SETS:
            raise InvalidArgumentError(f"gates must be one of {', '.join(GATE_SETS)}, got "
                                       f"{self.gates!r}")
        if self.token not in TOKEN_KINDS:
            raise InvalidArgumentError(f"token must be one of {', '.join(TOKEN_KINDS)}, "
                                       f"got {self.token!r}")
        for name in ("data", "corpus_sha1"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(f"{name} must be a string or null, got "
                                           f"{getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d) -> "TrainConfig":
        """A configuration as ``dataclasses.asdict`` wrote it; unknown keys are an error."""
        if not isinstance(d, dict):
            raise InvalidTypeError(f"a training configuration must be an object, got "
                                   f"{type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidArgumentError(f"unknown configuration keys {', '.join(unknown)}")
        return cls(**d)
