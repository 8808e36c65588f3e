"""Where the worker reads the kernel's OOM kill count: its own memory cgroup (v2 or v1, from
/proc/self/cgroup), else the mounted root, else the host's /proc/vmstat."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.oom import OomCounter, find_counter

V1_SELF = "9:pids:/x\n4:memory:/process_api/job7\n1:cpu,cpuacct:/\n0::/\n"
V2_SELF = "0::/system.slice/dorado-worker.service\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_v1_reads_the_processes_own_memory_cgroup(tmp_path: Path) -> None:
    proc = write(tmp_path / "self-cgroup", V1_SELF)
    root = tmp_path / "cgroup"
    write(root / "memory" / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 9\n")
    own = write(
        root / "memory" / "process_api" / "job7" / "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    counter = find_counter(proc, root, tmp_path / "no-vmstat")
    assert counter == OomCounter(own, "memory cgroup")
    assert counter.read() == 2


def test_v2_reads_memory_events_of_the_own_cgroup(tmp_path: Path) -> None:
    proc = write(tmp_path / "self-cgroup", V2_SELF)
    root = tmp_path / "cgroup"
    own = write(
        root / "system.slice" / "dorado-worker.service" / "memory.events",
        "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
    )
    counter = find_counter(proc, root, tmp_path / "no-vmstat")
    assert counter == OomCounter(own, "memory cgroup") and counter.read() == 1


def test_a_namespaced_container_reads_the_mounted_root(tmp_path: Path) -> None:
    # With its own cgroup namespace a container sees itself as "/": the files at the mount.
    proc = write(tmp_path / "self-cgroup", "0::/\n")
    root = tmp_path / "cgroup"
    mounted = write(root / "memory.events", "oom 0\noom_kill 0\n")
    assert find_counter(proc, root, tmp_path / "no-vmstat") == OomCounter(mounted, "memory cgroup")


def test_without_a_readable_cgroup_the_hosts_count(tmp_path: Path) -> None:
    proc = write(tmp_path / "self-cgroup", V1_SELF)
    vmstat = write(tmp_path / "vmstat", "pgfault 123\noom_kill 5\nnr_free_pages 7\n")
    counter = find_counter(proc, tmp_path / "cgroup", vmstat)
    assert counter == OomCounter(vmstat, "host") and counter.read() == 5


def test_nothing_readable_is_unknown(tmp_path: Path) -> None:
    assert find_counter(tmp_path / "absent", tmp_path / "cgroup", tmp_path / "absent2") is None
    # A counter whose file went away reads as unknown, not zero.
    assert OomCounter(tmp_path / "gone", "memory cgroup").read() is None


def test_this_machine_has_a_counter() -> None:
    vmstat = Path("/proc/vmstat")
    if not vmstat.exists() or "oom_kill " not in vmstat.read_text():
        pytest.skip("no kernel OOM kill count on this machine (not Linux, or an old kernel)")
    counter = find_counter()
    assert counter is not None and isinstance(counter.read(), int)
