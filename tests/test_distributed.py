"""Data-parallel training (issue #19) on the environment's backend ($D2LGRU_BACKEND), 2 workers
on localhost, through the real ``d2lgru train --nproc 2`` and the framework's own engine.

* parity: 10 SGD steps (5 epochs of 2 batches) with W=2, B=32 against one process with B=32 --
  losses within relative 1e-4, final weights within the conformance table's training tolerance;
* the same check fails when the gradients are summed instead of averaged, or not reduced at all
  (``$D2LGRU_DIST_REDUCTION``, read by the shared core);
* a W=2 checkpoint resumed with W=1 continues exactly as the one-process run does;
* SIGKILL of one worker after it has trained an epoch: the launch ends non-zero within a bound,
  its last line names the rank, the checkpoint directory loads;
* a backend that declares no data-parallel training refuses with its sentence.

The framework-free parts (the world from the launchers' variables, the row split, the errors)
run in every environment.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from d2lgru import distributed
from d2lgru.backends import get_backend, resolve_name
from d2lgru.checkpoint import CheckpointError, load
from d2lgru.conformance.tables import TOLERANCES
from d2lgru.distributed import World, check_batch_size, shard
from d2lgru.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parents[1]
BACKEND = resolve_name(os.environ.get("D2LGRU_BACKEND") or None)
#: 2 batches an epoch at every offset (max-tokens 2300, B=32, T=35), so 5 epochs are 10 steps;
#: clip 0.2 is below most steps' gradient norm (0.19 at the first) so the clip is exercised, and
#: a summed gradient (twice the norm) is clipped differently from the average
ARGS = ["--hidden", "32", "--batch-size", "32", "--num-steps", "35", "--max-tokens", "2300",
        "--clip", "0.2", "--seed", "0", "--quiet"]
EPOCHS = 5
#: how long a 2-worker launch may take to end after one worker is killed
KILL_BOUND_S = 60


def _supported() -> bool:
    return get_backend(BACKEND).distributed_refusal is None


needs_distributed = pytest.mark.skipif(
    "not _supported()",
    reason="this backend declares no data-parallel training (tested by test_refusal)")


def d2lgru(*args, env=None, **kwargs) -> subprocess.Popen:
    """``python -m d2lgru ARGS`` from the repository root (so the workers import this
    checkout), with one thread and the test corpus."""
    return subprocess.Popen([sys.executable, "-m", "d2lgru", *args], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "D2LGRU_THREADS": "1",
                                 "D2LGRU_BACKEND": BACKEND, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run(*args, env=None, timeout=600):
    proc = d2lgru(*args, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def train_run(out: Path, *extra, epochs=EPOCHS, env=None) -> dict:
    code, stdout, stderr = run("train", "--out", str(out), "--epochs", str(epochs), *ARGS,
                               *extra, env=env)
    assert code == 0, stderr[-3000:]
    return {"ckpt": load(out), "stdout": stdout, "stderr": stderr, "out": out}


def compare(a: dict, b: dict) -> tuple[float, float, bool]:
    """(max relative loss difference, max weight difference, weights within the table)."""
    la = np.log([h["perplexity"] for h in a["history"]])
    lb = np.log([h["perplexity"] for h in b["history"]])
    rel = float(np.max(np.abs(la - lb) / np.abs(lb)))
    tol = TOLERANCES[("float32", "train_weights")]
    A, B = a["model"].to_arrays(), b["model"].to_arrays()
    worst = max(float(np.max(np.abs(A[k] - B[k]))) for k in B)
    close = all(np.allclose(A[k], B[k], rtol=tol.rtol, atol=tol.atol) for k in B)
    return rel, worst, close


def parity_holds(a, b) -> bool:
    rel, _, close = compare(a, b)
    return rel <= TOLERANCES[("float32", "train_loss")].rtol and close


# -- framework-free: the world, the split, the errors -----------------------------------------
def test_world_from_each_launchers_variables():
    assert World.from_env({}) == World()
    assert World.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
                           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}) == \
        World(1, 2, 1, "10.0.0.1:29500")
    tf_config = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker",
                                                                       "index": 2}}
    assert World.from_env({"TF_CONFIG": json.dumps(tf_config)}) == World(2, 3, 0, "a:1")
    assert World.from_env({"PADDLE_TRAINER_ID": "1", "PADDLE_TRAINERS_NUM": "2",
                           "PADDLE_TRAINER_ENDPOINTS": "h:1,h:2"}) == World(1, 2, 0, "h:1")
    msrun = {"MS_ROLE": "MS_WORKER", "RANK_ID": "1", "MS_WORKER_NUM": "2", "DEVICE_ID": "1",
             "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118"}
    assert World.from_env(msrun) == World(1, 2, 1, "127.0.0.1:8118")
    # msrun's scheduler runs the workers' command line too: it serves, it does not train
    assert World.from_env({**msrun, "MS_ROLE": "MS_SCHED"}) == World()
    assert distributed.serves_only({**msrun, "MS_ROLE": "MS_SCHED"})
    assert not distributed.serves_only(msrun)
    # d2lgru's own variables win over a launcher's
    assert World.from_env({"D2LGRU_RANK": "0", "D2LGRU_WORLD_SIZE": "2",
                           "D2LGRU_COORDINATOR": "h:9", "RANK": "1", "WORLD_SIZE": "4"}) == \
        World(0, 2, 0, "h:9")
    with pytest.raises(InvalidArgumentError, match="D2LGRU_RANK"):
        World.from_env({"D2LGRU_RANK": "x", "D2LGRU_WORLD_SIZE": "2"})
    with pytest.raises(InvalidArgumentError, match=r"rank must be .* \[0, 2\)"):
        World.from_env({"D2LGRU_RANK": "2", "D2LGRU_WORLD_SIZE": "2"})


def test_shard_takes_each_ranks_contiguous_rows():
    X = np.arange(8 * 3).reshape(8, 3)
    batches = [(X, X + 100), (X + 1000, X + 2000)]
    parts = [shard(batches, World(r, 4)) for r in range(4)]
    for r, part in enumerate(parts):
        assert [x.tolist() for x, _ in part] == [X[2 * r:2 * r + 2].tolist(),
                                                 (X + 1000)[2 * r:2 * r + 2].tolist()]
    # the shards, stacked in rank order, are the global batch
    assert np.array_equal(np.concatenate([p[0][1] for p in parts]), X + 100)


def test_batch_size_must_divide_by_the_world():
    check_batch_size(32, World(0, 4))
    with pytest.raises(InvalidArgumentError) as info:
        check_batch_size(32, World(0, 3))
    msg = str(info.value)
    assert "--batch-size 32" in msg and "3 workers" in msg and "1, 2, 4, 8, 16, 32" in msg


def test_the_cli_refuses_an_indivisible_batch_before_starting_workers():
    code, _, err = run("train", "--nproc", "3", "--batch-size", "32", "--epochs", "1",
                       timeout=120)
    assert code == 2 and "does not split across 3 workers" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_the_worker_command_line_drops_nproc():
    from d2lgru.cli import _without_nproc
    assert _without_nproc(["train", "--nproc", "2", "--out", "x", "--nproc=3", "--epochs", "1"]) \
        == ["train", "--out", "x", "--epochs", "1"]


def test_mxnet_workers_and_their_kvstore_meet_at_the_coordinator_port():
    ports = [4001, 4002]
    env = distributed.worker_env("mxnet", World(1, 2, 1, "127.0.0.1:4001"), ports)
    assert env["DMLC_ROLE"] == "worker" and env["D2LGRU_RANK"] == "1"
    assert (env["DMLC_PS_ROOT_URI"], env["DMLC_PS_ROOT_PORT"]) == ("127.0.0.1", "4001")
    assert (env["DMLC_NUM_SERVER"], env["DMLC_NUM_WORKER"]) == ("1", "2")
    helpers = distributed.services("mxnet", 2, ports)
    assert [e["DMLC_ROLE"] for _, e in helpers] == ["scheduler", "server"]
    assert all(e["DMLC_PS_ROOT_PORT"] == "4001" and "d2lgru" not in c for c, e in helpers)
    assert distributed.services("tensorflow", 2, ports) == []


def test_the_launcher_names_the_failure_it_saw_first():
    # torchrun lists the other failures, then its root cause; a signal other than its own
    # SIGTERM is what started it
    assert distributed.first_failure([(0, 1), (1, -9)]) == (1, -9)
    assert distributed.first_failure([(1, -15), (0, 2)]) == (0, 2)
    assert "killed by SIGKILL" in distributed.describe_status(-9)


def test_paddles_launcher_report_names_the_rank(tmp_path, capsys):
    # what paddle.distributed.launch writes to stderr when a worker fails; its logs are kept
    report = ("LAUNCH ERROR 2026-12-02 09:43:44,881 Container failed !!!\n"
              "Container rank 1 status failed cmd ['python', '-m', 'd2lgru'] code -9 log "
              f"{tmp_path}/workerlog.1\n")
    command = [sys.executable, "-c", f"import sys; sys.stderr.write({report!r}); sys.exit(1)",
               "--nproc_per_node=2", f"--log_dir={tmp_path}"]
    with pytest.raises(distributed.WorkerFailedError, match=r"rank 1 of 2 failed \(killed by "
                                                            r"SIGKILL\)"):
        distributed._run_launcher(command, 2, dict(os.environ))
    assert f"logs are in {tmp_path}" in capsys.readouterr().err
    assert tmp_path.exists()


def test_importing_the_module_imports_no_framework():
    code = ("import sys, d2lgru.distributed; "
            "print([m for m in ('torch', 'tensorflow', 'jax', 'paddle', 'mxnet', 'mindspore') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# -- the backend's declaration --------------------------------------------------------------
def test_refusal():
    """A backend without data-parallel training says why, in the library and on the command
    line; one with it has no refusal to give."""
    be = get_backend(BACKEND)
    if be.distributed_refusal is None:
        return  # declared: the tests below hold it to the definition
    from d2lgru.backends import UnsupportedError
    from d2lgru.model import init_lm
    with pytest.raises(UnsupportedError, match=f"cannot train on 2 processes: "
                                               f"{be.distributed_refusal[:30]}"):
        be.make_trainer(init_lm(10, 4, seed=0), world=World(0, 2, 0, "127.0.0.1:1"))
    code, _, err = run("train", "--nproc", "2", "--epochs", "1", timeout=120)
    assert code == 2 and be.distributed_refusal in err, err


def test_backends_lists_data_parallel_support():
    code, out, err = run("backends", "--json", timeout=300)
    assert code == 0, err
    row = {r["name"]: r for r in json.loads(out)}[BACKEND]
    why = get_backend(BACKEND).distributed_refusal
    assert row["distributed"] == {"supported": why is None, "why_not": why}


# -- two workers against one process --------------------------------------------------------
@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir):
    return train_run(tmp_path_factory.mktemp("w1") / "run")


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, data_dir):
    return train_run(tmp_path_factory.mktemp("w2") / "run", "--nproc", "2")


@needs_distributed
def test_two_workers_train_the_one_process_model(one_process, two_workers):
    rel, worst, close = compare(two_workers["ckpt"], one_process["ckpt"])
    print(f"\n{BACKEND}: W=2 vs W=1 over {2 * EPOCHS} steps: max relative loss difference "
          f"{rel:.2e}, max weight difference {worst:.2e}")
    assert rel <= TOLERANCES[("float32", "train_loss")].rtol, rel
    assert close, worst
    # what was trained: the same configuration, recorded without the world
    a, b = two_workers["ckpt"], one_process["ckpt"]
    assert a["config"] == b["config"] and a["epoch"] == b["epoch"] == EPOCHS
    assert [h["world_size"] for h in a["history"]] == [2] * EPOCHS


@needs_distributed
def test_rank_0_alone_writes_and_reports(two_workers):
    result = json.loads((two_workers["out"] / "result.json").read_text())
    assert result["world_size"] == 2
    # one worker printed the result and the predictions: once each
    assert two_workers["stdout"].count("perplexity ") == 1, two_workers["stdout"]
    assert two_workers["stdout"].count("checkpoint, result.json and plot in") == 1


@needs_distributed
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_parity_catches_a_broken_reduction(reduction, one_process, tmp_path):
    broken = train_run(tmp_path / "run", "--nproc", "2",
                       env={distributed.REDUCTION_VAR: reduction})
    rel, worst, _ = compare(broken["ckpt"], one_process["ckpt"])
    print(f"\n{BACKEND} with gradients reduced by {reduction!r}: max relative loss difference "
          f"{rel:.2e}, max weight difference {worst:.2e}")
    assert not parity_holds(broken["ckpt"], one_process["ckpt"])


@needs_distributed
def test_a_two_worker_checkpoint_resumes_on_one_process(two_workers, tmp_path):
    """Epochs 1-5 on two workers, then 6-7 on one process == 7 epochs on one process (B=32)
    up to float32 reduction order: the checkpoint records nothing about the world."""
    import shutil
    resumed = tmp_path / "resumed"
    shutil.copytree(two_workers["out"], resumed)
    code, _, err = run("train", "--resume", str(resumed), "--epochs", str(EPOCHS + 2), "--quiet")
    assert code == 0, err
    straight = train_run(tmp_path / "straight", epochs=EPOCHS + 2)
    after = load(resumed)
    assert after["epoch"] == EPOCHS + 2
    assert [h["world_size"] for h in after["history"]] == [2] * EPOCHS + [1, 1]
    assert parity_holds(after, straight["ckpt"]), compare(after, straight["ckpt"])
    # and on: a one-process checkpoint continues on two workers
    code, _, err = run("train", "--resume", str(resumed), "--epochs", str(EPOCHS + 3), "--quiet",
                       "--nproc", "2")
    assert code == 0, err
    assert load(resumed)["epoch"] == EPOCHS + 3


_descendants = distributed.descendants


def _training_into(out: Path) -> list[int]:
    """Every process on the machine whose command line names ``out``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(out).encode() in args:
                found.append(int(entry))
    return found


