"""The reproduce report's arithmetic on made-up curves (the CLI test runs the real thing), and
the runs file that stands for the run directories."""

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest

from d2lgru.reproduce import (RUNS_FILE, ending, markdown_table, read_runs, row_perplexity, rows,
                              shared_spikes, spike_windows, write_report)
from d2lgru.train import RESULT_FILE, STATE_FILE, CheckpointError

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "reproduce"


def run(history, gates="both"):
    return {"history": history, "config": {"gates": gates}}


def test_ending_reads_the_tail_of_a_curve():
    curve = [20.0] * 380 + [1.1] * 100 + [1.3] * 3 + [1.06] * 17
    assert ending(curve) == {"last": 1.06, "settled": 1.06, "first_below": 381,
                             "above_last_100": 3, "peak_last_100": 1.3}
    assert ending([3.0, 2.0])["first_below"] is None


def test_spike_windows_share_epochs_above_the_bar_by_stretch():
    spiky = [1.0] * 95 + [1.3] * 5          # the last stretch of 10 is half above 1.15
    calm = [1.0] * 100
    table = spike_windows([run(spiky), run(calm), run([2.0] * 100, gates="none")],
                          [{"history": calm}])
    assert "over all 3 GRU runs with both gates" in table   # the plain RNN is left out
    assert table.splitlines()[3].startswith("| 1–10 | 11–20 |")
    assert table.splitlines()[-1] == "| " + " | ".join(["0%"] * 9 + ["17%"]) + " |"
    assert spike_windows([run(calm), run(calm[:50])], []) == ""  # no common window


def result(seed, last, backend="numpy", gates="both", name=None):
    history = [20.0] * 380 + [1.06] * 119 + [last]
    return {"backend": backend, "impl": "scratch", "mode": "eager", "framework_version": "1",
            "device": "cpu", "epochs": 500, "perplexity": last, "tokens_per_sec": 1000.0 + seed,
            "predictions": {}, "history": history, "run": name or f"{backend}-{seed}-{gates}",
            "config": {"gates": gates, "reset_after": False, "seed": seed, "data": f"/d{seed}"}}


def test_runs_that_differ_only_in_seed_make_one_row_judged_by_the_median():
    runs = [result(1, 1.31), result(0, 1.07), result(2, 1.08), result(0, 1.05, gates="reset-only"),
            result(0, 1.09, backend="torch")]
    groups = rows(runs)
    assert [[r["config"]["seed"] for r in g] for g in groups] == [[0, 1, 2], [0], [0]]
    assert row_perplexity(groups[0]) == pytest.approx(1.08)   # one spiking seed does not move it
    table = markdown_table(runs)
    assert "| 500 | 0–2 | 1.08 | 1.07 · 1.31 · 1.08 | 1,000 |" in table   # seed 0's tokens/s
    assert "- **numpy scratch**: perplexity 1.1, 1000.0 tokens/sec on cpu" in table
    assert "| numpy scratch | 0–2 | 1.080 (1.070–1.310) | 1.060 (1.060–1.060) | 381 (381–381) | " \
           "0 (0–1) | 1.31 |" in table


def test_two_runs_of_the_same_seed_and_config_are_an_error():
    with pytest.raises(CheckpointError, match="numpy-a and numpy-b are the same run .seed 0"):
        rows([result(0, 1.07, name="numpy-a"), result(0, 1.08, name="numpy-b")])


def test_shared_spikes_compares_runs_of_one_seed_with_runs_of_different_seeds():
    def spiky(seed, epochs):
        r = result(seed, 1.06)
        for e in epochs:
            r["history"][e] = 1.3
        return r
    runs = [spiky(0, [-5, -4]), spiky(0, [-5, -3]), spiky(1, [-5, -20])]
    text = shared_spikes(runs)   # same seed: 1 of 3 epochs shared; the others: 1 of 3 each
    assert "in 33% when they share the seed (1 pair) and in 33% when they do not (2 pairs)" in text
    assert shared_spikes(runs[:2]) == ""   # nothing to compare with


# -- the runs file ------------------------------------------------------------------------------
def write_run_dir(directory, name, r):
    """A finished run as ``d2lgru reproduce`` leaves it: result.json and state.json's history."""
    run_dir = directory / name
    run_dir.mkdir(parents=True)
    result = {k: v for k, v in r.items() if k not in ("history", "run")}
    (run_dir / RESULT_FILE).write_text(json.dumps(result))
    (run_dir / STATE_FILE).write_text(json.dumps(
        {"epoch": len(r["history"]),
         "history": [{"epoch": e + 1, "perplexity": p} for e, p in enumerate(r["history"])]}))


def absolute_paths(value) -> list[str]:
    """Every string in a JSON value that is an absolute path (or holds one of the usual roots)."""
    if isinstance(value, dict):
        return [p for v in [*value.keys(), *value.values()] for p in absolute_paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in absolute_paths(v)]
    if isinstance(value, str) and (os.path.isabs(value) or
                                   any(f"/{root}/" in value for root in ("work", "root", "home"))):
        return [value]
    return []


