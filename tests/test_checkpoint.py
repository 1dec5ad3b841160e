"""The checkpoint directory: nothing a user does loses a run.

Every test here reproduces a way a run used to be lost or a checkpoint misread (issue #16), with
real trainings on the NumPy backend, real files and real processes.
"""

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from d2lgru.checkpoint import (CheckpointBusyError, CheckpointError, CheckpointWriter, has_run,
                               load)
from d2lgru.errors import D2lgruError
from d2lgru.train import (TrainConfig, TrainingDiverged, perplexity, resume_conflicts,
                          train)

SMALL = dict(hidden_size=16, batch_size=4, num_steps=5, max_tokens=400)


def small(data_dir, **kw):
    return TrainConfig(data=str(data_dir), **{**SMALL, **kw})


@pytest.fixture
def run_dir(tmp_path, data_dir):
    out = tmp_path / "run"
    train(small(data_dir, epochs=3), backend="numpy", out=out)
    return out


def state_of(out):
    return json.loads((out / "state.json").read_text())


# -- 1. an output directory that holds a run is never started over silently -----------------

def test_a_second_run_into_the_same_directory_is_refused(run_dir, data_dir):
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(CheckpointError, match="already holds a run .3 completed epoch.*--resume"):
        train(small(data_dir, epochs=1), backend="numpy", out=run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_overwrite_starts_over_and_deletes_only_what_d2lgru_wrote(run_dir, data_dir):
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "model-e0099.npz").write_bytes(b"a file d2lgru never wrote")
    train(small(data_dir, epochs=1), backend="numpy", out=run_dir, overwrite=True)
    assert state_of(run_dir)["epoch"] == 1
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / "model-e0099.npz").read_bytes() == b"a file d2lgru never wrote"
    assert not (run_dir / "model-e0003.npz").exists()


def test_a_stray_model_file_alone_counts_as_a_run(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model-e0001.npz").write_bytes(b"user's")
    assert has_run(out)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train(small(data_dir, epochs=1), backend="numpy", out=out)
    assert (out / "model-e0001.npz").read_bytes() == b"user's"


def test_an_empty_or_unrelated_directory_is_fine(tmp_path, data_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "README").write_text("x")
    train(small(data_dir, epochs=1), backend="numpy", out=out)
    assert state_of(out)["epoch"] == 1


# -- 2. one writer per directory ------------------------------------------------------------

@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
@pytest.mark.parametrize("out, what", [
    ("{tmp}/notes.txt", "is a file, not a directory; name a directory for the checkpoint"),
    ("{tmp}/notes.txt/run", "cannot create the checkpoint directory {out}: a part of that path "
                            "is a file"),
    ("/proc/d2lgru-nowhere/run", "cannot create the checkpoint directory {out}: No such file or "
                                 "directory; choose another --out"),
    ("/proc/self", "cannot write in the checkpoint directory {out}: "),
])
def test_an_out_that_cannot_be_written_is_one_checkpoint_error(tmp_path, out, what):
    (tmp_path / "notes.txt").write_text("mine")
    out = out.format(tmp=tmp_path)
    with pytest.raises(CheckpointError, match=re.escape(what.format(out=out))):
        CheckpointWriter(out).open()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_second_writer_is_refused_naming_the_holder(run_dir):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from d2lgru.checkpoint import CheckpointWriter;"
         "w = CheckpointWriter(sys.argv[1], resume=True).open(); print('locked', flush=True);"
         "time.sleep(60)", str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointBusyError, match=rf"another d2lgru process \(pid {holder.pid}\)"):
            CheckpointWriter(run_dir, resume=True).open()
    finally:
        holder.kill()
        holder.wait()
    # the operating system released the lock with the process
    CheckpointWriter(run_dir, resume=True).open().close()


def test_the_lock_is_released_after_a_run(run_dir):
    with CheckpointWriter(run_dir, resume=True):
        with pytest.raises(CheckpointBusyError):
            CheckpointWriter(run_dir, resume=True).open()
    CheckpointWriter(run_dir, resume=True).open().close()


# -- 3. divergence and non-finite values ----------------------------------------------------

@pytest.mark.parametrize("field,value", [("lr", math.inf), ("clip", math.inf), ("lr", math.nan),
                                         ("lr", -1.0), ("lr", 0)])
def test_options_must_be_finite_and_positive(field, value):
    with pytest.raises(D2lgruError, match=f"{field} must be a positive finite number"):
        TrainConfig(**{field: value})


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_diverged_epoch_keeps_the_last_finite_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    # at lr and clip 100 the loss grows past ~710 nats, where its perplexity overflows, after a
    # few finite epochs
    with pytest.raises(TrainingDiverged) as info:
        train(small(data_dir, epochs=30, lr=100.0, clip=100.0), backend="numpy", out=out)
    epoch = info.value.epoch
    assert epoch > 2, "the run must have saved good epochs before it diverged"
    assert f"diverged in epoch {epoch} " in str(info.value)
    assert f"the checkpoint in {out} keeps epoch {epoch - 1}; try a smaller --lr (now 100)" \
        in str(info.value)
    ckpt = load(out)
    assert ckpt["epoch"] == epoch - 1 and len(ckpt["history"]) == epoch - 1
    assert all(np.isfinite(a).all() for a in ckpt["model"].flat())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_fresh_run_that_diverges_saves_nothing(tmp_path, data_dir):
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1.*nothing was saved"):
        train(small(data_dir, epochs=2, lr=1e300, clip=1e300), backend="numpy", out=out)
    assert not (out / "state.json").exists() and not list(out.glob("model-e*.npz"))


