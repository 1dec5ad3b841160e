"""`d2lgru sweep`: a grid of normal training runs, resumable, compared in one table and figure."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from d2lgru import distributed
from d2lgru.backends import Backend, ImplInfo, UnsupportedError
from d2lgru.config import TrainConfig
from d2lgru.errors import InvalidArgumentError
from d2lgru.sweep import check_settings, grid, parse_vary
from d2lgru.train import FIXED_ON_RESUME
from test_cli import assert_one_line_error, run

TINY = ["--vary", "hidden=8,16", "--vary", "lr=0.5,1", "--max-tokens", "400", "--batch-size", "4",
        "--num-steps", "5", "--quiet"]
NAMES = ["hidden=8,lr=0.5", "hidden=8,lr=1", "hidden=16,lr=0.5", "hidden=16,lr=1"]


def history(out, name):
    return json.loads((out / name / "state.json").read_text())["history"]


def test_a_grid_runs_resumes_and_keeps_what_is_finished(tmp_path, data_dir):
    out = tmp_path / "sweep"
    run("sweep", *TINY, "--epochs", "2", "--out", str(out), data_dir=data_dir, check=True)
    first = {name: history(out, name) for name in NAMES}
    assert all(len(h) == 2 for h in first.values())
    for name in ("sweep.md", "sweep.png", "sweep.json"):
        assert (out / name).stat().st_size > 0
    table = (out / "sweep.md").read_text()
    assert all(f"| {name} |" in table for name in NAMES)

    # more epochs, two at a time in subprocesses: the two finished epochs are kept, not redone
    proc = run("sweep", *TINY, "--epochs", "3", "--jobs", "2", "--out", str(out),
               data_dir=data_dir, check=True)
    assert "hidden=16,lr=1" in proc.stdout
    for name in NAMES:
        h = history(out, name)
        assert [e["epoch"] for e in h] == [1, 2, 3]
        assert h[:2] == first[name]  # the same perplexities and the same measured seconds
    record = json.loads((out / "sweep.json").read_text())
    assert [c["name"] for c in record["cells"]] == NAMES
    assert all(len(c["perplexity"]) == 3 and set(c["predictions"]) ==
               {"time traveller", "traveller"} for c in record["cells"])
    assert record["vary"] == {"hidden": ["8", "16"], "lr": ["0.5", "1"]}

    # the same command again trains nothing
    states = {name: (out / name / "state.json").stat().st_mtime_ns for name in NAMES}
    run("sweep", *TINY, "--epochs", "3", "--out", str(out), data_dir=data_dir, check=True)
    assert states == {name: (out / name / "state.json").stat().st_mtime_ns for name in NAMES}


@pytest.mark.parametrize("args,fragments", [
    (["--vary", "bogus=1"], ["unknown name 'bogus'", "valid names: hidden, layers, lr"]),
    (["--vary", "hidden=x"], ["hidden 'x' is not a positive integer"]),
    (["--vary", "lr=0"], ["lr '0' is not a positive number"]),
    (["--vary", "hidden"], ["expected NAME=V1,V2", "valid names"]),
    (["--vary", "hidden=8", "--hidden", "8"], ["both fixed", "and varied"]),
    (["--vary", "cell=gru,rnn", "--vary", "gates=both"], ["cannot both be given"]),
    (["--vary", "gates=both", "--cell", "rnn"], ["the plain RNN has no gates"]),
    (["--vary", "hidden=8", "--backend", "caffe"], ["unknown backend 'caffe'"]),
    (["--vary", "seed=\u00b2"], ["seed '\u00b2' is not a non-negative integer"]),
    (["--vary", "hidden=\u0663"], ["is not a positive integer"]),
    (["--vary", "lr=1,1.0000001"], ["both name the setting lr=1", "first 6 digits"]),
])
def test_bad_grids_are_one_line(args, fragments, tmp_path):
    out = tmp_path / "sweep"
    assert_one_line_error(run("sweep", *args, "--out", str(out)), *fragments)
    assert not out.exists()


def test_the_grid_combines_axes_in_order_and_maps_cell_to_gates():
    vary = parse_vary(["cell=gru,rnn", "lr=2,0.5"])
    settings = grid(TrainConfig(gates="reset-only"), {}, vary)
    assert [s.name for s in settings] == ["cell=gru,lr=2", "cell=gru,lr=0.5", "cell=rnn,lr=2",
                                          "cell=rnn,lr=0.5"]
    assert [(s.config.gates, s.config.lr) for s in settings] == [
        ("reset-only", 2.0), ("reset-only", 0.5), ("none", 2.0), ("none", 0.5)]
    # every field a kept run must share, the given ones and the defaults alike
    assert settings[2].expect == {**{k: getattr(settings[2].config, k) for k in FIXED_ON_RESUME},
                                  "gates": "none", "lr": 2.0}
    with pytest.raises(InvalidArgumentError, match="listed twice"):
        parse_vary(["lr=1,1.0"])


def test_a_backend_without_the_plain_rnn_is_refused_up_front_naming_the_setting():
    class GruOnly(Backend):
        name = "gru-only"
        impls = {"scratch": ImplInfo("the full GRU only")}

    settings = grid(TrainConfig(), {}, parse_vary(["hidden=8", "cell=gru,rnn"]))
    with pytest.raises(UnsupportedError,
                       match=r"cannot train setting hidden=8,cell=rnn: .*gates='none'"):
        check_settings(settings, GruOnly(), "scratch", None, None)


def test_a_setting_too_big_for_the_corpus_is_refused_before_any_trains(tmp_path, data_dir):
    out = tmp_path / "sweep"
    proc = run("sweep", "--vary", "batch-size=2,50,60", "--max-tokens", "400", "--hidden", "8",
               "--epochs", "1", "--out", str(out), data_dir=data_dir)
    assert_one_line_error(proc, "2 of 3 settings cannot train on this corpus, so none was started")
    assert "batch-size=50: corpus has 400 tokens, too short for one batch of batch_size=50 x " \
           "num_steps=35 (needs at least 1786 tokens); batch-size=60: " in proc.stderr
    assert not out.exists() or not any(out.iterdir())


def test_sigterm_stops_a_sweep_and_its_jobs_keeping_their_checkpoints(tmp_path, data_dir):
    """`kill` or `timeout` (SIGTERM) on `sweep --jobs 2`: the children are stopped (the pool
    waited for them before), one sentence, status 143, and the same command resumes."""
    out = tmp_path / "sweep"
    args = ["--vary", "hidden=8,16", "--max-tokens", "400", "--batch-size", "4",
            "--num-steps", "5", "--jobs", "2", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "d2lgru", "sweep", *args, "--epochs",
                             "100000", "--quiet"],
                            env={**os.environ, "D2LGRU_DATA_DIR": str(data_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not all((out / n / "state.json").is_file() for n in ("hidden=8", "hidden=16")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        children = distributed.children(proc.pid)  # its pool threads start them
        assert len(children) == 2, children
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("d2lgru sweep: interrupted; every finished "
                                                   "setting and checkpoint"), err
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{c}") for c in children):
        assert time.monotonic() < deadline, "a child outlived the sweep"
        time.sleep(0.05)
    run("sweep", *args, "--epochs", "1", "--quiet", data_dir=data_dir, check=True)


def test_a_kept_setting_must_be_the_one_asked_for(tmp_path, data_dir):
    """A finished setting is kept only when it was trained as this sweep asks: another --lr,
    fewer --epochs or another --format is refused, naming what differs (a table headed "lr 2"
    over runs trained at lr 1 was the result before)."""
    out = tmp_path / "sweep"
    args = ["--vary", "hidden=8", "--max-tokens", "400", "--batch-size", "4", "--num-steps", "5",
            "--quiet", "--out", str(out)]
    run("sweep", *args, "--epochs", "2", data_dir=data_dir, check=True)
    proc = run("sweep", *args, "--epochs", "2", "--lr", "2", data_dir=data_dir)
    assert proc.returncode == 2 and "--lr: checkpoint 1.0, given 2.0" in proc.stderr, proc.stderr
    proc = run("sweep", *args, "--epochs", "1", data_dir=data_dir)
    assert proc.returncode == 2 and "--epochs: the run has 2, given 1" in proc.stderr, proc.stderr
    proc = run("sweep", *args, "--epochs", "2", "--format", "safetensors", data_dir=data_dir)
    assert proc.returncode == 2 and "--format: the run has npz" in proc.stderr, proc.stderr
    run("sweep", *args, "--epochs", "2", data_dir=data_dir, check=True)  # the same: kept


def test_a_sweep_passes_format_and_threads_to_its_runs(tmp_path, data_dir):
    out = tmp_path / "sweep"
    run("sweep", "--vary", "hidden=8", "--max-tokens", "400", "--batch-size", "4", "--num-steps",
        "5", "--epochs", "1", "--format", "safetensors", "--threads", "1", "--quiet", "--out",
        str(out), data_dir=data_dir, check=True,
        env={"D2LGRU_THREADS": ""})
    assert [p.name for p in (out / "hidden=8").glob("model-e*")] == ["model-e0001.safetensors"]
    result = json.loads((out / "hidden=8" / "result.json").read_text())
    assert (result["threads"], result["threads_source"]) == (1, "argument")


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"),
                    reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", ["preexec_fn", "in the child"])
def test_a_child_that_ends_with_its_parent_does(tmp_path, how):
    """What keeps `sweep --jobs` (the child arms itself: its parent may run a framework's
    threads, where a preexec_fn would fork) and the benchmarks (preexec_fn) from leaving
    trainings behind when the process that started them is killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    sleeper = "import time; time.sleep(60)"
    start = ("subprocess.Popen([sys.executable, '-c', SLEEPER], preexec_fn=dies_with_parent())"
             if how == "preexec_fn" else
             "subprocess.Popen([sys.executable, '-c', 'from d2lgru._io import end_with_parent; "
             "end_with_parent(' + str(os.getpid()) + '); ' + SLEEPER])")
    code = ("import os, subprocess, sys; from d2lgru._io import dies_with_parent; "
            f"SLEEPER = {sleeper!r}; p = {start}; "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); p.wait()")
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        try:
            with open(f"/proc/{child}/stat") as f:  # a zombie awaiting its reaping is gone too
                if f.read().split(") ")[1].startswith("Z"):
                    return
        except FileNotFoundError:
            return
        time.sleep(0.05)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the child outlived its parent by 10 s")


