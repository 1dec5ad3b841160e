"""How many threads a training uses, and how its idle threads wait.

Imports no framework and reads nothing at import; every function looks at the machine when it
is called.

**The count** (:func:`resolve_threads`): an explicit argument (``Backend.set_threads(n)``,
``d2lgru train --threads N``), else ``$D2LGRU_THREADS``, else the policy:

    n = max(1, min(preference, $OMP_NUM_THREADS, usable CPUs, usable CPUs - busy CPUs))

* *usable CPUs*: this process's CPU affinity (``os.sched_getaffinity``), capped by a cgroup CPU
  quota (``cpu.max`` / ``cpu.cfs_quota_us``, read at call time);
* *busy CPUs*: what other processes hold right now -- on Linux the fewest runnable threads in
  five reads of ``/proc/loadavg`` 10 ms apart, less this process's own runnable threads (a
  training elsewhere runs in every read, a passing burst does not; the 1-minute load average
  would still count a process that ended a minute ago: back-to-back runs got one thread where
  two were free), elsewhere the 1-minute load average, rounded;
* ``$OMP_NUM_THREADS``, where set, as a cap: the user's standing choice for OpenMP runtimes;
* *preference*: the backend's measured choice at the book's shapes (batch 32, hidden 256:
  ``[32,256] @ [256,768]`` GEMMs, where a second thread gains little; see each adapter's
  ``_thread_preference``): MXNet one per two CPUs (its own default, measured in its adapter),
  MindSpore ``min(4, CPUs - 1)``, NumPy, torch, Paddle, TensorFlow and JAX every usable CPU.

**Following the load** (``Backend.retune_threads``): where the framework takes a new count
between steps (``retunes_threads``: NumPy, whose OpenBLAS workers spin while they wait and
cannot be told otherwise once numpy has loaded, torch and Paddle, whose second thread pays at
the book's shapes only while it spins), a count that is the policy's is computed again about once
a second while a trainer runs (two reads of the load, 2 ms apart): a job that started since
gets its CPU at the next look, and a CPU that came free is taken back after three looks in a
row found it free. A second training that starts later therefore costs the first at most
about a second of spinning workers.

**Waiting** (:func:`wait_passively`): the first look cannot see a training that starts later,
so a count above 1 is only safe where idle workers sleep instead of spinning, or where the
count follows the load. Measured on the
2-core reference machine, busy with other jobs (5 epochs each, issue #20): NumPy scratch 1.6k
tokens/s with its default two OpenBLAS threads vs 19k with one; torch native 0.4k vs 15k. Every
OpenMP runtime the frameworks ship honours ``OMP_WAIT_POLICY=PASSIVE`` (GNU libgomp reads it
when it loads: spin count 0; Intel/LLVM libomp reads it at its first parallel region: block
time 0), so the adapters whose framework runs on OpenMP and does not follow the load (MXNet,
MindSpore: ``waits_passively``) set it with ``os.environ.setdefault`` right before
they import their framework, and take it back once the framework's runtime has read it (it
would put other runtimes loaded later, and child processes, to sleep too): a user's own value
is kept, and a framework imported before d2lgru's adapter keeps whatever it read then.
OpenBLAS's pool has no such switch after load, hence NumPy's count following the load;
TensorFlow's (Eigen's) spins only briefly before it sleeps.

``benchmarks/contention.py`` measures both halves: one training alone against two started
together. Its run on the quiet 2-core reference machine (2026-12-02, default impls: scratch;
medians of two alternated rounds, tokens/s; solo, then each of two at once):

* NumPy: the policy (2 threads, following the load) 57k solo, 38k + 39k together (0.67 /
  0.68); 2 threads not following it, OpenBLAS spinning: 53k solo, 14k + 14k together (0.26).
* torch: the policy (2 threads, following the load) 43k solo, 29k + 30k together (0.67 /
  0.69); the old default (2 threads, GNU OpenMP spinning, not following the load) 37k solo,
  6k + 6k together (0.16); in another run 2 threads with passive waiting 37k solo, 8k
  together (0.22).
* Paddle: the policy (2 threads, following the load) 41k solo, 30k + 32k together (0.74 /
  0.79); the old default (2 threads, Intel OpenMP's 200 ms block time) 38k solo, 16k + 18k.
* TensorFlow: no collapse with 2 threads either way (Eigen), see the adapter.

Solo rates on this machine move 10-20% from run to run (the two torch rounds: 35k and 40k).
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable, Mapping

from .errors import InvalidArgumentError

ENV_VAR = "D2LGRU_THREADS"

#: what every OpenMP runtime (GNU libgomp, Intel libiomp5, LLVM libomp) reads as "sleep, don't
#: spin, when idle"; set with setdefault by the adapters whose framework runs on OpenMP
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}


def wait_passively(extra: Mapping[str, str] | None = None) -> dict:
    """Set :data:`PASSIVE_WAIT` (and ``extra``) in ``os.environ`` where the user has not set
    them; call it before the framework's first import, and :func:`take_back` after it.
    Returns what it set."""
    wanted = {**PASSIVE_WAIT, **(extra or {})}
    added = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(added)
    return added


def take_back(added: Mapping[str, str], keep=()) -> None:
    """Take back what :func:`wait_passively` added (``added``, its return), but the names in
    ``keep`` and any value changed since, once the framework has loaded and read it (GNU libgomp
    reads its wait policy when it loads). Left set, :data:`PASSIVE_WAIT` would also put to sleep
    the idle workers of runtimes loaded later -- Intel's OpenMP under Paddle reads it at its
    first parallel region -- and of every child process, such as a torch training started from
    here, whose second thread pays only while it spins (see the module's notes)."""
    for name, value in added.items():
        if name not in keep and os.environ.get(name) == value:
            del os.environ[name]


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_quota() -> int | None:
    """``ceil(quota / period)`` of this process's cgroup (v2, else v1), or None when unlimited."""
    for path, split in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", None)):
        try:
            with open(path) as f:
                text = f.read().strip()
            if split:
                quota, period = split(text)
            else:
                with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
                    quota, period = text, f.read().strip()
            if quota in ("max", "-1"):
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            continue
    return None


#: reads of /proc/loadavg for busy_cpus, and the pause between them
BUSY_READS, BUSY_INTERVAL_S = 5, 0.01


def _own_runnable() -> int:
    """This process's threads that are running or runnable now (state ``R`` in
    ``/proc/self/task/*/stat``): the reader, and any worker of ours still spinning."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                # the state follows the command name, which is in parentheses
                count += f.read().rpartition(")")[2].split()[0] == "R"
        except (OSError, IndexError):
            continue  # a thread that ended between the listing and the read
    return max(1, count)


def busy_cpus(reads: int = BUSY_READS, interval_s: float = BUSY_INTERVAL_S) -> int:
    """CPUs other processes keep busy now: the fewest runnable threads system-wide over
    ``reads`` reads of ``/proc/loadavg`` (its fourth field, ``running/total``) taken
    ``interval_s`` apart, less this process's own runnable threads at each read (the more
    of two counts, before and after it: a worker may start or stop spinning in between; a
    training's spinning workers are not someone else's load); where ``/proc`` is missing,
    the 1-minute load average rounded half up."""
    try:
        counts = []
        for i in range(reads):
            if i:
                time.sleep(interval_s)
            before = _own_runnable()
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            counts.append(running - max(before, _own_runnable()))
        return max(0, min(counts))
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (AttributeError, OSError):
        return 0


def policy_threads(preference: int | None = None, *, reads: int = BUSY_READS,
                   interval_s: float = BUSY_INTERVAL_S) -> int:
    """The policy's count (see the module docstring): between 1 and the usable CPUs."""
    cpus = usable_cpus()
    wanted = cpus if preference is None else preference
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:  # not ours to validate: the OpenMP runtimes read it
        wanted = min(wanted, int(omp))
    return max(1, min(wanted, cpus, cpus - busy_cpus(reads, interval_s)))


