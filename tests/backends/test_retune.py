"""A training whose thread count is the policy's follows the machine's load while it runs
(``Backend.retune_threads``, about once a second between steps): run against the backend of
``$D2LGRU_BACKEND`` in a fresh process, with the load and the CPUs played by stand-ins."""

import json
import os
import subprocess
import sys
from pathlib import Path

import d2lgru
from d2lgru.backends import resolve_name
from d2lgru.backends._base import RETUNE_RAISE_AFTER

NAME = resolve_name(os.environ.get("D2LGRU_BACKEND") or None)

_SCRIPT = f"""
import json, numpy as np, d2lgru
from d2lgru import threads
load = [0]
threads.usable_cpus = lambda: 2
threads.busy_cpus = lambda *a, **k: load[0]
be = d2lgru.get_backend({NAME!r})
trainer = be.make_trainer(d2lgru.init_lm(7, 8))
batch = np.arange(6).reshape(2, 3)
seen = []
for busy in (0, 1, 0, 0, 0, 1, 0, 1):  # another job holds one of the two CPUs, ends, ...
    load[0] = busy
    trainer._next_retune = 0.0  # as if a second had passed
    trainer.train_epoch([(batch, batch)])
    seen.append([be.threads, be.framework_threads()])
print(json.dumps([be.retunes_threads, be.threads_source, be._thread_preference(2), seen]))
"""


def _run(**env):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("D2LGRU_THREADS", "OMP_NUM_THREADS")}
    environ["PYTHONPATH"] = str(Path(d2lgru.__file__).parents[1])
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         env=environ, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_policys_count_follows_the_load_while_training_runs():
    retunes, source, preference, seen = _run()
    counts = [threads for threads, _ in seen]
    if retunes and source == "policy":
        # every CPU free -> the preference (at most 2 here); one taken -> one thread at the
        # next look; the CPU back only after RETUNE_RAISE_AFTER looks found it free
        free = min(2, preference)
        assert RETUNE_RAISE_AFTER == 3
        assert counts == [free, 1, 1, 1, free, 1, 1, 1]
        # what the framework itself says it runs (None: a third-party one that cannot say)
        assert all(reported in (threads, None) for threads, reported in seen)
    else:
        assert len(set(counts)) == 1  # a count fixed at first use stays as it was


def test_an_explicit_count_stays_whatever_the_load():
    _, source, _, seen = _run(D2LGRU_THREADS="2")
    assert source == "$D2LGRU_THREADS" and {t for t, _ in seen} == {2}
