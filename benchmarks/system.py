"""What the header and the section footers say about the machine: CPU model,
caches, load, and how many cores other processes used while a section ran
(from /proc/stat), plus the process's resident memory."""

from __future__ import annotations

import ctypes
import os
import platform
import time
from typing import Dict, Optional, Tuple

import torch

import torch_quant as tq
from torch_quant import _C

OTHERS_WARN_CORES = 0.2
MIN_WALL_S = 0.5


def read_first_line(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_cache() -> Optional[str]:
    """The L3 size from sysfs, e.g. '32 MiB'; None if unknown."""
    for idx in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{idx}"
        if read_first_line(f"{base}/level") == "3":
            size = read_first_line(f"{base}/size") or ""
            if size.endswith("K") and size[:-1].isdigit():
                kib = int(size[:-1])
                return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"
            return size or None
    return None


def rss_bytes() -> Optional[int]:
    """This process's resident memory (VmRSS of /proc/self/status), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def trim_heap() -> bool:
    """Give the allocator's free heap pages back to the OS (glibc malloc_trim), so
    that RSS shows what is held rather than what was once allocated."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def cpu_snapshot() -> Optional[Tuple[float, float, float, float]]:
    """(machine busy CPU s, stolen CPU s, this process's CPU s, wall s), or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if len(vals) < 7:
        return None
    busy = (vals[0] + vals[1] + vals[2] + vals[5] + vals[6]) / hz  # user nice system irq softirq
    steal = vals[7] / hz if len(vals) > 7 else 0.0
    t = os.times()
    return busy, steal, t.user + t.system, time.perf_counter()


def others_cores(a, b) -> Optional[Tuple[float, float]]:
    """CPU cores used on average by other processes, and stolen by the hypervisor,
    between two snapshots."""
    if a is None or b is None or b[3] - a[3] < MIN_WALL_S:
        return None  # /proc/stat counts 10 ms ticks: too coarse for a shorter span
    wall = b[3] - a[3]
    others = ((b[0] - a[0]) - (b[2] - a[2])) / wall
    return max(0.0, others), max(0.0, (b[1] - a[1]) / wall)


def format_others(o: Optional[Tuple[float, float]]) -> str:
    if o is None:
        return ""
    text = f"; other processes used {o[0]:.2f} cores on average"
    if o[1] >= 0.01:
        text += f", the hypervisor stole {o[1]:.2f}"
    if o[0] + o[1] > OTHERS_WARN_CORES:
        text += (" -- WARNING: the machine was not idle, times are inflated and noisy "
                 "(multi-threaded ops wait for a core); rerun on an idle machine")
    return text


def loadavg() -> Optional[Tuple[float, float, float]]:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def environment() -> Dict[str, object]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    return {
        "torch": torch.__version__,
        "torch_quant": getattr(tq, "__version__", "?"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus_available": affinity,
        "cpu_model": cpu_model(),
        "l3_cache": l3_cache(),
        "cpu_isa": _C._cpu_isa(),
        "supported_isas": list(_C._supported_cpu_isas()),
        "transparent_hugepage": read_first_line("/sys/kernel/mm/transparent_hugepage/enabled"),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "loadavg": loadavg(),
    }
