"""The thread policy (d2lgru/threads.py) and NumPy's side of it: where a count comes from, what
is refused, and that NumPy's BLAS really runs the count in force. Timing is never checked here;
benchmarks/contention.py measures it."""

import os

import pytest
import threadpoolctl

import d2lgru
from d2lgru import threads
from d2lgru.errors import InvalidArgumentError


@pytest.fixture
def clean_env(monkeypatch):
    for name in (threads.ENV_VAR, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _numpy_blas_threads():
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def test_selection_order(clean_env):
    assert threads.resolve_threads(3) == (3, "argument")
    clean_env.setenv(threads.ENV_VAR, "2")
    assert threads.resolve_threads() == (2, "$D2LGRU_THREADS")
    assert threads.resolve_threads(1) == (1, "argument")  # the argument wins
    clean_env.delenv(threads.ENV_VAR)
    n, source = threads.resolve_threads(preference=64)
    assert source == "policy" and 1 <= n <= threads.usable_cpus()


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", " "])
def test_invalid_variable_is_one_error_that_echoes_it(clean_env, value):
    clean_env.setenv(threads.ENV_VAR, value)
    if not value.strip():  # empty means unset
        assert threads.resolve_threads()[1] == "policy"
        return
    with pytest.raises(InvalidArgumentError) as err:
        threads.resolve_threads()
    assert f"invalid thread count {value!r} (from $D2LGRU_THREADS)" in str(err.value)
    assert "valid: a positive integer" in str(err.value)


@pytest.mark.parametrize("value", [0, -1, "two", True])
def test_invalid_argument(value):
    with pytest.raises(InvalidArgumentError, match=r"\(from argument\)"):
        threads.resolve_threads(value)


def test_policy_stays_between_one_and_the_usable_cpus(clean_env):
    cpus = threads.usable_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1)
    for preference in (None, 1, cpus, 10 * cpus):
        assert 1 <= threads.policy_threads(preference) <= cpus
    assert threads.policy_threads(1) == 1
    clean_env.setenv("OMP_NUM_THREADS", "1")  # the user's OpenMP choice caps the policy
    assert threads.policy_threads(cpus) == 1


def test_the_policy_gives_way_to_busy_cpus(clean_env):
    clean_env.setattr(threads, "usable_cpus", lambda: 8)
    clean_env.setattr(threads, "busy_cpus", lambda reads=5, interval_s=0.01: 0)
    assert threads.policy_threads() == 8
    clean_env.setattr(threads, "busy_cpus", lambda reads=5, interval_s=0.01: 6)
    assert threads.policy_threads() == 2
    clean_env.setattr(threads, "busy_cpus", lambda reads=5, interval_s=0.01: 12)
    assert threads.policy_threads() == 1


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="reads Linux's /proc/loadavg")
def test_busy_cpus_sees_processes_running_now():
    """Two processes that keep a CPU busy are seen in every read (the 1-minute load average
    would take a minute to show them, and as long to forget them)."""
    import subprocess
    import sys
    spin = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('go\\n'); "
                              "sys.stdout.flush()\nwhile True: pass"], stdout=subprocess.PIPE)
            for _ in range(2)]
    try:
        for p in spin:
            assert p.stdout.readline() == b"go\n"
        assert threads.busy_cpus() >= 2
    finally:
        for p in spin:
            p.kill()
            p.wait()


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads Linux's /proc")
def test_this_processs_own_busy_threads_are_not_someone_elses_load():
    """A training's own workers (here a thread in a long NumPy loop, which releases the GIL)
    are runnable in /proc/loadavg too; busy_cpus takes them off, so that a training looking at
    the load while it runs does not give way to itself."""
    import threading
    import time
    import numpy as np
    stop = threading.Event()

    def work():
        a = np.ones((300, 300))
        while not stop.is_set():
            a = np.sin(a)  # element-wise: no BLAS threads of its own, the GIL released
    worker = threading.Thread(target=work)
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while threads._own_runnable() < 2 and time.monotonic() < deadline:
            pass
        assert threads._own_runnable() >= 2
    finally:
        stop.set()
        worker.join()


def test_wait_passively_keeps_the_users_values(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("D2LGRU_TEST_KNOB", raising=False)
    added = threads.wait_passively({"D2LGRU_TEST_KNOB": "0"})
    assert added == {"D2LGRU_TEST_KNOB": "0"}
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    threads.take_back(added)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's, never taken back


def test_take_back_removes_only_what_was_added(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("D2LGRU_TEST_KNOB", raising=False)
    added = threads.wait_passively({"D2LGRU_TEST_KNOB": "0"})
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    threads.take_back(added, keep=("D2LGRU_TEST_KNOB",))
    # the wait policy goes (other runtimes, child processes); a knob kept on purpose stays
    assert "OMP_WAIT_POLICY" not in os.environ and os.environ["D2LGRU_TEST_KNOB"] == "0"
    added = threads.wait_passively()
    os.environ["OMP_WAIT_POLICY"] = "ACTIVE"  # changed since: someone else's value now
    threads.take_back(added)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_numpy_set_threads_reaches_its_blas(clean_env):
    be = d2lgru.get_backend("numpy")
    try:
        assert be.set_threads(1) == 1 and be.threads == 1 and be.threads_source == "argument"
        assert _numpy_blas_threads() == {1}
        assert be.set_threads(2) == 2 and _numpy_blas_threads() == {2}
        clean_env.setenv(threads.ENV_VAR, "1")
        assert be.set_threads() == 1 and be.threads_source == "$D2LGRU_THREADS"
        assert _numpy_blas_threads() == {1}
    finally:
        clean_env.delenv(threads.ENV_VAR, raising=False)
        be.set_threads()


def test_numpy_policy_takes_the_cpus_the_load_leaves_and_blas_runs_them(clean_env):
    # every usable CPU the load leaves free (OpenBLAS spins while it waits, so a training then
    # follows the load: Backend.retune_threads, tested in tests/backends/test_surface.py)
    clean_env.setattr(threads, "usable_cpus", lambda: 2)
    clean_env.setattr(threads, "busy_cpus", lambda *a, **k: 0)
    be = d2lgru.get_backend("numpy")
    assert be.set_threads() == 2 and be.threads_source == "policy"
    assert _numpy_blas_threads() == {2}
    clean_env.setattr(threads, "busy_cpus", lambda *a, **k: 1)
    assert be.set_threads() == 1 and _numpy_blas_threads() == {1}