SMALL_SWEEP = ["--max-tokens", "400", "--batch-size", "4", "--num-steps", "5", "--epochs", "1",
               "--quiet"]


def test_a_grid_that_would_drop_saved_settings_is_refused_and_a_larger_one_extends(tmp_path,
                                                                                   data_dir):
    """`--vary hidden=4` into the --out of `--vary hidden=8,16` rewrote sweep.md/.json/.png for
    hidden=4 alone. A grid that keeps every saved setting extends the sweep; one that drops
    some is refused before training, naming them; --overwrite starts the new grid over."""
    out = tmp_path / "sweep"
    run("sweep", "--vary", "hidden=8,16", *SMALL_SWEEP, "--out", str(out), data_dir=data_dir,
        check=True)
    summary = {name: (out / name).read_bytes() for name in ("sweep.md", "sweep.json", "sweep.png")}
    proc = run("sweep", "--vary", "hidden=4,8", *SMALL_SWEEP, "--out", str(out),
               data_dir=data_dir)
    assert_one_line_error(proc, f"--out {out} holds a sweep whose summary also covers "
                                f"hidden=16, which this grid would drop; give all of them again "
                                f"(the saved grid is --vary hidden=8,16), choose another --out, "
                                f"or give --overwrite")
    assert not (out / "hidden=4").exists()
    assert summary == {name: (out / name).read_bytes() for name in summary}
    # another axis names other settings: hidden=8 is not hidden=8,lr=1's directory
    assert_one_line_error(run("sweep", "--vary", "hidden=8,16", "--vary", "lr=1", *SMALL_SWEEP,
                              "--out", str(out), data_dir=data_dir),
                          "also covers hidden=8, hidden=16, which this grid would drop")
    # a superset extends it: the two kept, one trained, the summary covers all three
    states = {n: (out / n / "state.json").read_bytes() for n in ("hidden=8", "hidden=16")}
    run("sweep", "--vary", "hidden=4,8,16", *SMALL_SWEEP, "--out", str(out), data_dir=data_dir,
        check=True)
    assert states == {n: (out / n / "state.json").read_bytes() for n in states}
    record = json.loads((out / "sweep.json").read_text())
    assert [c["name"] for c in record["cells"]] == ["hidden=4", "hidden=8", "hidden=16"]
    # --overwrite: the new grid trained anew and summarised alone (the other runs stay)
    run("sweep", "--vary", "hidden=4", *SMALL_SWEEP, "--overwrite", "--out", str(out),
        data_dir=data_dir, check=True)
    assert [c["name"] for c in json.loads((out / "sweep.json").read_text())["cells"]] == \
        ["hidden=4"]
    assert (out / "hidden=16" / "state.json").read_bytes() == states["hidden=16"]