def _worker_rank(pid: int) -> int | None:
    """The rank of a worker process (from its environment: d2lgru's, torchrun's, Paddle's or
    msrun's variable)
    if it is one that trains (runs the d2lgru module)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes()
                   .split(b"\0") if b"=" in kv)
    except OSError:
        return None
    if b"d2lgru" not in cmd or b"torch.distributed.run" in cmd:
        return None
    rank = env.get(b"D2LGRU_RANK", env.get(b"RANK", env.get(b"PADDLE_TRAINER_ID")))
    if rank is None and env.get(b"MS_ROLE") == b"MS_WORKER":  # msrun's
        rank = env.get(b"RANK_ID")
    return int(rank) if rank is not None else None


def _epoch_saved(out: Path) -> bool:
    try:
        return load(out)["epoch"] >= 1
    except CheckpointError:
        return False


def _launch_until_an_epoch_is_saved(out, tmp_path) -> subprocess.Popen:
    """`d2lgru train --nproc 2` into ``out``, returned once its first epoch is saved (progress,
    not a guess at how long start-up takes)."""
    # TMPDIR: where a launcher that keeps its workers' logs after a failure (Paddle's) puts them.
    # SIGINT handled here while it starts: exec gives the child SIGINT's default, which Python
    # turns into KeyboardInterrupt (a shell starts background jobs with SIGINT ignored, and an
    # ignored signal stays ignored across exec; a preexec_fn would fork a process JAX runs in)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = d2lgru("train", "--nproc", "2", "--out", str(out), "--epochs", "100000", *ARGS,
                      env={"TMPDIR": str(tmp_path)})
    finally:
        signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + 300
    while not _epoch_saved(out):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no epoch saved in 300 s:\n{_end_launch(proc)[-3000:]}")
        time.sleep(0.05)
    return proc


def _end_launch(proc) -> str:
    """Kill what is left of a launch that has not ended (after a failed assertion); its
    stderr."""
    if proc.returncode is not None and proc.stderr.closed:
        return ""  # communicate() already ended it
    if proc.poll() is None:
        for p in _descendants(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()
    return proc.communicate()[1] or ""


@needs_distributed
def test_killing_a_worker_ends_the_launch_and_names_it(tmp_path):
    out = tmp_path / "run"
    proc = _launch_until_an_epoch_is_saved(out, tmp_path)
    try:
        victims = [p for p in _descendants(proc.pid) if _worker_rank(p) == 1]
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=KILL_BOUND_S)
        took = time.monotonic() - killed
    finally:
        _end_launch(proc)
    print(f"\n{BACKEND}: the launch ended {took:.1f} s after rank 1 was killed, status "
          f"{proc.returncode}")
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert "rank 1 of 2 failed (killed by SIGKILL)" in last, err[-3000:]
    assert load(out)["epoch"] >= 1  # the directory loads
    assert not [p for p in _descendants(os.getpid()) if _worker_rank(p) is not None]


@needs_distributed
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupting_the_launch_says_what_the_checkpoint_keeps(tmp_path, signum):
    """SIGINT or SIGTERM to the `--nproc` process alone (as `timeout -s INT` and `timeout`
    send them): the workers are stopped, and its one line says which epoch the checkpoint keeps
    and how to resume."""
    out = tmp_path / "run"
    proc = _launch_until_an_epoch_is_saved(out, tmp_path)
    try:
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=KILL_BOUND_S)
    finally:
        _end_launch(proc)
    assert proc.returncode == 128 + signum, err[-3000:]
    last = err.strip().splitlines()[-1]
    epoch = load(out)["epoch"]
    assert last == (f"d2lgru train: interrupted; the checkpoint in {out} keeps epoch {epoch}; "
                    f"continue with --resume {out}"), err[-3000:]
    assert not [p for p in _descendants(os.getpid()) if _worker_rank(p) is not None]
    # nor anywhere else: a worker in a session of its own outlives its launcher (Paddle's rank 0
    # did, blocked in a collective, and kept the run's lock)
    assert _training_into(out) == []


def test_a_resumed_runs_own_batch_size_must_divide(tmp_path, data_dir):
    """--nproc with --resume checks the checkpoint's batch size, before any worker starts."""
    from d2lgru.checkpoint import write_checkpoint
    from d2lgru.config import TrainConfig
    from d2lgru.data import load_data_time_machine
    from d2lgru.model import init_lm
    _, vocab = load_data_time_machine(6, 5, max_tokens=400, path=data_dir)
    write_checkpoint(tmp_path / "run", init_lm(len(vocab), 4, seed=0), vocab,
                     TrainConfig(hidden_size=4, batch_size=6, num_steps=5, max_tokens=400))
    code, _, err = run("train", "--nproc", "4", "--resume", str(tmp_path / "run"),
                       "--epochs", "1", timeout=120)
    assert code == 2 and "--batch-size 6 does not split across 4 workers" in err, err
    assert "1, 2, 3, 6 workers" in err
