"""What every backend must do the same way, run against the backend of ``$D2LGRU_BACKEND``:
checkpoints that the NumPy backend continues (and the other way round), capabilities that are
declared rather than discovered (native converters that lose no bit, every execution mode and
gate ablation declared trains or computes as the oracle does, the book's state carried or
restarted in every impl and dtype), one clear error per mistake, and safetensors files that the
framework's own safetensors API reads. Each backend's own file (test_<name>.py) adds what only
its framework has."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import d2lgru
from d2lgru import GRUSpec, UnsupportedError, init_lm, init_params
from d2lgru.backends import BACKENDS, framework_of, resolve_name, source_of
from d2lgru.backends._base import RETUNE_RAISE_AFTER, GRUPredictor
from d2lgru.checkpoint import load as load_checkpoint, read_state
from d2lgru.conformance import CHECKS, assert_close, tolerance
from d2lgru.conformance.cases import DTYPES
from d2lgru.errors import D2lgruError, NonFiniteError
from d2lgru.cli import main
from d2lgru.spec import GATE_SETS
from d2lgru.threads import resolve_threads, usable_cpus
from d2lgru.train import TrainConfig, predict, train
from helpers import random_params

NAME = resolve_name(os.environ.get("D2LGRU_BACKEND") or None)
SMALL = dict(hidden_size=16, batch_size=4, num_steps=5, max_tokens=400)


def _declared_in(dtypes):
    """(impl, reset_after, dtype) for each of ``dtypes`` in which the backend declares the full
    GRU of that cell."""
    be = d2lgru.get_backend(NAME)
    return [(impl, ra, dtype) for impl in be.impls for ra in (False, True) for dtype in dtypes
            if be.impls[impl].refusal(GRUSpec(3, 4, reset_after=ra), dtype) is None]


def _declared():
    """(impl, reset_after) pairs the backend declares, for the full GRU in float32."""
    return [(impl, ra) for impl, ra, _ in _declared_in(("float32",))]


@pytest.mark.parametrize("impl,reset_after", _declared())
@pytest.mark.parametrize("direction", ["to-numpy", "from-numpy"])
def test_checkpoint_is_continued_by_the_other_backend(tmp_path, data_dir, impl, reset_after,
                                                      direction):
    first, second = (NAME, "numpy") if direction == "to-numpy" else ("numpy", NAME)
    impl_of = {NAME: impl, "numpy": "scratch"}
    config = dict(data=str(data_dir), reset_after=reset_after, **SMALL)
    straight = train(TrainConfig(epochs=4, **config), backend=first, impl=impl_of[first])
    half = train(TrainConfig(epochs=2, **config), backend=first, impl=impl_of[first], out=tmp_path)
    resumed = train(TrainConfig(epochs=4), backend=second, impl=impl_of[second], resume=tmp_path)
    assert [h["backend"] for h in resumed.history] == [first, first, second, second]
    assert [h["perplexity"] for h in resumed.history[:2]] == [h["perplexity"] for h in half.history]
    # the resumed run continues the straight one: the same weights on the same batches, so
    # float32 rounding is the only difference
    np.testing.assert_allclose([h["perplexity"] for h in resumed.history],
                               [h["perplexity"] for h in straight.history],
                               **tolerance("float32", "train_loss").kw)
    for a, b in zip(resumed.model.flat(), straight.model.flat()):
        np.testing.assert_allclose(a, b, **CHECKS["float32_weights_after_epochs"].kw)


def test_capabilities_are_declared_and_what_is_not_declared_is_refused_in_one_sentence(be):
    for impl, info in be.impls.items():
        for reset_after in (False, True):
            for gates in GATE_SETS:
                spec = GRUSpec(3, 4, reset_after=reset_after, gates=gates)
                why = info.refusal(spec, np.float32)
                if why is None:
                    assert be.check_impl(impl, spec, np.float32) is info
                    continue
                params, X = init_params(spec), np.zeros((2, 1, 3), np.float32)
                dY, dh_n = np.zeros((2, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32)
                model = init_lm(5, 4, reset_after=reset_after, gates=gates)
                calls = [lambda: be.gru(params, X, impl=impl),
                         lambda: be.gru_backward(params, X, None, dY, dh_n, impl=impl),
                         lambda: be.make_trainer(model, impl=impl)]
                if impl == "native":
                    calls.append(lambda: be.to_native(params))
                for call in calls:
                    with pytest.raises(UnsupportedError) as err:
                        call()
                    assert why in str(err.value) and "\n" not in str(err.value)


def test_unknown_impl_mode_and_device(be):
    model = init_lm(5, 4)
    impls = ", ".join(be.impls)
    with pytest.raises(UnsupportedError, match=f"no impl 'cudnn'; valid: {impls}"):
        be.make_trainer(model, impl="cudnn")
    for impl, reset_after in _declared():
        modes = ", ".join(be.impls[impl].modes)
        with pytest.raises(UnsupportedError,
                           match=f"impl '{impl}' has no mode 'turbo'; valid: {modes}"):
            be.make_trainer(init_lm(5, 4, reset_after=reset_after), impl=impl, mode="turbo")
    with pytest.raises(UnsupportedError, match=f"no device 'tpu'; valid: {', '.join(be.devices)}"):
        be.make_trainer(model, device="tpu")


#: Per backend with a GPU path, one row of facts (as conformance's known failures): its GPU device
#: names, whether this machine has a GPU it can use, and the sentence that refuses them on a
#: machine without one. Not a list of the backends: one without a row (NumPy, a plugin) is held to
#: the registry's own refusal of 'gpu' as a device it does not have, so a new GPU backend fails
#: here until it has its row.
ABSENT_GPU = dict([
    ("torch", (("cuda", "gpu"), lambda: __import__("torch").cuda.is_available(),
               "cannot use device '{device}'.* sees no CUDA GPU")),
    ("tensorflow", (("gpu",),
                    lambda: bool(__import__("tensorflow").config.list_physical_devices("GPU")),
                    "found no GPU .* use device 'cpu'")),
    ("mxnet", (("gpu",), lambda: __import__("mxnet").context.num_gpus() > 0,
               "MXNet sees no GPU")),
    ("paddle", (("gpu", "cuda"), lambda: (__import__("paddle").device.is_compiled_with_cuda()
                                          and __import__("paddle").device.cuda.device_count() > 0),
                "cannot use device '{device}': .*(CPU-only|no CUDA)")),
    ("mindspore", (("gpu", "cuda", "ascend"), lambda: False,  # CPU only, GPU or not
                   r"no device '{device}'; valid: cpu \(this adapter runs MindSpore on CPU only: "
                   r".*CUDA 11.1/11.6\)$")),
    ("jax", (("gpu",), lambda: any(d.platform == "gpu" for d in __import__("jax").devices()),
             "has no device 'gpu'; valid: cpu$")),
])


@pytest.mark.parametrize("device", ABSENT_GPU[NAME][0] if NAME in ABSENT_GPU else ("gpu",))
def test_an_absent_gpu_is_one_clear_sentence(be, device):
    _, present, sentence = ABSENT_GPU.get(NAME, (None, lambda: False, None))
    if sentence is None:
        sentence = f"no device '{device}'; valid: {re.escape(', '.join(be.devices))}$"
    if present():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UnsupportedError, match=sentence.format(device=device)) as err:
        be.make_trainer(init_lm(5, 4), device=device)
    assert "\n" not in str(err.value)
    # what `d2lgru backends` lists: the devices this build has here, never a GPU it lacks
    assert device not in be.available_devices()
    assert be.available_devices()[0] == "cpu" and set(be.available_devices()) <= set(be.devices)


def test_wrong_dtypes_and_shapes(be):
    params = init_params(GRUSpec(3, 4))  # float32
    X = np.zeros((2, 1, 3), np.float32)
    with pytest.raises(TypeError, match="X is float64 but the parameters are float32"):
        be.gru(params, np.zeros((2, 1, 3)))
    with pytest.raises(TypeError, match="X must be a time-major NumPy array|must be a NumPy array"):
        be.gru(params, X.tolist())
    with pytest.raises(ValueError, match=r"X must have shape \(2, 1, 3\), got \(2, 1, 5\)"):
        be.gru(params, np.zeros((2, 1, 5), np.float32))
    with pytest.raises(ValueError, match=r"h0 must have shape \(1, 1, 4\)"):
        be.gru(params, X, np.zeros((1, 2, 4), np.float32))
    with pytest.raises(TypeError, match="dY is float64"):
        be.gru_backward(params, X, None, np.zeros((2, 1, 4)), np.zeros((1, 1, 4), np.float32))
    with pytest.raises(ValueError, match="X and Y must be"):
        be.lm_loss_and_grads(init_lm(5, 4), np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(TypeError, match="state is float64 but the parameters are float32"):
        be.lm_loss_and_grads(init_lm(5, 4), np.zeros((1, 3), int), np.zeros((1, 3), int),
                             np.zeros((1, 1, 4)))


_OK = np.zeros((2, 3), int)
_TRAIN = lambda batches, **kw: lambda be, m: be.make_trainer(m).train_epoch(batches, **kw)
_STEP = lambda ids: lambda be, m: be.make_predictor(m).step(np.array(ids))


@pytest.mark.parametrize("call,error,message", [
    (lambda be, m: be.make_trainer(m.gru), TypeError, "^model must be d2lgru.LMParams .*GRUParams$"),
    (lambda be, m: be.make_trainer(m, lr="1"), TypeError, r"^lr must be a positive finite number, got '1' \(str\)$"),
    (lambda be, m: be.make_trainer(m, clip=None), TypeError, "^clip must be a positive number, got None"),
    (lambda be, m: be.make_trainer(m, impl=["scratch"]), UnsupportedError, r"no impl \['scratch'\]; valid: "),
    (lambda be, m: be.make_trainer(m, world=3), TypeError, r"^world must be a d2lgru.distributed.World .*, got int$"),
    (_TRAIN([(_OK - 1, _OK)]), ValueError, r"^batch 0's X holds token ids outside \[0, 5\) \(min -1, max -1\); "
                                           "the model's vocabulary has 5 tokens$"),
    (_TRAIN([(_OK, _OK), (_OK, _OK + 5)]), ValueError, r"^batch 1's Y holds token ids outside \[0, 5\) \(min 5,"),
    (_TRAIN([(_OK * 1.0, _OK)]), TypeError, "^batch 0's X must hold integer token ids, got float64$"),
    (_TRAIN([(_OK, _OK[:, :2])]), ValueError, r"^batch 0's X and Y must be .*same shape, got \(2, 3\) and \(2, 2\)$"),
    (_TRAIN([(_OK[:0], _OK[:0])]), ValueError, r"^batch 0's X must be a non-empty .*got shape \(0, 3\)$"),
    (_TRAIN([_OK]), ValueError, "^batch 0 is a ndarray, not an"),
    (_TRAIN([(_OK, _OK)], random_iter="no"), TypeError, r"^random_iter must be True or False, got 'no' \(str\)$"),
    (_STEP([[-1]]), ValueError, r"^ids holds token ids outside \[0, 5\) \(min -1, max -1\)"),
    (_STEP([[1.0]]), TypeError, "^ids must hold integer token ids, got float64$"),
    (_STEP([1, 2]), ValueError, r"^ids must be a non-empty \[batch_size, num_steps\] .*got shape \(2,\)$"),
])
def test_bad_training_and_prediction_arguments_are_one_clear_error(be, call, error, message):
    """Each once met the framework: an IndexError, a str compared with 0, a -1 wrapped round."""
    with pytest.raises(error, match=message) as err:
        call(be, init_lm(5, 4))
    assert isinstance(err.value, D2lgruError) and "\n" not in str(err.value)


def poisoned(a, count=1):
    """A copy of ``a`` whose first ``count`` values are NaN, inf, -inf."""
    a = a.copy()
    a.reshape(-1)[:count] = [np.nan, np.inf, -np.inf][:count]
    return a


@pytest.mark.parametrize("impl,reset_after", list({impl: (impl, ra) for impl, ra in _declared()}
                                                  .values()))
def test_non_finite_inputs_are_refused_unless_check_finite_is_false(be, impl, reset_after):
    params = init_params(GRUSpec(3, 4, reset_after=reset_after))  # float32
    X, h0 = np.ones((2, 1, 3), np.float32), np.zeros((1, 1, 4), np.float32)
    dY, dh_n = np.ones((2, 1, 4), np.float32), np.zeros((1, 1, 4), np.float32)
    calls = {
        "X": lambda: be.gru(params, poisoned(X, 3), impl=impl),
        "h0": lambda: be.gru(params, X, poisoned(h0, 2), impl=impl),
        "dY": lambda: be.gru_backward(params, X, h0, poisoned(dY, 3), dh_n, impl=impl),
        "dh_n": lambda: be.gru_backward(params, X, h0, dY, poisoned(dh_n, 1), impl=impl),
    }
    counts = {"X": "3 NaN/inf values", "h0": "2 NaN/inf values", "dY": "3 NaN/inf values",
              "dh_n": "1 NaN/inf value"}
    for name, call in calls.items():
        with pytest.raises(NonFiniteError, match=f"^{name} holds {counts[name]};.*check_finite=False"):
            call()
    with pytest.raises(NonFiniteError, match="^X holds 1 NaN/inf value;"):
        be.gru_backward(params, poisoned(X), None, dY, dh_n, impl=impl)
    # the opt-out runs the GRU, and the NaN goes where the math takes it
    Y, _ = be.gru(params, poisoned(X), impl=impl, check_finite=False)
    assert np.isnan(Y[0]).all() and np.isnan(Y[1]).all()  # the state carries it to step 2
    _, dX, _ = be.gru_backward(params, X, h0, poisoned(dY), dh_n, impl=impl, check_finite=False)
    assert np.isnan(dX[0]).any()


def test_from_native_names_what_is_missing_or_misshapen(be):
    params = init_params(GRUSpec(3, 4, reset_after=True))  # float32
    if "native" not in be.impls:
        with pytest.raises(UnsupportedError, match="no impl 'native'|has no native"):
            be.to_native(params)
        return
    native = be.to_native(params)
    first, last = (re.escape(k) for k in (list(native)[0], list(native)[-1]))
    with pytest.raises(ValueError, match=f"(lack|missing).*{last}"):
        be.from_native({k: v for k, v in native.items() if k != list(native)[-1]}, params.spec)
    with pytest.raises(ValueError, match=f"{first}.*shape"):
        be.from_native({**native, list(native)[0]: np.zeros((1, 1), np.float32)}, params.spec)


def _stack(reset_after):
    """Two bidirectional layers: every name, direction and layer input size a layout has."""
    return GRUSpec(3, 5, num_layers=2, bidirectional=True, reset_after=reset_after)


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_native_converters_round_trip_bit_exactly(be, oracle, dtype):
    """``to_native`` / ``from_native`` move bits and compute nothing, in every cell the native
    impl declares in ``dtype`` (and refuse the others). A layout with one bias where the
    canonical cell has two (declared as ``why_not["<cell>_bias"]``) reads back the normal form,
    the same GRU; any other reads back ``params`` itself. (The layer's own names and shapes:
    each framework's file.)"""
    info = be.impls.get("native")
    for reset_after in (False, True):
        spec = _stack(reset_after)
        params = random_params(spec, dtype)  # every bias non-zero: a lost or folded one shows
        why = info.refusal(spec, dtype) if info else "has no impl 'native'"
        if why:
            with pytest.raises(UnsupportedError, match=re.escape(why)):
                be.to_native(params)
            continue
        native = be.to_native(params)
        assert all(a.dtype == dtype for a in native.values())
        back = be.from_native(native, spec)
        again = be.to_native(back)  # native -> canonical -> native: exact, names in order
        assert list(again) == list(native)
        assert all(np.array_equal(again[k], native[k]) and again[k].dtype == dtype for k in native)
        normal = be.native_normal_form(params)  # canonical -> native -> canonical
        assert back == normal
        folds = f"{'reset_after' if reset_after else 'reset_before'}_bias" in info.why_not
        assert (back == params) != folds
        if folds:
            no_bh = params.map(np.copy)
            for row in no_bh.cells:
                for c in row:
                    c.b_h[...] = 0
            assert be.from_native(be.to_native(no_bh), spec) == no_bh
            rng = np.random.default_rng(1)
            X, h0 = rng.standard_normal((6, 2, 3)), rng.standard_normal((4, 2, 5))
            tol = CHECKS["float64_normal_form" if dtype == "float64" else "float32_bias_fold"]
            for a, b in zip(oracle.gru(params.astype(np.float64), X, h0),
                            oracle.gru(normal.astype(np.float64), X, h0)):
                np.testing.assert_allclose(a, b, **tol.kw)


@pytest.mark.parametrize("impl,reset_after", _declared())
def test_cli_trains_every_declared_impl(data_dir, capsys, impl, reset_after):
    cell = "--reset-after" if reset_after else "--reset-before"
    assert main(["train", "--backend", NAME, "--impl", impl, cell, "--epochs", "2", "--hidden",
                 "8", "--batch-size", "4", "--num-steps", "5", "--max-tokens", "300",
                 "--data", str(data_dir), "--quiet"]) == 0
    assert f"tokens/sec on cpu ({NAME} {impl})" in capsys.readouterr().out


@pytest.mark.parametrize("impl,reset_after", sorted(dict(_declared()).items()))
def test_resume_alone_continues_on_the_runs_backend_and_impl(tmp_path, data_dir, monkeypatch,
                                                             impl, reset_after):
    """``train --resume DIR`` and nothing else, as an interrupted run's sentence says, continues
    the run as it was: on its own backend and impl, not on the default ones."""
    out = str(tmp_path / "run")
    assert main(["train", "--backend", NAME, "--impl", impl, "--reset-after" if reset_after else
                 "--reset-before", "--epochs", "1", "--hidden", "8", "--batch-size", "4",
                 "--num-steps", "5", "--max-tokens", "300", "--data", str(data_dir), "--out", out,
                 "--quiet"]) == 0
    monkeypatch.delenv("D2LGRU_BACKEND", raising=False)
    assert main(["train", "--resume", out, "--epochs", "2", "--data", str(data_dir),
                 "--quiet"]) == 0
    history = read_state(out)["history"]
    assert [(h["backend"], h["impl"]) for h in history] == [(NAME, impl)] * 2


def _batches(sizes, vocab_size=7, num_steps=5):
    """Random ids ``X, Y [n, num_steps]``, one batch for each ``n`` in ``sizes``."""
    rng = np.random.default_rng(0)
    return [tuple(rng.integers(0, vocab_size, (n, num_steps)) for _ in "XY") for n in sizes]


def _model(reset_after, dtype, vocab_size=7, hidden_size=8):
    """The book's model with every weight and bias N(0, 0.3^2) instead of its small init, so
    that the state moves the losses: a state carried or restarted wrongly shows."""
    rng = np.random.default_rng(1)
    return init_lm(vocab_size, hidden_size, reset_after=reset_after).map(
        lambda a: (rng.standard_normal(a.shape) * 0.3).astype(dtype))


#: tolerance of the weights after a few steps against the oracle's, per dtype
WEIGHTS = {"float32": tolerance("float32", "train_weights"),
           "float64": CHECKS["float64_other_kernels"]}


@pytest.mark.parametrize("impl,reset_after,dtype", _declared_in(DTYPES))
def test_the_state_is_carried_or_restarted_like_the_book(be, oracle, impl, reset_after, dtype):
    """The book's train_epoch_ch8: the state starts at zeros, is carried (detached) from batch
    to batch by the sequential iterator and restarted for every batch by the random one; a
    batch of another size cannot take it (its rows are the previous batch's), so it restarts
    too. In every declared impl, cell and dtype, an epoch of each gives the NumPy oracle's
    trainer's losses and weights."""
    sizes = [4, 4, 3, 3, 4]
    batches, model = _batches(sizes), _model(reset_after, dtype)
    tol = tolerance(dtype, "train_loss")
    trainer = be.make_trainer(model, impl=impl)
    ref = oracle.make_trainer(model.astype(np.float64))
    for random_iter in (False, True):
        start = ref.params()
        losses = trainer.train_epoch(batches, random_iter=random_iter)
        expected = ref.train_epoch(batches, random_iter=random_iter)
        assert losses.dtype == np.float64 and losses.shape == (len(sizes),)
        assert_close(losses, expected, rtol=tol.rtol, atol=tol.atol, quantity="losses",
                     context=f"{NAME} {impl} random_iter={random_iter}")
        for a, b in zip(trainer.params().flat(), ref.params().flat()):
            assert a.dtype == dtype
            np.testing.assert_allclose(a, b, **WEIGHTS[dtype].kw)
        # not vacuous: the other iterator, from the same weights, moves the second loss (the
        # first starts from zeros either way) beyond the tolerance
        other = oracle.make_trainer(start).train_epoch(batches, random_iter=not random_iter)
        assert other[0] == expected[0]
        assert not np.isclose(other[1], expected[1], rtol=tol.rtol, atol=tol.atol)


#: per backend whose modes run the same kernels: the CHECKS rows (losses, weights) its modes
#: agree to, closer than those of every other backend: float32_modes, and float32_jit_weights
#: (a compiled step against an eager one, whose rounding compounds over the steps)
MODES_AGREE = {"mindspore": ("float32_same_kernels", "float32_same_kernels_weights")}


@pytest.mark.parametrize("impl,reset_after", _declared())
def test_every_mode_trains_like_the_default_mode_and_the_oracle(be, oracle, impl, reset_after):
    """Each execution mode the impl declares (the default, ``modes[0]``, first) trains a few
    batches, carrying the state and then restarting it, to the default mode's losses and
    weights and to the NumPy oracle's (float32, and the float64 oracle)."""
    modes = be.impls[impl].modes
    batches, model = _batches([4, 4]), _model(reset_after, np.float32)
    default = be.make_trainer(model, impl=impl)
    assert (default.mode, default.impl, default.backend, default.device) == (
        modes[0], impl, NAME, "cpu")
    loss_tol, weight_tol = (CHECKS[k] for k in MODES_AGREE.get(
        NAME, ("float32_modes", "float32_jit_weights")))
    refs = {dtype: oracle.make_trainer(model.astype(dtype)) for dtype in DTYPES}
    expected = {dtype: np.concatenate([ref.train_epoch(batches, random_iter=it)
                                       for it in (False, True)]) for dtype, ref in refs.items()}
    losses, weights = {}, {}
    for mode in modes:
        trainer = be.make_trainer(model, impl=impl, mode=mode)
        assert trainer.mode == mode
        losses[mode] = np.concatenate([trainer.train_epoch(batches, random_iter=it)
                                       for it in (False, True)])
        weights[mode] = trainer.params()
        np.testing.assert_allclose(losses[mode], losses[modes[0]], **loss_tol.kw, err_msg=mode)
        for a, b in zip(weights[mode].flat(), weights[modes[0]].flat()):
            np.testing.assert_allclose(a, b, **weight_tol.kw, err_msg=mode)
        np.testing.assert_allclose(losses[mode], expected["float32"],
                                   **CHECKS["float32_modes"].kw, err_msg=mode)
        np.testing.assert_allclose(losses[mode], expected["float64"],
                                   **tolerance("float32", "train_loss").kw, err_msg=mode)
        for a, b in zip(weights[mode].flat(), refs["float64"].params().flat()):
            np.testing.assert_allclose(a, b, **WEIGHTS["float32"].kw, err_msg=mode)


#: a forward pass against the float64 oracle, per dtype
FORWARD = {"float32": CHECKS["float32_small_forward"], "float64": CHECKS["float64_same_math"]}


@pytest.mark.parametrize("impl", list(d2lgru.get_backend(NAME).impls))
def test_every_declared_gate_ablation_runs_and_the_others_are_refused_for_their_reason(
        be, oracle, impl):
    """A gate ablation or the plain RNN that the impl declares computes the oracle's GRU, in
    both cells (random weights and biases, so a gate left in or out shows; in float64 where the
    impl declares it, to float64's precision); one it does not declare is refused with the
    impl's own reason (``why_not["gates"]``) or by name. (Every dtype, the backward pass and the
    language model: the conformance suite.)"""
    info = be.impls[impl]
    X = np.random.default_rng(0).standard_normal((3, 2, 3))
    for reset_after in (False, True):
        dtypes = [d for d in DTYPES
                  if info.refusal(GRUSpec(3, 4, reset_after=reset_after), d) is None]
        if not dtypes:
            continue  # the full GRU is not declared in this cell either
        dtype = dtypes[-1]  # float64 where declared
        for gates in (g for g in GATE_SETS if g != "both"):
            params = random_params(GRUSpec(3, 4, reset_after=reset_after, gates=gates), dtype)
            if gates not in info.gates:
                why = info.why_not.get("gates") or f"not gates={gates!r}"
                with pytest.raises(UnsupportedError, match=re.escape(why)):
                    be.gru(params, X.astype(dtype), impl=impl)
                continue
            got = be.gru(params, X.astype(dtype), impl=impl)
            for a, b in zip(got, oracle.gru(params.astype(np.float64), X)):
                assert a.dtype == dtype
                np.testing.assert_allclose(a, b, **FORWARD[dtype].kw,
                                           err_msg=f"{gates} reset_after={reset_after}")


@pytest.fixture(scope="module")
def small_runs(data_dir):
    """A few epochs of the book's model (NumPy), per cell, to predict from."""
    return {ra: train(TrainConfig(epochs=3, data=str(data_dir), reset_after=ra, **SMALL),
                      backend="numpy") for ra in (False, True)}


@pytest.mark.parametrize("impl,reset_after", _declared())
def test_predict_keeps_the_model_in_the_framework_and_predicts_as_the_gru_did(
        be, small_runs, monkeypatch, impl, reset_after):
    """``predict`` builds the model in the framework once (``make_predictor``); its greedy
    text is what the per-character ``backend.gru`` path (the base GRUPredictor) gives."""
    run = small_runs[reset_after]
    predictor = be.make_predictor(run.model, impl=impl)
    # every built-in framework backend holds its model itself; numpy and plugins may fall back
    assert NAME == "numpy" or source_of(NAME) != "built-in" or \
        not isinstance(predictor, GRUPredictor)
    new = predict("time traveller", 40, run.model, run.vocab, backend=NAME, impl=impl)
    monkeypatch.setattr(be, "_make_predictor",
                        lambda model, *, impl, device: GRUPredictor(be, model, impl))
    old = predict("time traveller", 40, run.model, run.vocab, backend=NAME, impl=impl)
    assert new == old and len(new) == len("time traveller") + 40


# -- no side effects at import; threads ----------------------------------------------------------
#: every framework's import name, and Keras, which tensorflow's adapter loads
FRAMEWORK_MODULES = tuple(framework_of(n) for n in BACKENDS if n != "numpy") + ("keras",)


def _python(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (this checkout's d2lgru) and return the JSON it
    prints last; the variables in ``env`` are set (None: removed) for it."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("D2LGRU_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    environ["PYTHONPATH"] = str(Path(d2lgru.__file__).parents[1])
    for k, v in env.items():
        if v is None:
            environ.pop(k, None)
        else:
            environ[k] = v
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=environ, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_d2lgru_imports_no_framework_and_changes_no_variable():
    code = ("import os, sys, json; before = dict(os.environ);"
            "import d2lgru; d2lgru.data.Vocab;"  # a public module is an attribute, as in the docs
            "import d2lgru.train, d2lgru.cli, d2lgru.backends, d2lgru.threads;"
            "d2lgru.available_backends(); d2lgru.backends.resolve_name();"
            f"print(json.dumps({{'frameworks': [m for m in {FRAMEWORK_MODULES!r} if m in sys.modules],"
            "'changed': sorted(k for k in set(before) | set(os.environ) "
            "if before.get(k) != os.environ.get(k))}))")
    assert _python(code) == {"frameworks": [], "changed": []}


_FIRST_USE = ("import os, json, threadpoolctl, numpy as np, d2lgru;"
              f"be = d2lgru.get_backend({NAME!r});"
              "{before}"
              "be.gru(d2lgru.init_params(d2lgru.GRUSpec(3, 4)), np.zeros((2, 1, 3), np.float32));")


@pytest.mark.parametrize("how", ["env", "set_threads"])
def test_one_thread_is_what_the_framework_runs(how):
    code = (_FIRST_USE.format(before="be.set_threads(1);" if how == "set_threads" else "")
            + "print(json.dumps([be.threads, be.threads_source, be.framework_threads()]))")
    threads, source, reported = _python(code, D2LGRU_THREADS="1" if how == "env" else None)
    # every built-in adapter asks its framework; a third-party one may say it cannot (None)
    assert threads == 1 and (reported == 1 or (reported is None and NAME not in BACKENDS))
    assert source == ("$D2LGRU_THREADS" if how == "env" else "argument")


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_an_invalid_thread_count_is_one_clear_error(be, monkeypatch, value):
    monkeypatch.setenv("D2LGRU_THREADS", value)
    with pytest.raises(d2lgru.errors.InvalidArgumentError,
                       match=rf"invalid thread count '{re.escape(value)}' \(from \$D2LGRU_THREADS\); "
                             r"valid: a positive integer"):
        be.set_threads()
    with pytest.raises(ValueError, match=r"\(from argument\)"):
        be.set_threads(0)


def test_the_policy_picks_between_one_and_the_usable_cpus(be, monkeypatch):
    monkeypatch.delenv("D2LGRU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    n, source = resolve_threads(preference=be._thread_preference)
    assert source == "policy" and 1 <= n <= usable_cpus()
    code = _FIRST_USE.format(before="") + "print(json.dumps([be.threads, be.threads_source]))"
    threads, source = _python(code)
    assert 1 <= threads <= usable_cpus() and source in ("policy", "fixed")


# -- a policy count follows the load while training runs (Backend.retune_threads, about once a
# second between steps), in a fresh process with the load and the CPUs played by stand-ins
_RETUNE_SCRIPT = f"""
import json, numpy as np, d2lgru
from d2lgru import threads
load = [0]
threads.usable_cpus = lambda: 2
threads.busy_cpus = lambda *a, **k: load[0]
be = d2lgru.get_backend({NAME!r})
trainer = be.make_trainer(d2lgru.init_lm(7, 8))
batch = np.arange(6).reshape(2, 3)
seen = []
for busy in (0, 1, 0, 0, 0, 1, 0, 1):  # another job holds one of the two CPUs, ends, ...
    load[0] = busy
    trainer._next_retune = 0.0  # as if a second had passed
    trainer.train_epoch([(batch, batch)])
    seen.append([be.threads, be.framework_threads()])
print(json.dumps([be.retunes_threads, be.threads_source, be._thread_preference(2), seen]))
"""


def test_the_policys_count_follows_the_load_while_training_runs():
    retunes, source, preference, seen = _python(_RETUNE_SCRIPT)
    counts = [threads for threads, _ in seen]
    if retunes and source == "policy":
        # every CPU free -> the preference (at most 2 here); one taken -> one thread at the
        # next look; the CPU back only after RETUNE_RAISE_AFTER looks found it free
        free = min(2, preference)
        assert RETUNE_RAISE_AFTER == 3
        assert counts == [free, 1, 1, 1, free, 1, 1, 1]
        # what the framework itself says it runs (None: a third-party one that cannot say)
        assert all(reported in (threads, None) for threads, reported in seen)
    else:
        assert len(set(counts)) == 1  # a count fixed at first use stays as it was


def test_an_explicit_count_stays_whatever_the_load():
    # one thread, which every framework takes (MXNet fixes its count when it loads); a count
    # that followed the load would rise to two after three looks at a free CPU
    _, source, _, seen = _python(_RETUNE_SCRIPT, D2LGRU_THREADS="1")
    assert source == "$D2LGRU_THREADS" and {t for t, _ in seen} == {1}


#: after the first use: the variable as the process sees it, and what each GNU OpenMP runtime
#: loaded says it runs with (``omp_display_env``, written to fd 2, read back through a file);
#: GOMP_SPINCOUNT tells passive waiting (0) from libgomp's default (300000), which both
#: display as OMP_WAIT_POLICY = 'PASSIVE'
_WAIT_POLICY = """
import ctypes, tempfile
runtimes = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l})
said = []
for path in runtimes:
    lib = ctypes.CDLL(path)
    if not hasattr(lib, 'omp_display_env'):  # before GCC 9 (torch's own libgomp)
        said.append(None)
        continue
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2); os.dup2(f.fileno(), 2)
        try:
            lib.omp_display_env(1)
        finally:
            os.dup2(saved, 2); os.close(saved)
        f.seek(0)
        text = f.read().decode()
    said.append([line.split('=', 1)[1].strip().strip("'") for line in text.splitlines()
                 if line.strip().startswith(('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT'))])
print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), said]))
"""


@pytest.mark.parametrize("user", [None, "ACTIVE"])
def test_passive_waiting_is_set_before_the_framework_loads_unless_the_user_chose(user):
    """An adapter that makes its framework's workers sleep (``waits_passively``) gives its
    OpenMP runtime OMP_WAIT_POLICY=PASSIVE as it loads, then takes the variable back: a torch
    or Paddle loaded later, or a child process, would sleep too. A user's own value stays."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads the runtimes loaded from /proc/self/maps")
    env, runtimes = _python(_FIRST_USE.format(before="") + _WAIT_POLICY, OMP_WAIT_POLICY=user)
    assert env == user  # set by the user, or unset as before
    if d2lgru.get_backend(NAME).waits_passively:
        assert runtimes, "an adapter that waits passively loads GNU OpenMP"
        for policy, spins in runtimes:
            assert (policy, spins) == (("ACTIVE", spins) if user else ("PASSIVE", "0"))


#: page faults per allocate-touch-free of a 2.2 MB block aligned as torch and Paddle align
#: tensors (posix_memalign, 64 bytes), before and after the backend's first use; glibc's
#: mapping threshold is first pinned at its 128 KB default, where glibc's own adjustment
#: leaves it for such blocks in a Paddle process (how far it moves elsewhere depends on what
#: the process freed before)
_ALIGNED_FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
def faults(size=35 * 32 * 512 * 4, calls=20):
    p = ctypes.c_void_p()
    for i in range(calls + 1):  # the first may grow the heap: not counted
        if i == 1:
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        assert libc.posix_memalign(ctypes.byref(p), 64, size) == 0
        ctypes.memset(p, 1, size)
        libc.free(p)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / calls
before = faults()
be.gru(d2lgru.init_params(d2lgru.GRUSpec(3, 4)), np.zeros((2, 1, 3), np.float32))
print(json.dumps([before, faults()]))
"""


@pytest.mark.parametrize("user_malloc", [None, "131072"])
def test_aligned_tensors_stop_being_mapped_anew_where_the_adapter_keeps_freed_memory(user_malloc):
    """A block above glibc's mapping threshold is mapped afresh and faulted in page by page at
    every allocation (~560 faults for 2.2 MB). An adapter that ``keeps_freed_memory`` raises the
    thresholds at first use, so the block comes from the heap; a user's own malloc setting (here
    ``MALLOC_TRIM_THRESHOLD_``) is kept, and other adapters leave malloc alone."""
    if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
        pytest.skip("glibc's malloc")
    code = ("import os, json, numpy as np, d2lgru;"
            f"be = d2lgru.get_backend({NAME!r});" + _ALIGNED_FAULTS)
    before, after = _python(code, MALLOC_TRIM_THRESHOLD_=user_malloc)
    assert before > 100  # 2.2 MB is 562 pages
    if d2lgru.get_backend(NAME).keeps_freed_memory and user_malloc is None:
        assert after < 10
    else:
        assert after > 100


# -- safetensors: the framework's own API reads what d2lgru writes; a NumPy safetensors
#    checkpoint is continued here
def _framework_load(path):
    """The file read by the framework's own safetensors module, as NumPy arrays; frameworks
    that safetensors has no module for (MXNet, MindSpore) read it through its NumPy API."""
    if NAME == "torch":
        from safetensors.torch import load_file
        return {k: v.numpy() for k, v in load_file(str(path)).items()}
    if NAME == "tensorflow":
        from safetensors.tensorflow import load_file
        return {k: v.numpy() for k, v in load_file(str(path)).items()}
    if NAME == "paddle":
        from safetensors.paddle import load_file
        return {k: v.numpy() for k, v in load_file(str(path)).items()}
    from safetensors.numpy import load_file
    return load_file(str(path))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_frameworks_safetensors_api_reads_the_same_arrays(tmp_path, dtype):
    rng = np.random.default_rng(0)
    model = d2lgru.init_lm(7, 5, num_layers=2, bidirectional=True, dtype=dtype).map(
        lambda a: rng.standard_normal(a.shape).astype(dtype))
    loaded = _framework_load(model.save(tmp_path / "lm.safetensors"))
    expected = model.to_arrays()
    assert sorted(loaded) == sorted(expected)
    for name, array in expected.items():
        assert loaded[name].dtype == array.dtype and np.array_equal(loaded[name], array), name


def test_a_numpy_safetensors_checkpoint_round_trips_and_resumes_here(tmp_path, data_dir):
    first = train(TrainConfig(epochs=1, data=str(data_dir), **SMALL), backend="numpy",
                  out=tmp_path, format="safetensors")
    assert read_state(tmp_path)["model"] == "model-e0001.safetensors"
    assert load_checkpoint(tmp_path)["model"] == first.model  # bit for bit
    resumed = train(TrainConfig(epochs=2), backend=NAME, resume=tmp_path)
    assert [h["backend"] for h in resumed.history] == ["numpy", NAME]
    assert read_state(tmp_path)["model"] == "model-e0002.safetensors"
    assert load_checkpoint(tmp_path)["model"] == resumed.model
