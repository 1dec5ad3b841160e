"""PyTorch backend: torch.nn.GRU's layout, the native reference, the declared capabilities, the
book's own code. test_surface.py covers what every backend does alike."""

import numpy as np
import torch

import d2lgru
from d2lgru import GRUSpec
from d2lgru.conformance import CHECKS
from helpers import assert_native_layer_is_the_gru, random_params


# -- torch.nn.GRU's layout -----------------------------------------------------------------
def test_native_arrays_are_named_and_shaped_as_torch_nn_grus(be):
    spec = GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=True)
    native = be.to_native(random_params(spec, np.float32))
    gru = torch.nn.GRU(3, 5, 2, bidirectional=True)
    assert {k: v.shape for k, v in native.items()} == {k: p.shape for k, p in gru.named_parameters()}


def test_torch_gru_matches_the_oracle_through_the_converters(be):
    def run_layer(native, X, h0):
        gru = torch.nn.GRU(3, 5, 2, bidirectional=True, dtype=torch.float64)
        gru.load_state_dict({k: torch.from_numpy(v) for k, v in native.items()})
        with torch.no_grad():
            Y, h_n = gru(torch.from_numpy(X), torch.from_numpy(h0))
        return Y.numpy(), h_n.numpy()
    assert_native_layer_is_the_gru(be, run_layer)


def test_native_reference_is_seeded_and_leaves_the_global_generator_alone(be):
    spec = GRUSpec(3, 4, reset_after=True)
    X = np.random.default_rng(0).standard_normal((5, 2, 3))
    state = torch.random.get_rng_state()
    p1, Y1, _ = be.native_reference(spec, X, seed=3)
    p2, Y2, _ = be.native_reference(spec, X, seed=3)
    assert p1 == p2 and np.array_equal(Y1, Y2)
    assert torch.equal(torch.random.get_rng_state(), state)
    Y_ref, _ = d2lgru.get_backend("numpy").gru(p1, X)
    np.testing.assert_allclose(Y1, Y_ref, **CHECKS["float64_same_math"].kw)


# -- what it declares ---------------------------------------------------------------------
def test_capabilities_are_declared(be):
    caps = be.capabilities()
    assert caps["scratch"]["reset_before"] and caps["scratch"]["reset_after"]
    assert not caps["native"]["reset_before"] and caps["native"]["reset_after"]
    assert caps["native"]["dtypes"] == ["float32", "float64"]
    assert caps["scratch"]["gates"] == ["both", "reset-only", "update-only", "none"]
    assert caps["native"]["gates"] == ["both"]
    assert caps["scratch"]["modes"] == caps["native"]["modes"] == ["eager"]


# -- the book's own code (docs/reproduce/book.py) is the experiment d2lgru runs -------------
def test_the_books_own_code_trains_like_the_oracle_from_the_same_start(data_dir):
    """One epoch (8 steps) of the book's PyTorch code and of d2lgru's NumPy oracle, from the
    book's own initial weights (the same torch.randn draws) and its batches (the same
    random.randint offset), end at the same perplexity: same loss, state carry, clipping, SGD."""
    import math
    import random

    from d2lgru.model import LMParams
    from d2lgru.spec import GRUParams
    from docs.reproduce import book
    text = str(data_dir / "timemachine.txt")
    seed, V, H = 3, 28, 256
    threads, rng_state, py_state = torch.get_num_threads(), torch.random.get_rng_state(), random.getstate()
    try:
        run = book.run_book(seed, text, epochs=1)
        torch.manual_seed(seed)  # get_params' draws, in its order
        draws = [torch.randn(size=s) * 0.01 for s in [(V, H), (H, H)] * 3 + [(H, V)]]
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng_state)
        random.setstate(py_state)
    assert run["format"] == "d2lgru.BookRun/1" and len(run["perplexity"]) == 1
    W = [d.numpy() for d in draws]
    gru = GRUParams.from_arrays(GRUSpec(V, H), {
        "l0.d0.W_x": np.stack(W[0:6:2]), "l0.d0.W_h": np.stack(W[1:6:2]),  # gates z, r, h
        "l0.d0.b_x": np.zeros((3, H), np.float32), "l0.d0.b_h": np.zeros((3, H), np.float32)})
    model = LMParams(gru, W[6], np.zeros(V, np.float32))
    pipeline = book.book
    corpus, _ = pipeline.load_corpus_time_machine(text, max_tokens=10000)
    offset = random.Random(seed).randint(0, 35)
    batches = list(pipeline.seq_data_iter_sequential(corpus, 32, 35, offset))
    assert len(batches) == 8
    losses = d2lgru.get_backend("numpy").make_trainer(model, lr=1.0, clip=1.0).train_epoch(batches)
    np.testing.assert_allclose(math.exp(np.mean(losses)), run["perplexity"][0],
                               **CHECKS["float32_modes"].kw)
