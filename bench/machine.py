"""The machine a benchmark ran on, and how much of its CPU other processes took meanwhile.

On a shared 2-core machine another process's work slows a run down as much as our own code
does: every timed run records the CPU time of the whole machine (psutil) against the CPU
time of our own processes (this one's process group and the worker processes' groups, children
that finished included), and reports the difference as `other_cores`: the cores that other
processes used on average while the run was timed.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import torch


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_default_threads": torch.get_num_threads(),
        "packages": {name: _version(name) for name in ("torchvision", "onnxruntime", "onnx")},
        # 1, 5 and 15-minute load averages when the run started: above the core count, other
        # work was queued for the CPUs (a busy shared machine; each run's `cpu` says more).
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
    }


@dataclass(frozen=True)
class CpuSample:
    wall: float
    machine_busy: float  # CPU seconds all processes have used since boot
    own: float  # CPU seconds of our process groups, their waited-for children included


def cpu_sample(groups: Iterable[int] = ()) -> CpuSample:
    """A sample for this process's group plus `groups` (e.g. worker processes' own groups).

    A process of those groups must live through the interval, or its CPU time leaves the sum.
    """
    wanted = {os.getpgid(0), *groups}
    return CpuSample(wall=time.monotonic(), machine_busy=_machine_busy(), own=_group_cpu(wanted))


def cpu_usage(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Average cores busy over the interval: all, ours, and everybody else's."""
    wall = after.wall - before.wall
    if wall <= 0:
        return {"seconds": 0.0, "busy_cores": 0.0, "own_cores": 0.0, "other_cores": 0.0}
    busy = (after.machine_busy - before.machine_busy) / wall
    own = (after.own - before.own) / wall
    return {
        "seconds": wall,
        "busy_cores": busy,
        "own_cores": own,
        # Clamped: accounting granularity can make it slightly negative on an idle machine.
        "other_cores": max(0.0, busy - own),
    }


@contextmanager
def metered(into: dict[str, float], groups: Iterable[int] = ()) -> Iterator[None]:
    """Fill `into` with cpu_usage over the block."""
    groups = list(groups)
    before = cpu_sample(groups)
    try:
        yield
    finally:
        into.update(cpu_usage(before, cpu_sample(groups)))


def _group_cpu(groups: set[int]) -> float:
    """CPU seconds of every live process in `groups`, with their waited-for children's."""
    total = 0.0
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) not in groups:
                continue
            times = process.cpu_times()
        except (psutil.Error, ProcessLookupError):  # it ended meanwhile
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _machine_busy() -> float:
    """CPU seconds spent not idle since boot, summed over all CPUs (iowait counts as idle)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # guest and guest_nice are already counted in user and nice: leave them out of the sum.
    counted = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return sum(getattr(times, name, 0.0) for name in counted) - idle


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def wait_for_quiet(
    max_wait: float, *, threshold: float = 0.25, window: float = 5.0
) -> dict[str, float]:
    """Wait (at most max_wait seconds) for a window in which other processes use < threshold
    cores; returns how long it waited and the last window's figure. The run goes on either way.
    """
    start = time.monotonic()
    while True:
        usage: dict[str, float] = {}
        with metered(usage):
            time.sleep(window)
        waited = time.monotonic() - start
        if usage["other_cores"] < threshold or waited >= max_wait:
            return {"waited_seconds": waited, "other_cores": usage["other_cores"]}
