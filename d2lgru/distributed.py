"""Data-parallel training: who this process is in a world of workers, which rows it trains, and
the local launcher (issue #19).

One definition for every backend: a global batch of ``B`` rows from the seeded iterator is split
by rows across ``W`` workers -- rank ``r`` takes rows ``r*B/W .. (r+1)*B/W - 1`` of every batch,
so the sequential iterator's carried state stays with its rows -- the loss is the mean over the
global batch, the gradients are averaged by the framework's own all-reduce before the global-norm
clip, and every rank applies the same SGD step. ``W`` workers and one process with the same ``B``
then train the same model up to float32 reduction order.

The all-reduce belongs to each framework's engine (the adapter's ``Backend._init_world`` and
``Trainer._all_reduce`` / ``_all_reduce_host``); this module imports no framework. Its
:func:`launch` starts the framework's own launcher where it has one (``torchrun``), and otherwise
starts the ``W`` workers itself, watches them, and stops them all when one fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping

from .errors import D2lgruError, InvalidArgumentError

#: d2lgru's own variables for a worker's place in the world (set by :func:`launch`'s spawner;
#: also usable by hand on several machines)
RANK_VAR, SIZE_VAR, COORDINATOR_VAR = "D2LGRU_RANK", "D2LGRU_WORLD_SIZE", "D2LGRU_COORDINATOR"
LOCAL_RANK_VAR = "D2LGRU_LOCAL_RANK"

#: a private knob for the conformance tests' negative cases: how the gradients are reduced
#: across workers, ``mean`` (the definition), ``sum`` or ``none`` (no all-reduce at all). Anything
#: but ``mean`` trains a different model, which is what those tests show.
REDUCTION_VAR = "D2LGRU_DIST_REDUCTION"
REDUCTIONS = ("mean", "sum", "none")

#: how long the spawner gives the other workers to stop (SIGTERM) before it kills them
STOP_GRACE_S = 5.0


class WorldBrokenError(D2lgruError, RuntimeError):
    """A collective failed: another worker has gone (killed, crashed, or its machine lost)."""


class WorkerFailedError(D2lgruError, RuntimeError):
    """A worker of a local multi-process run exited with a non-zero status."""

    def __init__(self, rank: int, size: int, status: int):
        self.rank, self.size, self.status = rank, size, status
        super().__init__(f"worker rank {rank} of {size} failed ({describe_status(status)}); the "
                         f"other worker(s) were stopped")


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the workers: ``rank`` in ``0 .. size-1``, its ``local_rank``
    on its machine, and the ``coordinator`` (``host:port``) the framework's engine meets at."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    coordinator: str | None = None

    def __post_init__(self):
        if type(self.size) is not int or self.size < 1:
            raise InvalidArgumentError(f"the world size must be a positive integer, got "
                                       f"{self.size!r}")
        if type(self.rank) is not int or not 0 <= self.rank < self.size:
            raise InvalidArgumentError(f"the rank must be an integer in [0, {self.size}), got "
                                       f"{self.rank!r}")

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_chief(self) -> bool:
        """Rank 0: the one process that writes the run directory and prints."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "World":
        """The world the launcher described in the environment, in this order: d2lgru's own
        ``D2LGRU_RANK``/``D2LGRU_WORLD_SIZE``/``D2LGRU_COORDINATOR``; torchrun's ``RANK``,
        ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``; Paddle's launcher's
        ``PADDLE_TRAINER_ID``/``PADDLE_TRAINERS_NUM`` (``PADDLE_MASTER`` or the first of
        ``PADDLE_TRAINER_ENDPOINTS``); TensorFlow's ``TF_CONFIG`` (``task.index`` among
        ``cluster.worker``); msrun's (MindSpore) ``RANK_ID`` and ``MS_WORKER_NUM`` in a process
        whose ``MS_ROLE`` is ``MS_WORKER``. None of them: one process."""
        env = os.environ if environ is None else environ
        if env.get(SIZE_VAR):
            return cls(_int(env, RANK_VAR, "0"), _int(env, SIZE_VAR),
                       _int(env, LOCAL_RANK_VAR, env.get("LOCAL_RANK", "0")),
                       env.get(COORDINATOR_VAR) or None)
        if env.get("WORLD_SIZE") and env.get("RANK"):
            coordinator = (f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
                           if env.get("MASTER_ADDR") and env.get("MASTER_PORT") else None)
            return cls(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK", "0"),
                       coordinator)
        if env.get("PADDLE_TRAINERS_NUM") and env.get("PADDLE_TRAINER_ID"):
            endpoints = [e for e in env.get("PADDLE_TRAINER_ENDPOINTS", "").split(",") if e]
            return cls(_int(env, "PADDLE_TRAINER_ID"), _int(env, "PADDLE_TRAINERS_NUM"),
                       _int(env, "PADDLE_LOCAL_RANK", env.get("LOCAL_RANK", "0")),
                       env.get("PADDLE_MASTER") or (endpoints[0] if endpoints else None))
        if env.get("TF_CONFIG"):
            return _world_from_tf_config(env["TF_CONFIG"])
        if env.get("MS_ROLE") == "MS_WORKER" and env.get("MS_WORKER_NUM"):
            coordinator = (f"{env['MS_SCHED_HOST']}:{env['MS_SCHED_PORT']}"
                           if env.get("MS_SCHED_HOST") and env.get("MS_SCHED_PORT") else None)
            return cls(_int(env, "RANK_ID"), _int(env, "MS_WORKER_NUM"),
                       _int(env, "DEVICE_ID", "0"), coordinator)
        return cls()


