"""The shared cases: every backend gets the same inputs and weights, and the oracle's answers.

Inputs are drawn in float64 from a generator seeded by the case's name, then rounded to float32
once, so a float32 run and the float64 oracle see exactly the same numbers and differ only in
arithmetic. Weights and biases are random and different for every gate (N(0, 0.5)): constant or
symmetric weights hide gate-order bugs. (Recurrent weights shrink as the hidden size grows, see
``_random_params``.)

Layer cases form a covering design instead of the full product of the factors (144 shapes per
cell variant; MindSpore compiles a graph per shape): every value of every factor appears, every
(layers, direction) combination meets every T and every N, and every pair of the factors T, N,
(layers, direction), h0 and input scale appears at least once. Each case runs in both cell
variants where the implementation declares them.

The upstream gradients ``dY``, ``dh_n`` are N(0, 1) / (T*N), the scale they have under a loss
averaged over the T*N outputs (as the book's mean cross-entropy is). With unit-scale upstream
gradients the float32 NumPy backend itself misses rtol 1e-3 / atol 1e-5 by up to 27x on a
35-step, 32-sequence, 2-layer bidirectional case with 32 hidden units: a few dW_x elements cancel
to 1e-3 of their array's largest element, while the normwise error stays at 8e-6 -- rounding,
not a bug. At the mean-loss scale its worst element uses under a tenth of the allowance.

Gate ablations and the plain RNN (``GRUSpec.gates``) run on three of the layer cases and one
language-model case, for the impls that declare them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from ..model import LMParams, init_lm
from ..spec import GRUParams, GRUSpec, init_params
from ..errors import InvalidArgumentError

VARIANTS = ("reset_before", "reset_after")
DTYPES = ("float32", "float64")
WEIGHT_SIGMA = 0.5
HEAD_SIGMA = 0.1  # keeps the language model's first loss near log(V), where training starts


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(name.encode()))


def _f32(a: np.ndarray) -> np.ndarray:
    """Rounded to float32 once, held in float64."""
    return np.asarray(a, np.float64).astype(np.float32).astype(np.float64)


def _random_params(spec: GRUSpec, rng: np.random.Generator) -> GRUParams:
    """Every array N(0, 0.5), except ``W_h``: N(0, 0.5 * sqrt(8 / H)), the recurrent gain of
    H = 8 at any hidden size. Larger gains make 35 steps chaotic once a gate is ablated (the
    plain RNN with H = 32 and N(0, 0.5): float32 and float64 NumPy differ 1000x beyond the
    tolerance) -- a test of rounding, not of backends."""
    recurrent = WEIGHT_SIGMA * np.sqrt(8 / spec.hidden_size)
    return GRUParams.from_arrays(spec, {
        k: _f32(rng.standard_normal(a.shape) * (recurrent if k.endswith("W_h") else WEIGHT_SIGMA))
        for k, a in init_params(spec, dtype=np.float64).to_arrays().items()})


def fingerprint(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# -- layer level ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerCase:
    T: int
    N: int
    input_size: int
    hidden_size: int
    num_layers: int
    bidirectional: bool
    nonzero_h0: bool
    scale: float  # X is N(0, 1) times this; 8 saturates the gates

    @property
    def name(self) -> str:
        return (f"T{self.T}-N{self.N}-I{self.input_size}-H{self.hidden_size}-L{self.num_layers}-"
                f"{'bi' if self.bidirectional else 'uni'}-{'h0' if self.nonzero_h0 else 'zero'}-"
                f"x{self.scale:g}")

    def spec(self, variant: str, gates: str = "both") -> GRUSpec:
        return GRUSpec(self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                       variant == "reset_after", gates)


def _layer(T, N, layers, bidirectional, h0, scale, I=5, H=8):
    return LayerCase(T, N, I, H, layers, bidirectional, h0, scale)


#: 12 cases per cell variant; see the module docstring for the design.
LAYER_CASES = (
    _layer(1, 1, 1, False, True, 1),
    _layer(1, 4, 1, True, False, 1),
    _layer(1, 32, 2, False, False, 1),
    _layer(1, 1, 2, True, False, 8),
    _layer(7, 4, 1, False, False, 8),
    _layer(7, 32, 1, True, True, 8),
    _layer(7, 1, 2, False, False, 1),
    _layer(7, 4, 2, True, True, 1, I=12),       # input wider than hidden
    _layer(35, 32, 1, False, True, 1, H=32),    # the book's shape, with a bigger hidden size
    _layer(35, 1, 1, True, True, 1),
    _layer(35, 4, 2, False, True, 8),
    _layer(35, 32, 2, True, False, 8),
)

#: Gate ablations and the plain RNN (``GRUSpec.gates`` other than "both") run on these, where an
#: impl declares them: 1 and 2 layers, uni- and bidirectional, saturated, T up to 35.
ABLATIONS = ("reset-only", "update-only", "none")
GATE_CASES = (LAYER_CASES[4], LAYER_CASES[7], LAYER_CASES[10])


@functools.lru_cache(maxsize=None)
def layer_inputs(case: LayerCase) -> dict:
    """``params`` (GRUParams, float64 holding float32 values, reset-before spec), ``X``, ``h0``,
    ``dY``, ``dh_n`` and a ``fingerprint``. The weights serve both variants."""
    rng = _rng("gru/" + case.name)
    spec = case.spec("reset_before")
    params = _random_params(spec, rng)
    T, N, H, D = case.T, case.N, case.hidden_size, spec.num_directions
    X = _f32(rng.standard_normal((T, N, case.input_size)) * case.scale)
    h0_shape = (case.num_layers * D, N, H)
    h0 = _f32(rng.uniform(-1, 1, h0_shape)) if case.nonzero_h0 else np.zeros(h0_shape)
    upstream = 1.0 / (T * N)
    dY = _f32(rng.standard_normal((T, N, D * H)) * upstream)
    dh_n = _f32(rng.standard_normal(h0_shape) * upstream)
    return {"params": params, "X": X, "h0": h0, "dY": dY, "dh_n": dh_n,
            "fingerprint": fingerprint(*params.flat(), X, h0, dY, dh_n)}


def with_variant(params: GRUParams, variant: str, gates: str = "both") -> GRUParams:
    spec = dataclasses.replace(params.spec, reset_after=variant == "reset_after", gates=gates)
    return GRUParams(spec, params.cells)


@functools.lru_cache(maxsize=None)
def layer_oracle(case: LayerCase, variant: str, gates: str = "both") -> dict:
    """The oracle's ``Y``, ``h_n``, ``dparams``, ``dX``, ``dh0`` (float64)."""
    inp = layer_inputs(case)
    params = with_variant(inp["params"], variant, gates)
    Y, h_n = oracle().gru(params, inp["X"], inp["h0"])
    dparams, dX, dh0 = oracle().gru_backward(params, inp["X"], inp["h0"], inp["dY"], inp["dh_n"])
    return {"Y": Y, "h_n": h_n, "dparams": dparams, "dX": dX, "dh0": dh0}


