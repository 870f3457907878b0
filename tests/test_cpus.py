"""CPU counting follows the affinity mask and cgroup quotas, not the host's core count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from imgbatch.core.cpus import cgroup_cpu_limit


def test_affinity_limits_the_count() -> None:
    code = "from imgbatch.core.cpus import usable_cpus; print(usable_cpus())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "kubepods" / "pod1").mkdir(parents=True)
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 1.5
    (tmp_path / "kubepods" / "pod1" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    base = tmp_path / "cpu" / "docker" / "abc"
    base.mkdir(parents=True)
    (base / "cpu.cfs_quota_us").write_text("200000\n")
    (base / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert cgroup_cpu_limit(tmp_path, proc) == 2.0
    (base / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path, proc) is None


def test_int8_pairs_saturate_without_vnni(tmp_path: Path) -> None:
    import platform

    from imgbatch.core.cpus import int8_pairs_saturate

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert int8_pairs_saturate(cpuinfo) is x86  # AVX2 only (e.g. AMD Zen 3): 16-bit pair sums
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert int8_pairs_saturate(cpuinfo) is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n")
    assert int8_pairs_saturate(cpuinfo) is False
    assert int8_pairs_saturate(tmp_path / "missing") is False