def serves_only(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a launcher started this process to coordinate the workers, not to train: msrun
    runs the workers' command line as MindSpore's scheduler too (``MS_ROLE=MS_SCHED``)."""
    env = os.environ if environ is None else environ
    return env.get("MS_ROLE") == "MS_SCHED"


def _int(env, name, default=None) -> int:
    text = env.get(name, default)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"${name} must be an integer, got {text!r}") from None


def _world_from_tf_config(text: str) -> World:
    try:
        config = json.loads(text)
        workers = list(config["cluster"]["worker"])
        task = config["task"]
        if task.get("type", "worker") != "worker":
            raise ValueError(f"task type {task.get('type')!r}: only 'worker' tasks train")
        rank = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"$TF_CONFIG must name cluster.worker (a list of host:port) "
                                   f"and this task's index among them: {exc}") from None
    return World(rank, len(workers), 0, workers[0] if workers else None)


def already_joined(engine: str, joined: tuple[int, int] | None, world: World) -> bool:
    """Whether this process already belongs to ``world`` in ``engine``'s process group
    (``joined``: its ``(rank, size)`` there, None when it joined none); a different place is
    an error, since a process group cannot be left and joined again."""
    if joined is None:
        return False
    if tuple(joined) != (world.rank, world.size):
        from .backends._base import UnsupportedError
        raise UnsupportedError(f"this process already joined {engine} as rank {joined[0]} of "
                               f"{joined[1]}, not {world.rank} of {world.size}")
    return True


def check_batch_size(batch_size: int, world: World) -> None:
    """``batch_size`` must split into ``world.size`` equal shards: else one sentence naming both
    and the world sizes that would work."""
    if batch_size % world.size:
        valid = [w for w in range(1, batch_size + 1) if batch_size % w == 0]
        raise InvalidArgumentError(
            f"--batch-size {batch_size} does not split across {world.size} workers (each takes "
            f"batch_size / workers rows of every batch); with batch size {batch_size} use "
            f"{', '.join(map(str, valid))} workers, or change --batch-size")


def shard(batches: Iterable, world: World) -> list:
    """Rank ``world.rank``'s rows of every batch ``(X, Y)``: rows ``r*B/W .. (r+1)*B/W - 1``."""
    out = []
    for X, Y in batches:
        check_batch_size(X.shape[0], world)
        rows = X.shape[0] // world.size
        lo = world.rank * rows
        out.append((X[lo:lo + rows], Y[lo:lo + rows]))
    return out


def reduction() -> str:
    """How gradients are reduced across workers: ``$D2LGRU_DIST_REDUCTION``, else ``mean``."""
    value = os.environ.get(REDUCTION_VAR, "").strip() or "mean"
    if value not in REDUCTIONS:
        raise InvalidArgumentError(f"${REDUCTION_VAR} is {value!r}; valid: {', '.join(REDUCTIONS)}")
    return value


# -- the local launcher ------------------------------------------------------------------------
#: backends whose framework has its own launcher, and how to call it for W local workers
#: (the rest -- TensorFlow, JAX, ... -- are started by d2lgru's spawner below); each launcher
#: names its backend where it is defined
LAUNCHERS: dict = {}


#: how a backend's launcher command is run, where not by :func:`_run_launcher`
RUNNERS: dict = {}


def _launcher(backend: str, runner=None):
    def register(fn):
        LAUNCHERS[backend] = fn
        if runner is not None:
            RUNNERS[backend] = runner
        return fn
    return register


def _run_msrun(command: list[str], nproc: int, env: dict) -> int:
    from . import _msrun  # msrun reports a failed worker by its pid only, see there
    return _msrun.run(command, nproc, env)


@_launcher("torch")
def _torchrun(nproc: int, argv: list[str]) -> list[str]:
    # --standalone: a rendezvous on localhost at a free port (no port to pick, none to collide)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "d2lgru", *argv]


@_launcher("paddle")
def _paddle_launch(nproc: int, argv: list[str]) -> list[str]:
    # the workers' logs (Paddle's default: ./log) go to a fresh temporary directory, removed
    # when the launch succeeds and named when it fails; a script not ending in .py is run as
    # given, so the workers run this interpreter on -m d2lgru
    logs = tempfile.mkdtemp(prefix="d2lgru-paddle-launch-")
    return [sys.executable, "-W", "ignore::UserWarning", "-m", "paddle.distributed.launch",
            f"--nproc_per_node={nproc}", "--max_restart=0", f"--log_dir={logs}",
            "--log_level=WARNING", sys.executable, "-m", "d2lgru", *argv]


@_launcher("mindspore", runner=_run_msrun)
def _msrun(nproc: int, argv: list[str]) -> list[str]:
    # its scheduler meets the workers at a free port; its logs (each worker's output) go to a
    # directory of their own, which d2lgru._msrun.run streams and removes
    log_dir = tempfile.mkdtemp(prefix="d2lgru-msrun-")
    return [sys.executable, "-m", "mindspore.parallel.cluster.run", f"--worker_num={nproc}",
            f"--local_worker_num={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_ports(1)[0]}", f"--log_dir={log_dir}", "--join=True",
            f"--tail_worker_log={nproc}", "--cluster_time_out=120", "python", "-m", "d2lgru",
            *argv]


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports on localhost that were free a moment ago (held together while chosen, so
    they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_env(backend: str, world: World, ports: list[int]) -> dict:
    """The variables that tell one spawned worker its place: d2lgru's own, plus ``TF_CONFIG``
    for TensorFlow (its MultiWorkerMirroredStrategy reads nothing else)."""
    env = {RANK_VAR: str(world.rank), SIZE_VAR: str(world.size),
           LOCAL_RANK_VAR: str(world.local_rank), COORDINATOR_VAR: world.coordinator or ""}
    if backend == "tensorflow":
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": world.rank}})
    if backend == "mxnet":  # its KVStore dist_sync: ps-lite's scheduler at the coordinator
        env.update(DMLC_ROLE="worker", DMLC_PS_ROOT_URI="127.0.0.1",
                   DMLC_PS_ROOT_PORT=str(ports[0]), DMLC_NUM_SERVER="1",
                   DMLC_NUM_WORKER=str(world.size))
    return env


def services(backend: str, nproc: int, ports: list[int]) -> list[tuple[list[str], dict]]:
    """The processes a backend's engine needs beside the workers, as ``(command, environment
    additions)``: MXNet's KVStore scheduler and one server (``import mxnet`` with their
    ``DMLC_ROLE`` runs them until the workers finish)."""
    if backend != "mxnet":
        return []
    env = worker_env(backend, World(0, nproc), ports)
    return [([sys.executable, "-c", "import mxnet"], {**env, "DMLC_ROLE": role})
            for role in ("scheduler", "server")]


def describe_status(status: int) -> str:
    """A process's exit status as words: ``exit status 2``, ``killed by SIGKILL``."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def launch(backend: str, nproc: int, argv: list[str], *, env: Mapping[str, str] | None = None,
           poll_s: float = 0.1) -> int:
    """Run ``python -m d2lgru ARGV`` as ``nproc`` workers on this machine and return the exit
    status (0 when every worker succeeded). ``backend`` is a canonical backend name: one in
    :data:`LAUNCHERS` goes through its framework's launcher (run by its :data:`RUNNERS` entry,
    else :func:`_run_launcher`), the others through :func:`spawn`. Unless the caller chose a thread count,
    each worker runs one thread (``D2LGRU_THREADS=1``): W workers share the machine's cores."""
    env = dict(os.environ if env is None else env)
    env.setdefault("D2LGRU_THREADS", "1")
    if backend in LAUNCHERS:
        return RUNNERS.get(backend, _run_launcher)(LAUNCHERS[backend](nproc, argv), nproc, env)
    return spawn(backend, nproc, argv, env=env, poll_s=poll_s)


_REPORT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_REPORT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")
#: paddle.distributed.launch's report of the failed worker it saw first
_PADDLE_REPORT = re.compile(r"^Container rank (\d+) status failed .* code (-?\d+) log ")


def _run_launcher(command: list[str], nproc: int, env: dict) -> int:
    """A framework launcher for ``nproc`` workers in the foreground; its stderr passes through,
    and when it fails,
    :class:`WorkerFailedError` says which rank failed and how (read from the launcher's own
    failure report)."""
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
    failures, rank = [], None  # (rank, exit code) in the report's order
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            m = _REPORT_RANK.match(line)
            if m:
                rank = int(m.group(1))
            m = _REPORT_EXIT.match(line)
            if m and rank is not None:
                failures.append((rank, int(m.group(1))))
                rank = None
            m = _PADDLE_REPORT.match(line)
            if m:
                failures.append((int(m.group(1)), int(m.group(2))))
        code = proc.wait()
    except BaseException:
        _stop_launch(proc)
        raise
    logs = _option(command, "--log_dir")
    if logs and code == 0:
        shutil.rmtree(logs, ignore_errors=True)
    elif logs:
        print(f"d2lgru: the workers' logs are in {logs}", file=sys.stderr)
    if code and failures:
        rank, status = first_failure(failures)
        raise WorkerFailedError(rank, nproc, status)
    return code


def first_failure(failures: list[tuple[int, int]]) -> tuple[int, int]:
    """The worker that failed first among ``(rank, status)``: one killed by a signal other
    than the launcher's own SIGTERM is the cause (the others fail because it is gone), else
    the launcher's root cause (the last listed) -- a surviving worker whose collective broke may
    be reported before the one that died."""
    for rank, status in failures:
        if status < 0 and -status not in (signal.SIGTERM, signal.SIGINT):
            return rank, status
    return failures[-1]


def _option(command: list[str], name: str) -> str | None:
    for arg in command:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def spawn(backend: str, nproc: int, argv: list[str], *, env: Mapping[str, str],
          poll_s: float = 0.1) -> int:
    """Start ``nproc`` workers of ``python -m d2lgru ARGV`` with their place in the world in
    their environment; wait for all. When one exits non-zero the others are stopped (SIGTERM,
    SIGKILL after :data:`STOP_GRACE_S`) and :class:`WorkerFailedError` names it."""
    ports = free_ports(nproc)
    coordinator = f"127.0.0.1:{ports[0]}"
    procs, helpers = [], []
    try:
        for command, extra in services(backend, nproc, ports):
            helpers.append(subprocess.Popen(command, env={**env, **extra}))
        for rank in range(nproc):
            world = World(rank, nproc, rank, coordinator)
            procs.append(subprocess.Popen([sys.executable, "-m", "d2lgru", *argv],
                                          env={**env, **worker_env(backend, world, ports)}))
        while True:
            codes = [p.poll() for p in procs]
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                _stop(procs + helpers)
                raise WorkerFailedError(rank, nproc, code)
            if all(c == 0 for c in codes):
                _stop(helpers)  # they end by themselves once the workers have
                return 0
            time.sleep(poll_s)
    except BaseException:
        _stop(procs + helpers)
        raise


def _stop_launch(launcher: subprocess.Popen) -> None:
    """Stop a framework launcher and every process it started. Its own SIGTERM handling stops
    the workers, but a worker waiting in a collective for a peer that is gone may never end:
    Paddle's blocks SIGTERM in the waiting thread, its launcher waits for it, and once the
    launcher is killed the worker, in a session of its own, trains on (holding the run's lock).
    So whatever the launcher started and is still there after it is killed."""
    started = descendants(launcher.pid)
    _stop([launcher])
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def children(pid: int) -> list[int]:
    """The processes that any thread of ``pid`` started (Linux's
    ``/proc/PID/task/TID/children``; none elsewhere, or once ``pid`` is gone)."""
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        return []


def descendants(pid: int) -> list[int]:
    """The processes that ``pid`` and its descendants started (see :func:`children`)."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def _stop(procs) -> None:
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in live:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