def oracle():
    from ..backends import numpy_backend
    return numpy_backend.backend


# -- the language model on The Time Machine ------------------------------------------------

#: the book's batch shape for the model-level cases
LM_BATCH_SIZE, LM_NUM_STEPS, LM_HIDDEN = 32, 35, 32


@dataclasses.dataclass(frozen=True)
class LMCase:
    num_layers: int
    bidirectional: bool
    carried_state: bool  # False: batch 0 from zeros; True: batch 1 from the oracle's state after 0

    @property
    def name(self) -> str:
        return (f"L{self.num_layers}-{'bi' if self.bidirectional else 'uni'}-"
                f"{'carried' if self.carried_state else 'zero'}")

    def spec(self, variant: str, gates: str = "both", vocab_size: int = 28) -> GRUSpec:
        return GRUSpec(vocab_size, LM_HIDDEN, self.num_layers, self.bidirectional,
                       variant == "reset_after", gates)


LM_CASES = (LMCase(1, False, False), LMCase(1, False, True), LMCase(2, True, True))
GATE_LM_CASES = (LM_CASES[1],)


def default_data_path() -> Path | None:
    """``$D2LGRU_DATA_DIR``, else ``../shared/data`` next to the repository (or the working
    directory), else None (then d2lgru.data looks in its cache and may download)."""
    env = os.environ.get("D2LGRU_DATA_DIR")
    if env:
        return Path(env)
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        candidate = root.parent / "shared" / "data"
        if (candidate / "timemachine.txt").is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def time_machine_batches(data_path: str | None, batch_size: int, num_steps: int, count: int):
    """The first ``count`` batches of epoch 0 of the book's sequential iterator, and the vocab."""
    from ..data import load_data_time_machine
    loader, vocab = load_data_time_machine(batch_size, num_steps, False, 10000, seed=0,
                                           path=data_path)
    batches = list(loader)[:count]
    if len(batches) < count:
        raise InvalidArgumentError(f"the corpus at {data_path} gives {len(batches)} batches of "
                                   f"{batch_size}x{num_steps}, the conformance cases need {count}")
    return batches, vocab


