"""SIGKILL a training at random moments: the directory always loads, its history is contiguous,
no temporary file outlives the next writer, and resuming reaches the uninterrupted run's weights
bit for bit.

``$D2LGRU_KILLS`` kills (8 by default, for CI); ``tox -e soak`` runs 60.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from d2lgru.checkpoint import CheckpointError, has_run, load

ARGS = ["--hidden", "16", "--batch-size", "4", "--num-steps", "5", "--max-tokens", "400",
        "--seed", "3", "--quiet"]


def d2lgru(*args, data_dir):
    return subprocess.Popen([sys.executable, "-m", "d2lgru", *args, *ARGS],
                            env={**os.environ, "D2LGRU_DATA_DIR": str(data_dir),
                                 "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _saved_after(out, epoch: int) -> bool:
    try:
        return load(out)["epoch"] > epoch
    except CheckpointError:
        return False


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_the_run(tmp_path, data_dir):
    kills = int(os.environ.get("D2LGRU_KILLS", "8"))
    target = 40 * kills  # ~20 ms an epoch: the kills land before the run is done
    rng = random.Random(20261202)
    out = tmp_path / "killed"
    seen_epochs = []
    for i in range(kills):
        args = ["train", "--resume", str(out)] if has_run(out) else ["train", "--out", str(out)]
        before = load(out)["epoch"] if (out / "state.json").exists() else 0
        proc = d2lgru(*args, "--epochs", str(target), data_dir=data_dir)
        if i % 2 == 0:  # anywhere: start-up, reading, training or saving
            time.sleep(rng.uniform(0.05, 1.2))
        else:  # once this process has saved an epoch (start-up takes longer on a busy machine)
            deadline = time.time() + 120
            while proc.poll() is None and time.time() < deadline and not _saved_after(out, before):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), stderr
        if not (out / "state.json").exists():
            continue  # killed before its first epoch was saved
        try:
            ckpt = load(out)  # checks the history is epochs 1..N in order
        except CheckpointError as exc:
            pytest.fail(f"after a SIGKILL the checkpoint does not load: {exc}")
        assert [h["epoch"] for h in ckpt["history"]] == list(range(1, ckpt["epoch"] + 1))
        seen_epochs.append(ckpt["epoch"])
    assert seen_epochs, "no kill landed after an epoch was saved"
    finish = d2lgru("train", "--resume", str(out), "--epochs", str(target), data_dir=data_dir) \
        if has_run(out) else d2lgru("train", "--out", str(out), "--epochs", str(target),
                                    data_dir=data_dir)
    assert finish.wait(timeout=600) == 0, finish.stderr.read()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    straight = tmp_path / "straight"
    proc = d2lgru("train", "--out", str(straight), "--epochs", str(target), data_dir=data_dir)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    resumed, reference = load(out), load(straight)
    assert resumed["epoch"] == reference["epoch"] == target
    assert resumed["model"] == reference["model"]  # bit for bit
    assert [h["perplexity"] for h in resumed["history"]] == \
        [h["perplexity"] for h in reference["history"]]
