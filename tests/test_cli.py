"""The `d2lgru` command as a user runs it: real subprocesses, one-line errors, exit codes."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

SMALL = ["--hidden", "16", "--batch-size", "4", "--num-steps", "5", "--max-tokens", "400"]


def run(*args, data_dir=None, check=False, env=None, timeout=300):
    cmd = [sys.executable, "-m", "d2lgru.cli", *args]
    full_env = {**os.environ, **(env or {})}
    if data_dir is not None:
        full_env["D2LGRU_DATA_DIR"] = str(data_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_backends_lists_every_known_backend():
    proc = run("backends", "--json", check=True)
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == list(__import__("d2lgru").BACKENDS)
    numpy_row = rows[0]
    assert numpy_row["installed"] and numpy_row["impls"]["scratch"]["reset_before"]
    table = run("backends", check=True).stdout
    assert "numpy" in table and "scratch" in table
    # devices: the ones this installed build has here; a GPU path it lacks is named apart, with
    # the framework's reason (a CPU-only torch wheel lists no cuda)
    for row in rows:
        if not row["installed"]:
            continue
        be = __import__("d2lgru").get_backend(row["name"])
        assert row["devices"] == list(be.available_devices()) and row["devices"][0] == "cpu"
        assert set(row["devices"]) | set(row["devices_not_here"]) == set(be.devices)
        assert all(why and "\n" not in why for why in row["devices_not_here"].values())
        line = next(line for line in table.splitlines() if line.startswith(row["name"] + " "))
        assert ("not here: " in line) == bool(row["devices_not_here"]), line


def test_a_timemachine_txt_that_is_not_the_books_trains_with_a_note(tmp_path, data_dir):
    """A truncated copy named timemachine.txt trains as given, with one note naming the file and
    both SHA-1s (its perplexities are not the book's); the book's own file gets no note."""
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "timemachine.txt").write_bytes((data_dir / "timemachine.txt").read_bytes()[:50000])
    proc = run("train", "--backend", "numpy", "--epochs", "1", *SMALL, "--quiet",
               "--data", str(cut), check=True)
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and str(cut / "timemachine.txt") in notes[0], proc.stderr
    assert "not the book's" in notes[0] and "090b5e7e70c295757f55df93cb0a180b9691891a" in notes[0]
    proc = run("train", "--backend", "numpy", "--epochs", "1", *SMALL, "--quiet",
               data_dir=data_dir, check=True)
    assert "note:" not in proc.stderr, proc.stderr


def test_train_short_run_prints_the_books_closing_lines(tmp_path, data_dir):
    proc = run("train", "--backend", "numpy", "--epochs", "3", *SMALL, "--out", str(tmp_path / "run"),
               data_dir=data_dir, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("perplexity ") and "tokens/sec on cpu" in lines[0]
    assert lines[1].startswith("time traveller") and lines[2].startswith("traveller")
    assert len(lines[1]) == len("time traveller") + 50
    assert (tmp_path / "run" / "perplexity.png").stat().st_size > 1000
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["backend"] == "numpy" and result["epochs"] == 3 and result["device"] == "cpu"
    # the header says the count at the start, result.json the count at the end: a policy
    # count follows the load in between (Backend.retune_threads)
    assert result["threads"] >= 1 and result["threads_source"] in ("policy", "$D2LGRU_THREADS")
    assert re.match(r"d2lgru train: numpy scratch \(eager\) on cpu, [1-9]\d* thread\(s\) "
                    rf"\({re.escape(result['threads_source'])}\)", proc.stderr)
    pinned = run("train", "--backend", "numpy", "--epochs", "1", *SMALL, "--threads", "1",
                 "--out", str(tmp_path / "one"), data_dir=data_dir, check=True)
    assert "1 thread(s) (argument)" in pinned.stderr
    assert json.loads((tmp_path / "one" / "result.json").read_text())["threads"] == 1
    assert result["predictions"]["traveller"] == lines[2]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    pred = run("predict", "--checkpoint", str(tmp_path / "run"), "--prefix", "the time", check=True)
    assert pred.stdout.startswith("the time") and len(pred.stdout.rstrip("\n")) == len("the time") + 50


def test_backend_from_environment_variable(tmp_path, data_dir):
    proc = run("train", "--epochs", "1", *SMALL, data_dir=data_dir, env={"D2LGRU_BACKEND": "numpy"},
               check=True)
    assert "(numpy scratch)" in proc.stdout
    bad = run("train", "--epochs", "1", *SMALL, data_dir=data_dir, env={"D2LGRU_BACKEND": "jaxx"})
    assert_one_line_error(bad, "unknown backend 'jaxx'", "D2LGRU_BACKEND", "numpy, torch")


@pytest.mark.parametrize("args,fragments", [
    (["train", "--backend", "caffe"], ["unknown backend 'caffe'", "valid backends"]),
    (["train", "--impl", "native", "--epochs", "1"], ["has no impl 'native'", "valid: scratch"]),
    (["train", "--data", "/nonexistent/tm.txt"], ["/nonexistent/tm.txt"]),
    (["train", "--batch-size", "100000", "--epochs", "1"], ["too short for one batch"]),
    (["train", "--max-tokens", "20", "--epochs", "1"], ["too short for one batch"]),
])
def test_train_bad_input_is_one_clear_line(args, fragments, data_dir):
    assert_one_line_error(run(*args, data_dir=data_dir), *fragments)


@pytest.mark.parametrize("flag", ["--epochs", "--hidden", "--batch-size", "--num-steps"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_sizes_are_refused(flag, value):
    proc = run("train", flag, value)
    assert proc.returncode == 2 and "must be a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_offline_says_where_to_put_the_file(tmp_path):
    env = {"D2LGRU_DATA_DIR": "", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "D2LGRU_DATA_URL": "http://127.0.0.1:9/timemachine.txt"}
    proc = run("train", "--epochs", "1", env=env)
    assert_one_line_error(proc, "timemachine.txt")


def test_predict_errors(tmp_path, data_dir):
    ckpt = tmp_path / "run"
    run("train", "--epochs", "1", *SMALL, "--out", str(ckpt), data_dir=data_dir, check=True)
    # the prefix is cleaned as the corpus was (lower case, punctuation a space)
    upper = run("predict", "--checkpoint", str(ckpt), "--prefix", "Time Traveller!", check=True)
    lower = run("predict", "--checkpoint", str(ckpt), "--prefix", "time traveller ", check=True)
    assert upper.stdout == lower.stdout and upper.stdout.startswith("time traveller ")
    assert_one_line_error(run("predict", "--checkpoint", str(ckpt), "--prefix", "?!"), "no letters")
    proc = run("predict", "--checkpoint", str(ckpt), "--num-preds", "100001")
    assert proc.returncode == 2 and "must be at most 100000" in proc.stderr
    assert_one_line_error(run("predict", "--checkpoint", str(tmp_path / "nope")), "not a d2lgru checkpoint")
    state = json.loads((ckpt / "state.json").read_text())
    model = ckpt / state["model"]
    model.write_bytes(model.read_bytes()[:100])
    assert_one_line_error(run("predict", "--checkpoint", str(ckpt)), "corrupt or incomplete")
    (ckpt / "state.json").write_text("{not json")
    assert_one_line_error(run("predict", "--checkpoint", str(ckpt)), "corrupt or incomplete")
    assert_one_line_error(run("train", "--resume", str(ckpt), "--epochs", "2"), "corrupt or incomplete")


@pytest.mark.parametrize("signum,sigint", [(signal.SIGINT, signal.SIG_DFL),
                                           (signal.SIGTERM, signal.SIG_DFL),
                                           (signal.SIGTERM, signal.SIG_IGN)],
                         ids=["SIGINT", "SIGTERM", "SIGTERM-to-a-background-job"])
def test_sigint_leaves_a_usable_checkpoint_and_resume_finishes(tmp_path, data_dir, signum, sigint):
    """Ctrl-C, and SIGTERM as `kill` and `timeout` send it: one sentence saying what is saved,
    status 128 + the signal's number. Also for a command started with Ctrl-C ignored (`nohup`,
    a script's `&`), which keeps ignoring it."""
    out = tmp_path / "run"
    # one BLAS thread: this is about signals, and spinning BLAS threads on a loaded machine
    # slowed each epoch 10x (the run then outlived the timeouts below)
    env = {**os.environ, "D2LGRU_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    # far more epochs than the test waits for: it must still be training when SIGINT comes
    # `python -m d2lgru`: the `d2lgru` command, which takes the signals over once started
    proc = subprocess.Popen([sys.executable, "-m", "d2lgru", "train", "--epochs", "100000",
                             "--hidden", "32", "--out", str(out), "--quiet"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell starts background jobs with SIGINT ignored, and Python
                            # keeps an inherited ignore: the default a terminal gives, or that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads((out / "state.json").read_text())["epoch"] >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if sigint == signal.SIG_IGN and sys.platform.startswith("linux"):  # still ignored
        assert _sigint_in(proc.pid, "SigIgn"), "the command stopped ignoring Ctrl-C"
    proc.send_signal(signum)
    _, stderr = _finish(proc)
    assert proc.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr and "--resume" in stderr
    done = json.loads((out / "state.json").read_text())["epoch"]
    assert 3 <= done < 100000
    target = done + 2
    resumed = run("train", "--resume", str(out), "--epochs", str(target), data_dir=data_dir, check=True)
    assert resumed.stdout.startswith("perplexity")
    state = json.loads((out / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == list(range(1, target + 1))
    # the current model and the one before it (kept for readers of the previous state.json)
    assert sorted(p.name for p in out.glob("model-e*.npz")) == \
        [f"model-e{target - 1:04d}.npz", f"model-e{target:04d}.npz"]


@pytest.mark.parametrize("args,spec_gates", [(["--cell", "rnn"], "none"),
                                             (["--gates", "reset-only"], "reset-only")])
def test_exercise_options(tmp_path, data_dir, args, spec_gates):
    out = tmp_path / "run"
    run("train", "--epochs", "1", *SMALL, *args, "--out", str(out), data_dir=data_dir, check=True)
    state = json.loads((out / "state.json").read_text())
    assert state["config"]["gates"] == spec_gates
    assert_one_line_error(run("train", "--cell", "rnn", "--gates", "update-only"), "--gates applies")


def test_reproduce_runs_and_collects(tmp_path, data_dir):
    out = tmp_path / "repro"
    run("reproduce", "--backend", "numpy", "--epochs", "2", *SMALL, "--out", str(out),
        data_dir=data_dir, check=True)
    run("reproduce", "--backend", "numpy", "--cell", "rnn", "--epochs", "2", *SMALL, "--out", str(out),
        data_dir=data_dir, check=True)
    run("reproduce", "--backend", "numpy", "--seed", "3", "--epochs", "2", *SMALL, "--out", str(out),
        data_dir=data_dir, check=True)
    assert sorted(p.name for p in out.iterdir()) == ["numpy-scratch", "numpy-scratch-rnn",
                                                     "numpy-scratch-seed3"]
    proc = run("reproduce", "--collect", str(out), check=True)
    table = (out / "results.md").read_text()
    assert "| numpy | scratch | eager | reset-before | " in table   # seeds 0 and 3: one row
    assert "| 2 | 0, 3 | " in table and table.count("| numpy | scratch | eager | reset-before |") == 1
    assert "| numpy | scratch | eager | plain RNN |" in table
    assert "perplexity" in proc.stdout and (out / "perplexity.png").stat().st_size > 1000
    assert "## How each run ended" in table and "| numpy scratch | " in table
    assert "book's own code" not in table
    # the book's own runs (docs/reproduce/book.py's files) join the second table and the figure
    book = out / "book"
    book.mkdir()
    curve = [20.0] * 380 + [1.1] * 100 + [1.3] * 3 + [1.06] * 17
    (book / "seed-4.json").write_text(json.dumps(
        {"format": "d2lgru.BookRun/1", "seed": 4, "epochs": 500, "perplexity": curve}))
    run("reproduce", "--collect", str(out), check=True)
    assert "| the book's own code | 4 | 1.060 | 1.060 | 381 | 3 | 1.30 |" in \
        (out / "results.md").read_text()
    (book / "seed-5.json").write_text("{}")
    assert_one_line_error(run("reproduce", "--collect", str(out)), "seed-5.json is not a run of",
                          "book.py")
    assert_one_line_error(run("reproduce", "--collect", str(tmp_path / "empty")), "no finished runs")
    assert_one_line_error(run("reproduce", "--backend", "numpy"), "needs --out")


def test_reproduce_collect_writes_its_report_to_out(tmp_path, data_dir):
    """`--collect DIR --out OUT` wrote into DIR, ignoring --out: now the table, the figure and
    the runs file go to OUT (which then rebuilds them alone) and DIR is left as it was."""
    runs, report = tmp_path / "runs", tmp_path / "report" / "new"
    run("reproduce", "--backend", "numpy", "--epochs", "2", *SMALL, "--out", str(runs),
        "--quiet", data_dir=data_dir, check=True)
    before = sorted(p.name for p in runs.iterdir())
    proc = run("reproduce", "--collect", str(runs), "--out", str(report), check=True)
    assert f"written: {report / 'results.md'} and {report / 'perplexity.png'}" in proc.stdout
    assert sorted(p.name for p in runs.iterdir()) == before == ["numpy-scratch"]
    assert sorted(p.name for p in report.iterdir()) == ["perplexity.png", "results.md",
                                                        "runs.json.gz"]
    table = (report / "results.md").read_text()
    assert "| numpy | scratch | eager | reset-before |" in table
    again = tmp_path / "again"
    run("reproduce", "--collect", str(report / "runs.json.gz"), "--out", str(again), check=True)
    assert (again / "results.md").read_text() == table
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    assert_one_line_error(run("reproduce", "--collect", str(runs), "--out", str(note)),
                          f"--out {note} is a file, not a directory")
    assert_one_line_error(run("reproduce", "--collect", str(runs), "--out", ""),
                          "--out is empty; give a directory")
    assert note.read_text() == "mine" and sorted(p.name for p in runs.iterdir()) == before


# -- issue #16: nothing a user does loses a run ---------------------------------------------

def test_an_output_directory_that_holds_a_run_is_refused_then_overwritten_on_request(tmp_path,
                                                                                   data_dir):
    out = tmp_path / "r"
    run("train", "--epochs", "3", *SMALL, "--out", str(out), data_dir=data_dir, check=True)
    state = (out / "state.json").read_bytes()
    again = run("train", "--epochs", "1", *SMALL, "--out", str(out), data_dir=data_dir)
    assert_one_line_error(again, "already holds a run (3 completed epoch(s))", f"--resume {out}",
                          "--overwrite")
    assert (out / "state.json").read_bytes() == state
    run("train", "--epochs", "1", *SMALL, "--out", str(out), "--overwrite", data_dir=data_dir,
        check=True)
    assert json.loads((out / "state.json").read_text())["epoch"] == 1


def test_an_out_directory_of_other_files_is_refused_before_the_work_and_left_alone(tmp_path,
                                                                                   data_dir):
    """`train`, `sweep` and `import` wrote their files among a user's; d2lgru's own files (a
    run's, a sweep's, a lock) are recognised, and a run directory keeps its own rules."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    commands = {"run": [["train", "--epochs", "1", *SMALL],
                        ["import", "--onnx", str(tmp_path / "lm.onnx")]],
                "sweep": [["sweep", "--vary", "lr=1", "--epochs", "1", *SMALL]]}
    for kind, command in ((k, c) for k, cs in commands.items() for c in cs):
        assert_one_line_error(run(*command, "--out", str(mine), data_dir=data_dir),
                              f"--out {mine} holds files that are not a d2lgru {kind} "
                              f"(notes.txt); choose a new or empty directory")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # not even a lock file
    # a run's directory is no sweep, and a sweep's is no run
    trained, swept = tmp_path / "run", tmp_path / "sweep"
    run("train", "--epochs", "1", *SMALL, "--out", str(trained), "--quiet", data_dir=data_dir,
        check=True)
    run("sweep", "--vary", "lr=1", "--epochs", "1", *SMALL, "--out", str(swept), "--quiet",
        data_dir=data_dir, check=True)
    assert_one_line_error(run("sweep", "--vary", "lr=1", "--epochs", "1", *SMALL, "--out",
                              str(trained), data_dir=data_dir),
                          f"--out {trained} holds files that are not a d2lgru sweep (.d2lgru.lock, model-e0001.npz")
    assert_one_line_error(run("train", "--epochs", "1", *SMALL, "--out", str(swept),
                              data_dir=data_dir),
                          f"--out {swept} holds files that are not a d2lgru run (lr=1, sweep.json")
    # d2lgru's own: a lock left by a run stopped in its first epoch; a setting's directory
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / ".d2lgru.lock").write_text("123\n")
    run("train", "--epochs", "1", *SMALL, "--out", str(tmp_path / "locked"), "--quiet",
        data_dir=data_dir, check=True)
    (tmp_path / "unfinished" / "lr=1").mkdir(parents=True)
    (tmp_path / "unfinished" / "lr=1" / ".d2lgru.lock").write_text("123\n")
    run("sweep", "--vary", "lr=1", "--epochs", "1", *SMALL, "--out",
        str(tmp_path / "unfinished"), "--quiet", data_dir=data_dir, check=True)
    # a run with the user's notes beside it: its own rules, and --overwrite keeps the notes
    (trained / "notes.txt").write_text("mine")
    assert_one_line_error(run("train", "--epochs", "1", *SMALL, "--out", str(trained),
                              data_dir=data_dir), "already holds a run")
    run("train", "--epochs", "1", *SMALL, "--out", str(trained), "--overwrite", "--quiet",
        data_dir=data_dir, check=True)
    assert (trained / "notes.txt").read_text() == "mine"


def test_reproduce_refuses_to_redo_a_run_and_resumes_it(tmp_path, data_dir):
    out = tmp_path / "repro"
    run("reproduce", "--backend", "numpy", "--epochs", "2", *SMALL, "--out", str(out),
        data_dir=data_dir, check=True)
    assert_one_line_error(run("reproduce", "--backend", "numpy", "--epochs", "3", *SMALL, "--out",
                              str(out), data_dir=data_dir), "already holds a run",
                          "the same command plus --resume")  # reproduce's --resume takes no DIR
    run("reproduce", "--backend", "numpy", "--epochs", "3", *SMALL, "--out", str(out), "--resume",
        data_dir=data_dir, check=True)
    state = json.loads((out / "numpy-scratch" / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]


@pytest.mark.parametrize("args,fragments", [
    (["--lr", "inf"], ["--lr", "positive finite number, got inf"]),
    (["--clip", "nan"], ["--clip", "positive finite number"]),
    (["--hidden", "100000"], ["--hidden 100000", "GiB", "smaller --hidden or fewer --layers"]),
    (["--seed", "-1"], ["seed must be a non-negative integer"]),
])
def test_options_that_cannot_train_are_one_line(args, fragments, data_dir):
    assert_one_line_error(run("train", "--epochs", "1", *args, data_dir=data_dir), *fragments)


def test_divergence_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    out = tmp_path / "r"
    proc = run("train", "--epochs", "30", *SMALL, "--lr", "100", "--clip", "100", "--out", str(out),
               "--quiet", data_dir=data_dir)
    assert_one_line_error(proc, "training diverged in epoch", "keeps epoch", "smaller --lr")
    assert "RuntimeWarning" not in proc.stderr
    epoch = json.loads((out / "state.json").read_text())["epoch"]
    assert f"diverged in epoch {epoch + 1} " in proc.stderr
    run("predict", "--checkpoint", str(out), check=True)


def test_a_perplexity_that_overflows_is_divergence_too(tmp_path, data_dir):
    """A finite loss past ~710 nats makes exp(loss) infinite: not an epoch to save."""
    out = tmp_path / "r"
    proc = run("train", "--epochs", "5", "--max-tokens", "2000", "--lr", "1000", "--clip", "1000",
               "--out", str(out), "--quiet", data_dir=data_dir)
    assert_one_line_error(proc, "training diverged in epoch", "perplexity inf")
    state = json.loads((out / "state.json").read_text())
    assert all(h["perplexity"] < float("inf") for h in state["history"])


def test_resume_without_epochs_keeps_the_runs_own_and_a_finished_run_its_figures(tmp_path,
                                                                                 data_dir):
    out = tmp_path / "r"
    run("train", "--epochs", "2", *SMALL, "--out", str(out), data_dir=data_dir, check=True)
    first = json.loads((out / "result.json").read_text())
    proc = run("train", "--resume", str(out), "--quiet", data_dir=data_dir, check=True)
    assert "nothing to train: the checkpoint already holds 2 epoch(s)" in proc.stderr
    state = json.loads((out / "state.json").read_text())
    assert state["epoch"] == 2 and state["config"]["epochs"] == 2  # not the default 500
    again = json.loads((out / "result.json").read_text())  # strict JSON: no NaN
    assert again["tokens_per_sec"] == pytest.approx(first["tokens_per_sec"], rel=1e-9)
    run("train", "--resume", str(out), "--epochs", "3", "--quiet", data_dir=data_dir, check=True)
    assert json.loads((out / "state.json").read_text())["epoch"] == 3


@pytest.mark.parametrize("flag", ["--out", "--resume"])
def test_an_empty_directory_option_is_refused(flag, data_dir):
    assert_one_line_error(run("train", "--epochs", "1", *SMALL, flag, "", data_dir=data_dir),
                          f"{flag} is empty")


_WITH_OUT = {"train": ["train", "--epochs", "1", *SMALL],
             "sweep": ["sweep", "--vary", "hidden=8", "--epochs", "1"],
             "conformance": ["conformance", "--cases", "scratch:gru/*"],
             "gates": ["gates", "--checkpoint", "run"]}


@pytest.mark.parametrize("command,flag", [(c, "--data") for c in ("train", "sweep", "conformance")]
                         + [(c, "--backend") for c in _WITH_OUT])
def test_an_empty_data_or_backend_is_refused_not_taken_for_the_default(tmp_path, data_dir,
                                                                       command, flag):
    """`--data $DATA` or `--backend $B` with the variable unset: the default (the data
    directory, numpy) is not what was asked for."""
    from d2lgru.backends import available_backends
    args = [*_WITH_OUT[command], "--out"]
    out = tmp_path / "out"
    proc = run(*args, str(out), flag, "", data_dir=data_dir)
    if flag == "--data":
        assert_one_line_error(proc, "--data is empty; give a text file or a directory that "
                                    "holds timemachine.txt")
    else:
        assert_one_line_error(proc, "--backend is empty; give a backend's name (installed here: "
                                    f"{', '.join(available_backends())};")
    assert not out.exists()


def test_conformance_checks_its_data_path_as_train_does(tmp_path, data_dir):
    """The layer cases read no corpus, so a wrong --data went unnoticed: it is refused before
    the checks, in train's words."""
    missing, out = tmp_path / "missing.txt", tmp_path / "conf"
    refusal = "data path '%s' does not exist; name a text file" % missing
    assert_one_line_error(run("train", "--epochs", "1", *SMALL, "--data", str(missing)), refusal)
    assert_one_line_error(run("conformance", "--cases", "scratch:gru/*", "--data", str(missing),
                              "--out", str(out)), refusal)
    assert not out.exists()
    run("conformance", "--cases", "scratch:gru/T7-N4-*", "--data", str(data_dir), "--out",
        str(out), check=True)
    assert (out / "numpy" / "report.json").is_file()


def test_more_threads_than_cpus_says_so(data_dir):
    from d2lgru.threads import usable_cpus
    cpus = usable_cpus()
    proc = run("train", "--epochs", "1", *SMALL, "--threads", str(cpus + 1), "--quiet",
               data_dir=data_dir, check=True)
    assert f"note: {cpus + 1} threads on" in proc.stderr


@pytest.mark.parametrize("where", ["a file", "under a file", "in /proc"])
def test_unwritable_output_directories_are_one_line(tmp_path, data_dir, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = {"a file": blocker, "under a file": blocker / "run",
           "in /proc": "/proc/d2lgru-test/run"}[where]
    assert_one_line_error(run("train", "--epochs", "1", *SMALL, "--out", str(out),
                              data_dir=data_dir), str(out) if where != "in /proc" else "/proc")


def test_a_full_disk_is_one_line_and_keeps_the_checkpoint(tmp_path, data_dir):
    """RLIMIT_FSIZE stands in for a full disk: writes past it fail with EFBIG."""
    import resource

    out = tmp_path / "r"
    run("train", "--epochs", "2", *SMALL, "--out", str(out), data_dir=data_dir, check=True)
    state = (out / "state.json").read_bytes()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    proc = subprocess.run([sys.executable, "-m", "d2lgru.cli", "train", "--resume", str(out),
                           "--epochs", "4"], capture_output=True, text=True,
                          env={**os.environ, "D2LGRU_DATA_DIR": str(data_dir)},
                          preexec_fn=small_files, timeout=300)
    assert_one_line_error(proc, "File too large")
    assert (out / "state.json").read_bytes() == state
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    run("predict", "--checkpoint", str(out), check=True)


@pytest.mark.parametrize("content", ["null", "[]", "3", '"x"', "{}"])
def test_a_state_json_of_the_wrong_shape_is_one_line(tmp_path, data_dir, content):
    out = tmp_path / "r"
    run("train", "--epochs", "1", *SMALL, "--out", str(out), data_dir=data_dir, check=True)
    (out / "state.json").write_text(content)
    assert_one_line_error(run("predict", "--checkpoint", str(out)), "corrupt or incomplete")
    assert_one_line_error(run("train", "--resume", str(out), "--epochs", "2"),
                          "corrupt or incomplete")


def test_resume_with_overwrite_is_refused_and_the_run_kept(tmp_path, data_dir):
    out = tmp_path / "r"
    run("train", "--epochs", "1", *SMALL, "--out", str(out), "--quiet", data_dir=data_dir,
        check=True)
    before = sorted(p.name for p in out.iterdir()), (out / "state.json").read_bytes()
    assert_one_line_error(run("train", "--resume", str(out), "--overwrite", "--epochs", "2",
                              "--quiet", data_dir=data_dir),
                          "--resume continues the run and --overwrite starts it over")
    assert (sorted(p.name for p in out.iterdir()), (out / "state.json").read_bytes()) == before


def test_an_empty_sweep_out_is_refused_before_anything_is_written(data_dir):
    assert_one_line_error(run("sweep", "--vary", "hidden=8,16", "--epochs", "1", "--out", "",
                              data_dir=data_dir), "--out is empty; give a directory")


def test_a_file_where_a_directory_is_wanted_is_refused_before_the_work(tmp_path, data_dir):
    note = tmp_path / "notes.txt"
    note.write_text("mine")
    for args in (["sweep", "--vary", "hidden=8,16", "--epochs", "1"],
                 ["conformance", "--cases", "scratch:gru/*"]):
        assert_one_line_error(run(*args, "--out", str(note), data_dir=data_dir),
                              f"--out {note} is a file, not a directory")
    assert note.read_text() == "mine"


def test_a_missing_checkpoint_is_said_to_be_missing_and_debug_works_after_the_command(tmp_path):
    missing = tmp_path / "nope"
    assert_one_line_error(run("predict", "--checkpoint", str(missing)),
                          f"{missing} is not a d2lgru checkpoint: it does not exist")
    proc = run("predict", "--checkpoint", str(missing), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "CheckpointError" in proc.stderr


def test_a_missing_vocabulary_names_the_file_or_the_option(tmp_path, data_dir):
    """Not errno's `[Errno 2] No such file or directory: '...'`: which file, and what to do."""
    out = tmp_path / "r"
    run("train", "--epochs", "1", *SMALL, "--out", str(out), "--quiet", data_dir=data_dir,
        check=True)
    (out / "vocab.json").unlink()
    for args in (["predict", "--checkpoint", str(out)], ["train", "--resume", str(out)]):
        proc = run(*args, data_dir=data_dir)
        assert_one_line_error(proc, f"checkpoint {out} is incomplete: it has no vocab.json",
                              "put the run's vocab.json back")
        assert "Errno" not in proc.stderr
    missing = tmp_path / "vocab.json"
    # the vocabulary is read first: no ONNX file (or onnx package) is needed to be told
    for vocab, why in ((missing, "does not exist"), (tmp_path, "cannot be read (Is a directory)")):
        assert_one_line_error(run("import", "--onnx", str(tmp_path / "lm.onnx"), "--out",
                                  str(tmp_path / "imported"), "--vocab", str(vocab)),
                              f"--vocab {vocab} {why}; give the vocab.json")
    missing.write_text("{")
    assert_one_line_error(run("import", "--onnx", str(tmp_path / "lm.onnx"), "--out",
                              str(tmp_path / "imported"), "--vocab", str(missing)),
                          f"--vocab '{missing}' is not a valid d2lgru vocabulary JSON file")
    assert not (tmp_path / "imported").exists()


def test_resume_lists_every_conflicting_option(tmp_path, data_dir):
    out = tmp_path / "r"
    run("train", "--epochs", "1", *SMALL, "--out", str(out), data_dir=data_dir, check=True)
    proc = run("train", "--resume", str(out), "--epochs", "2", "--hidden", "32", "--lr", "0.5",
               "--batch-size", "4", data_dir=data_dir)
    assert_one_line_error(proc, "--hidden: checkpoint 16, given 32",
                          "--lr: checkpoint 1.0, given 0.5")
    assert "batch-size" not in proc.stderr  # the same value is no conflict
    run("train", "--resume", str(out), "--epochs", "2", "--batch-size", "4", data_dir=data_dir,
        check=True)


def test_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, data_dir):
    bad = ["train", "--epochs", "1", "--data", str(tmp_path / "missing.txt")]
    assert_one_line_error(run(*bad))
    for debug in (run("--debug", *bad), run(*bad, env={"D2LGRU_DEBUG": "1"})):
        assert debug.returncode == 1 and "Traceback" in debug.stderr and "DataError" in debug.stderr
    # a bug (here: a ValueError from inside the library, not a checked input) is not hidden
    bug = subprocess.run(
        [sys.executable, "-c", "import sys, d2lgru.train as t\n"
         "def broken(*a, **k): raise ValueError('an internal bug')\n"
         "t.predict = broken\n"
         "from d2lgru.cli import main; sys.exit(main(sys.argv[1:]))",
         "train", "--epochs", "1", *SMALL], capture_output=True, text=True,
        env={**os.environ, "D2LGRU_DATA_DIR": str(data_dir)}, timeout=300)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "an internal bug" in bug.stderr


def _train_then_sigint(args, after_s, env=None):
    """SIGINT once the command has run ``after_s`` seconds of CPU time: progress, where a wall
    clock on a busy machine can still be inside the interpreter's own start-up (14 ms of CPU
    here, before d2lgru's first line)."""
    # `python -m d2lgru` is what the `d2lgru` command runs (d2lgru.__main__)
    proc = subprocess.Popen([sys.executable, "-m", "d2lgru", *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_exec(proc)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and _cpu_seconds(proc.pid) < after_s:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, stderr = _finish(proc)
    return proc.returncode, stderr


def _finish(proc, timeout=120):
    """``proc.communicate``, and never a training left running when a test fails."""
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_exec(proc, timeout=60):
    """Until the child's interpreter catches SIGINT: a signal that arrives between fork and
    exec is handled by the copy of pytest's handler in the child and lost, and one that arrives
    while CPython installs its own handler is dropped by CPython ("Signal 2 ignored due to race
    condition"), neither of which is the program's doing."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if b"d2lgru" in open(f"/proc/{proc.pid}/cmdline", "rb").read() and _catches_sigint(
                    proc.pid):
                return
        except OSError:
            pass
        time.sleep(0.002)


def _cpu_seconds(pid) -> float:
    """User and system CPU time of process ``pid`` (0 once it has ended)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _catches_sigint(pid) -> bool:
    return _sigint_in(pid, "SigCgt")


def _sigint_in(pid, mask) -> bool:
    """Whether SIGINT is in process ``pid``'s signal ``mask`` (SigCgt: caught, SigIgn: ignored)."""
    status = open(f"/proc/{pid}/status").read()
    bits = int(re.search(rf"^{mask}:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    return bool(bits >> (signal.SIGINT - 1) & 1)


def test_an_interrupt_that_ended_a_string_eval_still_exits_with_130(tmp_path):
    """CPython remembers a KeyboardInterrupt that ended a string ``exec``/``eval`` (a
    ``namedtuple`` being made, say) and, under ``python -m``, ends the process by SIGINT at exit
    even when the program handled it; the command's exit status must not depend on that."""
    (tmp_path / "interrupted_in_eval.py").write_text(
        "import sys\n"
        "from d2lgru import cli\n"
        "try:\n"
        "    exec('raise KeyboardInterrupt')\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(cli._interrupted())\n")
    proc = subprocess.run([sys.executable, "-m", "interrupted_in_eval"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)


@pytest.mark.parametrize("after_s", [0.15, 0.2, 0.3, 0.6])
def test_sigint_at_start_up_is_one_line(tmp_path, data_dir, after_s):
    """From the moment d2lgru's code runs (seconds of the command's CPU time: the interpreter's
    own start-up, before any program can install a handler, takes 14 ms of it), through its
    imports and into the first epochs."""
    out = tmp_path / "r"
    code, stderr = _train_then_sigint(["train", "--epochs", "100000", "--out", str(out)], after_s,
                                      env={"D2LGRU_DATA_DIR": str(data_dir)})
    assert code == 130 and "Traceback" not in stderr, stderr
    # the advice is true: --resume once an epoch is saved, nothing to resume before
    assert ("--resume" in stderr) == (out / "state.json").exists(), stderr


def test_an_interrupt_dropped_on_its_way_is_raised_before_the_next_step():
    """C code that calls back into Python can drop the KeyboardInterrupt raised there (the
    first import of ``numpy.random._generator`` did, and a training went on after its Ctrl-C):
    the command's handler remembers the signal, and the trainer raises it again before its
    next step."""
    import numpy as np

    from d2lgru import _io, get_backend, init_lm
    try:
        _io.interrupt(signal.SIGINT, None)
    except KeyboardInterrupt:
        pass  # dropped, as that C code did
    trainer = get_backend("numpy").make_trainer(init_lm(28, 8, seed=0))
    batch = (np.zeros((2, 5), np.int64), np.ones((2, 5), np.int64))
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.train_epoch([batch])
    finally:
        assert _io.interrupt_handled() == signal.SIGINT
    assert _io.interrupt_handled() == 0 and trainer.train_epoch([batch]).shape == (1,)


def test_sigint_in_the_first_epoch_offers_no_resume(tmp_path, data_dir):
    out = tmp_path / "r"
    code, stderr = _train_then_sigint(["train", "--epochs", "3", "--max-tokens", "-1", "--out",
                                       str(out), "--quiet"], 2.0,
                                      env={"D2LGRU_DATA_DIR": str(data_dir)})
    assert code == 130 and "Traceback" not in stderr, stderr
    assert "no epoch had finished, so nothing was saved" in stderr and "--resume" not in stderr
    assert not (out / "state.json").exists()


def test_sigint_under_reproduce_offers_reproduce_resume(tmp_path, data_dir):
    out = tmp_path / "repro"
    proc = subprocess.Popen([sys.executable, "-m", "d2lgru.cli", "reproduce", "--backend", "numpy",
                             "--epochs", "100000", "--hidden", "32", "--out", str(out), "--quiet"],
                            env={**os.environ, "D2LGRU_DATA_DIR": str(data_dir),
                                 "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = out / "numpy-scratch" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = _finish(proc)
    assert proc.returncode == 130 and "Traceback" not in stderr
    assert "d2lgru reproduce` command plus --resume" in stderr, stderr