def test_perplexity_does_not_overflow():
    assert perplexity(710.0) == math.inf and perplexity(1e6) == math.inf
    assert perplexity(0.0) == 1.0 and math.isnan(perplexity(math.nan))


# -- 6. the model path in state.json stays inside the directory -----------------------------

@pytest.mark.parametrize("name", ["../model-e0003.npz", "/etc/passwd", "sub/model-e0003.npz",
                                  "model-e0003.npz/..", "", None, 3])
def test_the_model_path_is_confined_to_the_directory(run_dir, name):
    state = state_of(run_dir)
    state["model"] = name
    (run_dir / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="'model' must be a model file name"):
        load(run_dir)


# -- 4 and 11. state.json of the wrong shape ------------------------------------------------

@pytest.mark.parametrize("mutate,match", [
    (lambda s: None, "holds NoneType, not an object"),
    (lambda s: [s], "holds list, not an object"),
    (lambda s: {**s, "epoch": 2.7}, "'epoch' must be a positive integer, got 2.7"),
    (lambda s: {**s, "epoch": "3"}, "'epoch' must be a positive integer"),
    (lambda s: {**s, "epoch": True}, "'epoch' must be a positive integer"),
    (lambda s: {**s, "epoch": 2}, "'history' must list epochs 1..2"),
    (lambda s: {**s, "history": None}, "'history' must list"),
    (lambda s: {**s, "history": [{"epoch": 1}, {"epoch": 3}, {"epoch": 2}]}, "'history' must list"),
    (lambda s: {**s, "config": None}, "'config' must be an object"),
    (lambda s: {**s, "config": {**s["config"], "hidden_size": "16"}}, "config is invalid"),
    (lambda s: {**s, "config": {**s["config"], "lr": None}}, "config is invalid"),
    (lambda s: {**s, "config": {**s["config"], "bogus": 1}}, "unknown configuration keys bogus"),
    (lambda s: {**s, "config": {**s["config"], "hidden_size": 32}}, "its model is a"),
    (lambda s: {**s, "format": "d2lgru.Checkpoint/0"}, "format is 'd2lgru.Checkpoint/0'"),
])
def test_state_json_of_the_wrong_shape_is_a_checkpoint_error(run_dir, mutate, match):
    (run_dir / "state.json").write_text(json.dumps(mutate(state_of(run_dir))))
    with pytest.raises(CheckpointError, match=match):
        load(run_dir)


def test_non_finite_weights_in_a_checkpoint_are_refused(run_dir):
    state = state_of(run_dir)
    path = run_dir / state["model"]
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["head.b_q"] = arrays["head.b_q"].copy()
    arrays["head.b_q"][0] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match="head.b_q"):
        load(run_dir)


# -- 7. --resume with conflicting options or another corpus ---------------------------------

def test_resume_refuses_conflicting_options_listing_each(run_dir):
    with pytest.raises(CheckpointError, match=r"conflicts with the options given "
                                               r"\(--hidden: checkpoint 16, given 32; "
                                               r"--lr: checkpoint 1.0, given 0.5\)"):
        train(TrainConfig(epochs=4), backend="numpy", resume=run_dir,
              expect={"hidden_size": 32, "lr": 0.5, "batch_size": 4})
    assert state_of(run_dir)["epoch"] == 3
    assert resume_conflicts(load(run_dir)["config"], {"batch_size": 4, "seed": 0}) == []


def test_resume_on_another_corpus_is_refused_unless_asked(run_dir, tmp_path, data_dir):
    assert state_of(run_dir)["config"]["corpus_sha1"] == "090b5e7e70c295757f55df93cb0a180b9691891a"
    other = tmp_path / "other.txt"
    # the same characters (so the same vocabulary), another text
    other.write_text((data_dir / "timemachine.txt").read_text()[::-1])
    with pytest.raises(CheckpointError, match="has SHA-1 .* trained on one with SHA-1 090b5e7e"):
        train(TrainConfig(epochs=4, data=str(other)), backend="numpy", resume=run_dir)
    assert state_of(run_dir)["epoch"] == 3
    train(TrainConfig(epochs=4, data=str(other)), backend="numpy", resume=run_dir,
          data_changed_ok=True)
    assert state_of(run_dir)["config"]["corpus_sha1"] != "090b5e7e70c295757f55df93cb0a180b9691891a"


# -- 9. stale temporary files of dead writers -----------------------------------------------