def parse_threads(value, source: str) -> int:
    """A thread count from ``source`` (an argument or a variable): a positive integer, else one
    ``InvalidArgumentError`` that echoes the value and says what is valid."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise InvalidArgumentError(f"invalid thread count {value!r} (from {source}); valid: a "
                                   f"positive integer such as 1, or unset for the policy "
                                   f"(this process may use {usable_cpus()} CPU(s))")
    return int(text)


def resolve_threads(requested: int | None = None, *,
                    preference: Callable[[int], int] | int | None = None,
                    reads: int = BUSY_READS, interval_s: float = BUSY_INTERVAL_S
                    ) -> tuple[int, str]:
    """``(count, source)``: ``requested``, else ``$D2LGRU_THREADS``, else
    :func:`policy_threads` with the backend's ``preference`` (an int, or a function of the
    usable CPUs) and its ``reads`` of the load. ``source`` says which: ``argument``,
    ``$D2LGRU_THREADS`` or ``policy``."""
    if requested is not None:
        return parse_threads(requested, "argument"), "argument"
    env = os.environ.get(ENV_VAR, "")
    if env.strip():
        return parse_threads(env, f"${ENV_VAR}"), f"${ENV_VAR}"
    if callable(preference):
        preference = preference(usable_cpus())
    return policy_threads(preference, reads=reads, interval_s=interval_s), "policy"


def limit_blas(n: int) -> None:
    """Every BLAS library loaded in this process (NumPy's OpenBLAS, a framework's own) to ``n``
    threads, through threadpoolctl's calls into each library, not variables read at load."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")


def blas_threads() -> dict:
    """``{library file name: threads}`` for every BLAS library loaded, as the libraries say."""
    from threadpoolctl import threadpool_info

    return {os.path.basename(i["filepath"]): i["num_threads"] for i in threadpool_info()
            if i["user_api"] == "blas"}


__all__ = ["ENV_VAR", "PASSIVE_WAIT", "blas_threads", "busy_cpus", "limit_blas", "parse_threads",
           "policy_threads", "resolve_threads", "take_back", "usable_cpus",
           "wait_passively"]