@functools.lru_cache(maxsize=None)
def lm_inputs(case: LMCase, variant: str, data_path: str | None, gates: str = "both") -> dict:
    """``model`` (LMParams float64 holding float32 values), ``X``, ``Y``, ``state`` (None or
    float64 holding float32 values) and a ``fingerprint``."""
    batches, vocab = time_machine_batches(data_path, LM_BATCH_SIZE, LM_NUM_STEPS, 2)
    rng = _rng("lm/" + case.name)
    base = init_lm(len(vocab), LM_HIDDEN, num_layers=case.num_layers,
                   bidirectional=case.bidirectional, dtype=np.float64)
    gru = with_variant(_random_params(base.spec, rng), variant, gates)
    model = LMParams(gru, _f32(rng.standard_normal(base.W_hq.shape) * HEAD_SIGMA),
                     _f32(rng.standard_normal(base.b_q.shape) * HEAD_SIGMA))
    state = None
    if case.carried_state:
        X0, Y0 = batches[0]
        state = _f32(oracle().lm_loss_and_grads(model, X0, Y0).state)
    X, Y = batches[1] if case.carried_state else batches[0]
    extra = [] if state is None else [state]
    return {"model": model, "X": X, "Y": Y, "state": state,
            "fingerprint": fingerprint(*model.flat(), X, Y, *extra)}


@functools.lru_cache(maxsize=None)
def lm_oracle(case: LMCase, variant: str, data_path: str | None, gates: str = "both") -> dict:
    inp = lm_inputs(case, variant, data_path, gates)
    res = oracle().lm_loss_and_grads(inp["model"], inp["X"], inp["Y"], inp["state"])
    return {"loss": np.float64(res.loss), "logits": res.logits, "state": res.state,
            "grads": res.grads}


# -- training ------------------------------------------------------------------------------

#: 10 batches of 16 x 35 come from the first epoch (17 batches of the first 10,000 characters)
TRAIN_BATCH_SIZE, TRAIN_NUM_STEPS, TRAIN_STEPS = 16, 35, 10
TRAIN_LR, TRAIN_CLIP, TRAIN_SEED = 1.0, 1.0, 0


@dataclasses.dataclass(frozen=True)
class TrainCase:
    """10 SGD steps (lr 1, global-norm clip 1) of the language model.

    ``book``: the book's init (``init_lm(seed=0)``: N(0, 0.01) weights, zero biases) with 64
    hidden units instead of 256 (same code, a sixteenth of the work: on this shared 2-core machine
    the 256-unit runs took most of the NumPy suite's time); its gradient norms stay near 0.2, so
    the clip never acts. ``clipped``: 64 hidden units, input-side weights and biases N(0, 1),
    recurrent ones N(0, 0.1), head N(0, 0.5): gradient norms of 1.05 to 2.6, so the global clip
    acts in every one of the 10 steps. The recurrent weights are kept small because larger ones make
    10 lr-1 steps chaotic (N(0, 0.5) everywhere: float32 and float64 NumPy end 12% apart in
    loss) -- a comparison of rounding, not of backends.
    """

    init: str      # "book" or "clipped"
    hidden_size: int

    @property
    def name(self) -> str:
        return f"{self.init}-H{self.hidden_size}"

    def spec(self, variant: str, vocab_size: int = 28) -> GRUSpec:
        return GRUSpec(vocab_size, self.hidden_size, 1, False, variant == "reset_after")


