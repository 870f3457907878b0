"""How many CPUs this process may really use: its affinity mask and its cgroup's CPU quota.

`os.cpu_count()` reports the host's cores; in a container limited to 2 CPUs on a 64-core host it
would start 64 pool processes with 64 ORT threads each.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The CPU quota (in CPUs) of this process's cgroup, or None when unlimited or unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":  # cgroup v2
            for directory in (root / path.lstrip("/"), root):
                limit = _v2(directory / "cpu.max")
                if limit is not None:
                    return limit
        elif "cpu" in controllers.split(","):  # cgroup v1
            for base in (root / "cpu" / path.lstrip("/"), root / "cpu", root / "cpu,cpuacct"):
                limit = _v1(base)
                if limit is not None:
                    return limit
    return None


def _v2(cpu_max: Path) -> float | None:
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1(base: Path) -> float | None:
    try:
        quota = int((base / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period


def usable_cpus() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


# CPU flags with which ORT's u8s8 kernels sum in 32 bits (no 16-bit saturation).
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"}


def int8_pairs_saturate(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True on x86 CPUs without VNNI: ORT's u8s8 kernels there add product pairs in saturating 16 bits.

    See export.saturation. Unknown CPUs (no /proc/cpuinfo flags) and other architectures: False.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not (_VNNI_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def cpu_signature(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """This CPU's model name and a hash of its feature flags: what a speed measured here depends on
    (two "AMD EPYC" hosts of different generations differ in their flags)."""
    import hashlib
    import platform

    model, flags = platform.machine(), ""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return model
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == platform.machine():
            model = f"{model} {value.strip()}"
        elif key.strip() == "flags" and not flags:
            flags = hashlib.sha256(" ".join(sorted(value.split())).encode()).hexdigest()[:12]
    return f"{model} flags:{flags}" if flags else model
