"""The machine and the checkout a benchmark ran on. Standard library only (and
``d2lgru.threads``, which is too): every environment, and the driver that has no framework, can
import it."""

from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from d2lgru.threads import busy_cpus

REPO = Path(__file__).resolve().parents[1]


def dies_with_parent():
    """``preexec_fn`` for every process a benchmark starts: it ends with the process that
    started it (:func:`d2lgru._io.dies_with_parent`). Imported when called, by a driver: the
    workers of ``benchmarks.ab`` import this module beside older revisions' d2lgru."""
    from d2lgru._io import dies_with_parent as arm
    return arm()


def portable(path) -> str:
    """``path`` as a result file records it: relative to the checkout (``../`` for a sibling such
    as ``../shared/data``), else its name; committed results hold no machine's absolute paths."""
    path = Path(path).absolute()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if path.is_relative_to(base):
            return prefix + path.relative_to(base).as_posix()
    return path.name


def _cpuinfo() -> list[dict]:
    blocks, block = [], {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if not line.strip():
            if block:
                blocks.append(block)
            block = {}
        elif ":" in line:
            key, _, value = line.partition(":")
            block[key.strip()] = value.strip()
    if block:
        blocks.append(block)
    return blocks


def _meminfo_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def gpu_names() -> list[str]:
    """NVIDIA GPUs as nvidia-smi names them (empty when there is none or no nvidia-smi)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def cpu_max_mhz(cpus: list[dict]) -> dict:
    """The CPU's highest clock and where it was read: cpufreq's ``cpuinfo_max_freq``, else a
    GHz figure in the model name, else ``/proc/cpuinfo``'s ``cpu MHz`` (the clock now, often
    the base or TSC clock in a virtual machine: the cores may boost above it)."""
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return {"mhz": khz / 1e3, "source": "cpufreq cpuinfo_max_freq"}
    except (OSError, ValueError):
        pass
    model = cpus[0].get("model name", "") if cpus else ""
    if (m := re.search(r"(\d+(?:\.\d+)?)\s*GHz", model)):
        return {"mhz": float(m.group(1)) * 1e3, "source": "the model name"}
    try:
        return {"mhz": float(cpus[0]["cpu MHz"]), "source": "/proc/cpuinfo cpu MHz (the clock "
                "now: base or TSC clock in a VM, boost not counted)"}
    except (IndexError, KeyError, ValueError):
        return {"mhz": None, "source": "not found"}


def machine() -> dict:
    cpus = _cpuinfo()
    model = cpus[0].get("model name", platform.processor()) if cpus else platform.processor()
    cores = {(c.get("physical id"), c.get("core id")) for c in cpus}
    flags = set(cpus[0].get("flags", "").split()) if cpus else set()
    mem_kb = _meminfo_kb("MemTotal")
    return {
        "cpu_model": model,
        "physical_cores": len(cores) if cpus else None,
        "logical_cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "simd": sorted(f for f in flags if f in {"avx", "avx2", "fma", "avx512f", "avx512_bf16",
                                                  "avx512_vnni", "amx_tile", "amx_bf16"}),
        "cpu_max_mhz": cpu_max_mhz(cpus),
        "memory_gb": round(mem_kb / 2 ** 20, 1) if mem_kb else None,
        "gpus": gpu_names(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # the CPUs other processes kept busy as the run started: the 1-minute average above
        # still holds a run that has just ended, this count does not
        "busy_cpus_at_start": busy_cpus(),
    }


def label(info: dict | None = None, device: str = "cpu") -> str:
    """A file-name-safe name for the machine, e.g. ``amd-epyc-2c`` or ``amd-epyc-16c-nvidia-h200``."""
    info = info or machine()
    words = re.sub(r"\(r\)|\(tm\)|\bprocessor\b|\bcpu\b|@.*$|\d+-core", " ",
                   info["cpu_model"].lower())
    name = "-".join(re.findall(r"[a-z0-9]+", words)[:4]) or "cpu"
    name += f"-{info['cpus_usable'] or info['logical_cpus']}c"
    if str(device).lower() in ("gpu", "cuda") and info["gpus"]:
        gpu = re.sub(r"[^a-z0-9]+", "-", info["gpus"][0].split(",")[0].lower()).strip("-")
        name += f"-{gpu}"
    return name


def checkout() -> dict:
    """The commit of the checkout and whether the benchmarked code differs from it."""
    def git(*args):
        try:
            proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                                  text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    if not commit or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return {"commit": None, "dirty": None}  # not a git checkout (e.g. a copied tree)
    # what is benchmarked: the package and the harness, untracked files included, not results
    changed = git("status", "--porcelain", "--", "d2lgru", "benchmarks", "pyproject.toml",
                  ":(exclude)benchmarks/results") or ""
    paths = [line[3:] for line in changed.splitlines()]
    return {"commit": commit, "dirty": bool(paths), "dirty_paths": paths[:30]}


def peak_rss_mb() -> float:
    """This process's peak resident set size (``ru_maxrss`` is KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float | None:
    """This process's resident set size now."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20, 1)


def python() -> str:
    where = portable(sys.executable)
    return f"{platform.python_implementation()} {platform.python_version()} ({where})"
