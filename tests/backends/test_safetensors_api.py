"""Safetensors files and checkpoints on the backend of ``$D2LGRU_BACKEND``: the framework's own
safetensors API reads what d2lgru writes, and a safetensors checkpoint started on NumPy is
continued by this backend."""

import os

import numpy as np
import pytest

import d2lgru
from d2lgru.backends import resolve_name
from d2lgru.checkpoint import load as load_checkpoint, read_state
from d2lgru.train import TrainConfig, train

NAME = resolve_name(os.environ.get("D2LGRU_BACKEND") or None)
SMALL = dict(hidden_size=16, batch_size=4, num_steps=5, max_tokens=400)


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