def test_jobs_are_reported_as_used_at_most_one_per_setting_left(tmp_path, data_dir):
    """`--jobs 1000` on two settings was reported as 1000 settings at a time."""
    out = tmp_path / "sweep"
    proc = run("sweep", "--vary", "hidden=8,16", *SMALL_SWEEP, "--jobs", "1000", "--out",
               str(out), data_dir=data_dir, check=True)
    assert "note: --jobs 1000, but 2 of the 2 settings are left to train, so 2 run at a " \
           "time" in proc.stderr
    assert json.loads((out / "sweep.json").read_text())["jobs"] == 2
    assert "2 settings at a time" in (out / "sweep.md").read_text()
    # one setting left to train: it trains alone, and that is the count reported
    proc = run("sweep", "--vary", "hidden=8,16,24", *SMALL_SWEEP, "--jobs", "3", "--out",
               str(out), data_dir=data_dir, check=True)
    assert "but 1 of the 3 settings is left to train, so 1 run at a time" in proc.stderr
    assert json.loads((out / "sweep.json").read_text())["jobs"] == 1
    # nothing left: the saved count stands, and nothing is said
    proc = run("sweep", "--vary", "hidden=8,16,24", *SMALL_SWEEP, "--jobs", "4", "--out",
               str(out), data_dir=data_dir, check=True)
    assert "note:" not in proc.stderr and json.loads((out / "sweep.json").read_text())["jobs"] == 1
    for jobs in ("0", "-2"):
        proc = run("sweep", "--vary", "hidden=8", "--jobs", jobs, "--out", str(out))
        assert proc.returncode == 2 and "--jobs: must be a positive integer" in proc.stderr