def test_the_runs_file_rebuilds_the_table_of_the_run_directories(tmp_path):
    dirs, only_file = tmp_path / "dirs", tmp_path / "file"
    runs = [result(0, 1.07), result(1, 1.31), result(0, 1.09, backend="torch"),
            result(0, 1.05, gates="reset-only")]
    for r, name in zip(runs, ["numpy-scratch", "numpy-scratch-seed1", "torch-scratch",
                              "numpy-scratch-reset-only"]):
        write_run_dir(dirs, name, r)
    (dirs / "book").mkdir()
    (dirs / "book" / "seed-4.json").write_text(json.dumps(
        {"format": "d2lgru.BookRun/1", "seed": 4, "epochs": 500, "perplexity": runs[0]["history"]}))
    write_report(dirs)
    only_file.mkdir()
    shutil.copy(dirs / RUNS_FILE, only_file / RUNS_FILE)
    write_report(only_file)
    table = (dirs / "results.md").read_text()
    assert "the book's own code" in table and "| numpy | scratch | eager | reset-before |" in table
    assert (only_file / "results.md").read_text() == table
    write_report(only_file / RUNS_FILE)                       # the file itself, results beside it
    assert (only_file / "results.md").read_text() == table
    record = json.loads(gzip.decompress((dirs / RUNS_FILE).read_bytes()))
    assert absolute_paths(record) == [] and absolute_paths(runs)   # config.data ("/d0") left out
    # a run directory replaces the recorded run of its name; the others stay recorded
    write_run_dir(only_file, "torch-scratch", result(0, 1.2, backend="torch"))
    recorded, book = read_runs(only_file / RUNS_FILE)
    write_report(only_file)
    again, _ = read_runs(only_file / RUNS_FILE)
    assert [r["run"] for r in again] == [r["run"] for r in recorded] and len(book) == 1
    assert [r["history"][-1] for r in again if r["run"] == "torch-scratch"] == [1.2]


def test_a_run_resumed_past_its_result_and_interrupted_is_left_out(tmp_path, capsys):
    """A run finished at 3 epochs, then `reproduce --resume --epochs 400` stopped at epoch 60:
    result.json (3 epochs: that model's predictions and tokens/s) and state.json (60 epochs)
    describe different models, so the run makes no row and stderr says how to finish it."""
    early = result(0, 5.0)
    early.update(epochs=3, history=[9.0, 7.0, 5.0])
    write_run_dir(tmp_path, "numpy-scratch", early)
    state_file = tmp_path / "numpy-scratch" / STATE_FILE
    state = json.loads(state_file.read_text())
    state.update(epoch=60, history=[{"epoch": e, "perplexity": 10 - e / 10} for e in range(1, 61)])
    state_file.write_text(json.dumps(state))
    write_run_dir(tmp_path, "torch-scratch", result(0, 1.07, backend="torch"))
    table, _ = write_report(tmp_path)
    text = table.read_text()
    assert "| torch | scratch |" in text and "| numpy | scratch |" not in text
    assert [r["run"] for r in read_runs(tmp_path / RUNS_FILE)[0]] == ["torch-scratch"]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert f"leaving out {tmp_path / 'numpy-scratch'}:" in lines[0]
    assert "records 3 epoch(s) but its state.json holds 60" in lines[0]
    assert f"`d2lgru train --resume {tmp_path / 'numpy-scratch'} --backend numpy --impl " \
           "scratch`" in lines[0]
    # finished (result.json rewritten at epoch 60), it is a row again
    early.update(epochs=60, history=[10 - e / 10 for e in range(1, 61)])
    (tmp_path / "numpy-scratch" / RESULT_FILE).write_text(
        json.dumps({k: v for k, v in early.items() if k not in ("history", "run")}))
    text = write_report(tmp_path)[0].read_text()
    assert "| numpy | scratch |" in text and "| 60 | 0 | 4.00 |" in text
    assert capsys.readouterr().err == ""
    # only unfinished runs: nothing to tabulate is the one-line error it always was
    shutil.rmtree(tmp_path / "torch-scratch")
    (tmp_path / RUNS_FILE).unlink()
    state_file.write_text(json.dumps(dict(state, epoch=61)))
    with pytest.raises(CheckpointError, match="no finished runs"):
        write_report(tmp_path)


def test_a_file_that_is_not_a_runs_file_is_an_error(tmp_path):
    (tmp_path / RUNS_FILE).write_bytes(gzip.compress(b'{"format": "other"}'))
    with pytest.raises(CheckpointError, match="is not a runs file"):
        write_report(tmp_path)


def test_the_committed_runs_file_is_small_portable_and_makes_the_committed_table(tmp_path):
    path = COMMITTED / RUNS_FILE
    assert path.stat().st_size < 1_000_000
    assert absolute_paths(json.loads(gzip.decompress(path.read_bytes()))) == []
    runs, book = read_runs(path)
    assert len(runs) >= 50 and len(book) == 10
    assert all(len(r["history"]) == 500 for r in runs + book)
    shutil.copy(path, tmp_path / RUNS_FILE)
    write_report(tmp_path)
    assert (tmp_path / "results.md").read_text() == (COMMITTED / "results.md").read_text()
