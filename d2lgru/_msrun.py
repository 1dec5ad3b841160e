"""MindSpore's launcher, msrun, run in the foreground for ``d2lgru train --nproc W`` (issue #19).

msrun (``mindspore.parallel.cluster.run``) starts MindSpore's scheduler and the ``W`` workers
with the ``python`` found on ``PATH`` (so this interpreter's directory goes first), writes each
one's output to ``LOG_DIR/worker_<rank>.log``, and when a worker exits non-zero it logs
``Worker process <pid> exit with exception. Error code: <status>.``, kills the other workers and
then waits for the scheduler, which notices the lost workers only after its heartbeat timeout
(about 30 s). This module streams rank 0's log to stdout and the others' to stderr, learns each
worker's pid from its environment (msrun names none), and on that line stops msrun at once
(SIGINT: msrun's own handler kills every worker and the scheduler) and names the rank. No
framework is imported here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .distributed import WorkerFailedError, children

_FAILED = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")
#: MindSpore's C++ log lines below ERROR, which its runtime prints at exit whatever GLOG_v says
_CHATTER = re.compile(rb"^\[(DEBUG|INFO|WARNING)\] [A-Z_]+\(\d+,")
#: how long msrun gets to stop its processes after SIGINT before they are killed
GRACE_S = 10.0


def _log_dir(command: list[str]) -> Path:
    for arg in command:
        if arg.startswith("--log_dir="):
            return Path(arg.split("=", 1)[1])
    raise ValueError("the msrun command names no --log_dir")


def _role_and_rank(pid: int) -> tuple[str | None, int | None]:
    try:
        env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes()
                   .split(b"\0") if b"=" in kv)
    except OSError:
        return None, None
    role = env.get(b"MS_ROLE", b"").decode() or None
    rank = env.get(b"RANK_ID")
    return role, int(rank) if rank is not None and rank.isdigit() else None


class _Watcher(threading.Thread):
    """Learns msrun's children (worker pid -> rank) and copies the workers' logs as they grow."""

    def __init__(self, msrun: subprocess.Popen, nproc: int, log_dir: Path):
        super().__init__(daemon=True)
        self.msrun, self.nproc, self.log_dir = msrun, nproc, log_dir
        self.ranks: dict[int, int] = {}  # worker pid -> rank
        self.pids: set[int] = set()      # every child of msrun seen (scheduler, workers)
        self.offsets = [0] * nproc
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            self.scan()
            self.copy()
            self.done.wait(0.05)

    def scan(self):
        if len(self.ranks) == self.nproc:
            return
        for pid in children(self.msrun.pid):
            if pid not in self.pids:
                role, rank = _role_and_rank(pid)
                if role is None:
                    continue  # not yet exec'd with its environment
                self.pids.add(pid)
                if role == "MS_WORKER" and rank is not None:
                    self.ranks[pid] = rank

    def copy(self):
        for rank in range(self.nproc):
            try:
                with open(self.log_dir / f"worker_{rank}.log", "rb") as f:
                    f.seek(self.offsets[rank])
                    data = f.read()
            except OSError:
                continue
            cut = data.rfind(b"\n") + 1  # whole lines only, until the end
            if self.done.is_set():
                cut = len(data)
            if cut:
                stream = sys.stdout if rank == 0 else sys.stderr
                lines = data[:cut].splitlines(keepends=True)
                stream.write(b"".join(l for l in lines if not _CHATTER.match(l))
                             .decode(errors="replace"))
                stream.flush()
                self.offsets[rank] += cut

    def finish(self):
        self.done.set()
        self.join()
        self.copy()


def run(command: list[str], nproc: int, env: dict) -> int:
    """Run msrun's ``command`` (``distributed._msrun``'s) for ``nproc`` workers; 0 when all
    succeeded, else :class:`WorkerFailedError` naming the first worker msrun saw fail."""
    log_dir = _log_dir(command)
    env = dict(env)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.setdefault("GLOG_v", "3")  # MindSpore's C++ and msrun's Python log: errors only
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    watcher = _Watcher(proc, nproc, log_dir)
    watcher.start()
    failed = None
    try:
        for line in proc.stdout:
            m = _FAILED.search(line)
            if m and failed is None:
                failed = int(m.group(1)), int(m.group(2))
                _stop(proc, watcher)  # msrun would wait ~30 s for its scheduler's timeout
                break
            if not line.startswith("Start "):  # msrun's "Start worker process ..." chatter
                sys.stderr.write(line)
        code = proc.wait()
    except BaseException:
        _stop(proc, watcher)
        raise
    finally:
        watcher.finish()
        shutil.rmtree(log_dir, ignore_errors=True)
    if failed is not None:
        pid, status = failed
        raise WorkerFailedError(watcher.ranks.get(pid, -1), nproc, status)
    return code


def _stop(proc: subprocess.Popen, watcher: _Watcher) -> None:
    """msrun's own way to end a job (SIGINT: it kills the workers and the scheduler), then
    SIGKILL for whatever is left of what it started."""
    watcher.scan()
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in watcher.pids:
        if _role_and_rank(pid)[0] is None:
            continue  # gone (msrun stopped it), or its pid is no longer one of msrun's
        try:
            os.killpg(pid, signal.SIGKILL)  # a worker leads its own group (msrun's setsid)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