TRAIN_CASES = (TrainCase("book", 64), TrainCase("clipped", 64))


@functools.lru_cache(maxsize=None)
def train_inputs(case: TrainCase, variant: str, data_path: str | None) -> dict:
    """``model`` (float32), ``batches`` and a ``fingerprint``."""
    batches, vocab = time_machine_batches(data_path, TRAIN_BATCH_SIZE, TRAIN_NUM_STEPS,
                                          TRAIN_STEPS)
    model = init_lm(len(vocab), case.hidden_size, reset_after=variant == "reset_after",
                    seed=TRAIN_SEED, dtype=np.float32)
    if case.init == "clipped":
        rng = _rng("train/" + case.name)
        sigma = {"W_x": 1.0, "b_x": 1.0, "W_h": 0.1, "b_h": 0.1}
        gru = GRUParams.from_arrays(model.spec, {
            k: (rng.standard_normal(a.shape) * sigma[k.rsplit(".", 1)[1]]).astype(np.float32)
            for k, a in model.gru.to_arrays().items()})
        head = [(rng.standard_normal(a.shape) * 0.5).astype(np.float32)
                for a in (model.W_hq, model.b_q)]
        model = LMParams(gru, *head)
    ids = [a for batch in batches for a in batch]
    return {"model": model, "batches": batches, "fingerprint": fingerprint(*model.flat(), *ids)}


@functools.lru_cache(maxsize=None)
def train_oracle(case: TrainCase, variant: str, data_path: str | None) -> dict:
    inp = train_inputs(case, variant, data_path)
    trainer = oracle().make_trainer(inp["model"].astype(np.float64), impl="scratch", lr=TRAIN_LR,
                                    clip=TRAIN_CLIP)
    losses = trainer.train_epoch(inp["batches"])
    return {"losses": np.asarray(losses, np.float64), "weights": trainer.params()}


# -- the native layer's layout -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NativeCase:
    num_layers: int
    bidirectional: bool
    T: int = 7
    N: int = 4
    input_size: int = 5
    hidden_size: int = 8

    @property
    def name(self) -> str:
        return f"L{self.num_layers}-{'bi' if self.bidirectional else 'uni'}"

    def spec(self, variant: str) -> GRUSpec:
        return GRUSpec(self.input_size, self.hidden_size, self.num_layers, self.bidirectional,
                       variant == "reset_after")


ROUNDTRIP_CASES = tuple(NativeCase(l, b) for l in (1, 2) for b in (False, True))
REFERENCE_CASES = ROUNDTRIP_CASES


def roundtrip_params(case: NativeCase, variant: str, dtype: str) -> GRUParams:
    """Full-precision values in ``dtype`` (not float32-representable ones: in float64 they catch
    a converter that rounds through float32)."""
    rng = _rng(f"native-roundtrip/{case.name}")
    return init_params(case.spec(variant), dtype=np.float64).map(
        lambda a: (rng.standard_normal(a.shape) * WEIGHT_SIGMA).astype(dtype))


def reference_inputs(case: NativeCase) -> tuple[np.ndarray, np.ndarray]:
    """``X``, ``h0`` in float32 (the native layer initialises its own weights)."""
    rng = _rng(f"native-reference/{case.name}")
    D = 2 if case.bidirectional else 1
    X = rng.standard_normal((case.T, case.N, case.input_size)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (case.num_layers * D, case.N, case.hidden_size)).astype(np.float32)
    return X, h0
