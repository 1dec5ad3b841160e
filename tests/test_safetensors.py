"""``.safetensors`` parameter files and checkpoints: the same arrays, names and checks as the
``.npz`` path. safetensors is installed in every test environment (tox's ``safetensors`` extra)."""

import json
import struct

import numpy as np
import pytest
import safetensors.numpy

from d2lgru import GRUParams, GRUSpec, LMParams, init_lm
from d2lgru.checkpoint import CheckpointError, has_run, load as load_checkpoint, read_state
from d2lgru.cli import main
from d2lgru.errors import OutputIsADirectoryError
from d2lgru.spec import NonFiniteParamsError, ParamsFileError
from d2lgru.train import TrainConfig, train

from helpers import random_params

SMALL = dict(hidden_size=8, batch_size=4, num_steps=5, max_tokens=300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_params_round_trip_bit_for_bit_with_the_spec_in_the_metadata(tmp_path, dtype):
    params = random_params(GRUSpec(3, 4, 2, True, True), dtype=dtype)
    path = params.save(tmp_path / "gru.safetensors")
    assert GRUParams.load(path) == params
    with safetensors.safe_open(str(path), "np") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == sorted(params.to_arrays())
    assert meta["format"] == "d2lgru.GRUParams/1" and \
        GRUSpec.from_dict(json.loads(meta["spec"])) == params.spec
    # format= wins over the suffix; load tells the formats apart by their contents
    params.save(tmp_path / "gru.bin", format="safetensors")
    params.save(tmp_path / "gru.npz")
    assert GRUParams.load(tmp_path / "gru.bin") == GRUParams.load(tmp_path / "gru.npz") == params
    model = init_lm(7, 5, num_layers=2, bidirectional=True)
    assert LMParams.load(model.save(tmp_path / "lm.safetensors")) == model


def _rewrite(path, arrays=None, metadata=None):
    with safetensors.safe_open(str(path), "np") as f:
        old_meta, old = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    data = safetensors.numpy.save(old if arrays is None else arrays(old),
                                  metadata=old_meta if metadata is None else metadata(old_meta))
    path.write_bytes(data)


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable .safetensors file"),
    (lambda p: p.write_bytes(struct.pack("<Q", 10**9) + b"{" + p.read_bytes()[9:]),
     "not a readable .safetensors file"),
    (lambda p: _rewrite(p, metadata=lambda m: {}), "no d2lgru metadata"),
    (lambda p: _rewrite(p, metadata=lambda m: {**m, "format": "d2lgru.LMParams/1"}),
     "expected 'd2lgru.GRUParams/1'"),
    (lambda p: _rewrite(p, metadata=lambda m: {**m, "spec": "{"}), "is not JSON"),
    (lambda p: _rewrite(p, metadata=lambda m: {**m, "spec": "[1]"}), "must be a JSON object"),
    (lambda p: _rewrite(p, arrays=lambda a: {**a, "l0.d0.W_h": a["l0.d0.W_h"][:, :2]}),
     r"W_h must have shape \(3, 4, 4\)"),
    (lambda p: _rewrite(p, arrays=lambda a: {k: v for k, v in a.items() if k != "l0.d0.b_x"}),
     "l0.d0.b_x"),
])
def test_a_damaged_or_foreign_safetensors_file_is_a_params_file_error(tmp_path, damage, match):
    path = random_params(GRUSpec(3, 4), np.float32).save(tmp_path / "gru.safetensors")
    damage(path)
    with pytest.raises(ParamsFileError, match=match) as err:
        GRUParams.load(path)
    assert "\n" not in str(err.value)


def test_non_finite_weights_are_refused_on_save_and_on_load(tmp_path):
    params = random_params(GRUSpec(3, 4), np.float32)
    path = params.save(tmp_path / "gru.safetensors")
    bad = params.copy()
    bad.cell(0).W_h[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="every weight must be finite"):
        bad.save(path)
    assert GRUParams.load(path) == params  # the good file is untouched
    _rewrite(path, arrays=lambda a: {**a, "l0.d0.b_h": np.full_like(a["l0.d0.b_h"], np.inf)})
    with pytest.raises(NonFiniteParamsError, match="l0.d0.b_h holds 12 NaN/inf values"):
        GRUParams.load(path)


def test_a_safetensors_save_over_a_directory_names_only_that_path(tmp_path):
    target = tmp_path / "gru.safetensors"
    target.mkdir()
    for save in (random_params(GRUSpec(3, 4), np.float32).save, init_lm(5, 4).save):
        with pytest.raises(OutputIsADirectoryError) as err:
            save(target)
        assert str(err.value) == f"cannot write {target}: it is a directory; give a file path"
        assert isinstance(err.value, IsADirectoryError)  # an OSError too, as before
    assert [p.name for p in tmp_path.iterdir()] == ["gru.safetensors"] and target.is_dir()


def test_an_unknown_format_name_is_refused():
    with pytest.raises(ValueError, match="must be one of npz, safetensors, got 'pt'"):
        random_params(GRUSpec(3, 4)).save("x.pt", format="pt")


def test_a_safetensors_run_keeps_its_format_when_resumed(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(data_dir), "--epochs", "2", "--hidden", "8",
                 "--max-tokens", "1200", "--out", str(run), "--quiet", "--format",
                 "safetensors"]) == 0
    assert read_state(run)["model"] == "model-e0002.safetensors" and has_run(run)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    assert sorted(p.name for p in run.glob("model-*")) == ["model-e0002.safetensors",
                                                            "model-e0003.safetensors"]
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "4", "--quiet", "--format", "npz"]) == 2
    assert "keeps that format" in capsys.readouterr().err


def test_safetensors_and_npz_checkpoints_hold_the_same_model(tmp_path, data_dir):
    config = TrainConfig(epochs=2, data=str(data_dir), **SMALL)
    train(config, out=tmp_path / "npz")
    train(config, out=tmp_path / "st", format="safetensors")
    a, b = load_checkpoint(tmp_path / "npz"), load_checkpoint(tmp_path / "st")
    assert a["model"] == b["model"] and a["history"][-1]["perplexity"] == b["history"][-1]["perplexity"]


def test_a_checkpoint_reader_refuses_a_model_name_of_another_kind(tmp_path, data_dir):
    train(TrainConfig(epochs=1, data=str(data_dir), **SMALL), out=tmp_path, format="safetensors")
    state = json.loads((tmp_path / "state.json").read_text())
    (tmp_path / "state.json").write_text(json.dumps({**state, "model": "model-e0001.pt"}))
    with pytest.raises(CheckpointError, match="'model-e0001.npz' \\(or .safetensors\\)"):
        load_checkpoint(tmp_path)


def test_onnx_and_safetensors_are_imported_only_when_used():
    import subprocess
    import sys
    code = ("import sys, d2lgru, d2lgru.cli, d2lgru.checkpoint, d2lgru.model, d2lgru.onnx_io;"
            "d2lgru.cli.build_parser();"
            "print([m for m in ('onnx', 'onnxruntime', 'safetensors') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