def test_stale_temporary_files_are_removed_by_the_next_writer(run_dir, data_dir):
    stale = run_dir / ".model-e0004.npz.k3j2h1.tmp"
    stale.write_bytes(b"\0" * 1000)
    foreign = run_dir / ".my-editor.swp.tmp"
    foreign.write_bytes(b"not ours")
    train(TrainConfig(epochs=4), backend="numpy", resume=run_dir)
    assert not stale.exists() and foreign.exists()


def test_a_model_file_a_stopped_run_did_not_delete_is_deleted_by_the_next_writer(run_dir):
    # a run stopped (Ctrl-C, SIGKILL) after writing epoch 3's state and before deleting
    # model-e0001.npz, which that state retires: it names the file and the next writer deletes it
    state = state_of(run_dir)
    assert (state["model"], state["previous"], state["stale"]) == \
        ("model-e0003.npz", "model-e0002.npz", "model-e0001.npz")
    left = run_dir / "model-e0001.npz"
    left.write_bytes((run_dir / "model-e0002.npz").read_bytes())
    train(TrainConfig(epochs=4), backend="numpy", resume=run_dir)
    assert sorted(p.name for p in run_dir.glob("model-e*")) == ["model-e0003.npz", "model-e0004.npz"]
    assert state_of(run_dir)["stale"] == "model-e0002.npz"


@pytest.mark.parametrize("value", ["../escape.npz", "notes.txt", 3, "model-e0003.npz"])
def test_a_stale_entry_deletes_nothing_but_a_retired_model_file(run_dir, value):
    (run_dir / "notes.txt").write_text("mine")
    state = state_of(run_dir)
    state["stale"] = value
    (run_dir / "state.json").write_text(json.dumps(state))
    train(TrainConfig(epochs=4), backend="numpy", resume=run_dir)
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert state_of(run_dir)["epoch"] == 4 and (run_dir / "model-e0004.npz").is_file()
    assert (run_dir / "model-e0003.npz").is_file()  # the new previous


# -- 10. a reader racing the writer always finds a model ------------------------------------

def test_a_reader_racing_the_writer_always_loads(tmp_path, data_dir):
    out = tmp_path / "run"
    train(small(data_dir, epochs=1, hidden_size=8, num_steps=3, max_tokens=200), backend="numpy",
          out=out)
    # a writer that outlives the test: it is stopped once the reader has raced it long enough
    writer = subprocess.Popen(
        [sys.executable, "-m", "d2lgru", "train", "--resume", str(out), "--epochs", "1000000",
         "--quiet"], env={**os.environ, "D2LGRU_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    loads, epochs, deadline = 0, set(), time.time() + 240
    try:
        while (loads < 200 or len(epochs) < 30) and time.time() < deadline:
            assert writer.poll() is None, writer.stderr.read()
            epochs.add(load(out)["epoch"])  # must never fail while the writer replaces files
            loads += 1
    finally:
        writer.kill()
        writer.wait()
    assert len(epochs) >= 30, f"the writer saved only {len(epochs)} epochs while {loads} loads ran"


# -- 11. files follow the umask ------------------------------------------------------------

def test_checkpoint_files_follow_the_umask(tmp_path, data_dir):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        train(small(data_dir, epochs=1), backend="numpy", out=out)
    finally:
        os.umask(old)
    for name in ("state.json", "vocab.json", "model-e0001.npz"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


# -- corruption at random: every load is the same weights or the library's own error --------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("pristine") / "run"
    train(small(data_dir, epochs=2), backend="numpy", out=out)
    return out, load(out)["model"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_randomly_corrupted_checkpoint_loads_the_same_weights_or_fails_cleanly(pristine, tmp_path,
                                                                               data):
    import shutil
    import tempfile
    source, weights = pristine
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"
    shutil.copytree(source, out)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    for _ in range(data.draw(st.integers(1, 3))):
        victim = out / data.draw(st.sampled_from(files))
        blob = victim.read_bytes() if victim.exists() else b""
        how = data.draw(st.sampled_from(["truncate", "flip", "delete", "json", "state-field"]))
        if how == "truncate":
            victim.write_bytes(blob[:data.draw(st.integers(0, max(len(blob) - 1, 0)))])
        elif how == "flip" and blob:
            b = bytearray(blob)
            for i in data.draw(st.lists(st.integers(0, len(b) - 1), min_size=1, max_size=8)):
                b[i] ^= data.draw(st.integers(1, 255))
            victim.write_bytes(bytes(b))
        elif how == "delete":
            victim.unlink(missing_ok=True)
        elif how == "json":
            victim.write_text(json.dumps(data.draw(JSON)))
        elif how == "state-field" and (out / "state.json").exists():
            try:
                state = json.loads((out / "state.json").read_text())
                key = data.draw(st.sampled_from(sorted(state) or ["epoch"]))
                state[key] = data.draw(JSON)
                (out / "state.json").write_text(json.dumps(state))
            except (ValueError, TypeError, AttributeError, IndexError):
                pass  # state.json already corrupt, or no longer an object (a list: IndexError)
    try:
        loaded = load(out)
    except CheckpointError:
        return  # the library's own error, in one sentence
    assert loaded["model"] == weights
