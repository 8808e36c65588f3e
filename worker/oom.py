"""The kernel's count of OOM kills, read where this process can see it.

A training process that dies of SIGKILL may have been ended by the kernel's OOM killer, or by
anyone else. The kernel counts its kills: per memory cgroup (``oom_kill`` in ``memory.events``
under cgroup v2, in ``memory.oom_control`` under v1) and for the whole host (``oom_kill`` in
``/proc/vmstat``). A count that rose while the process ran tells an OOM kill from another one.

The counter read is this process's own memory cgroup (named in ``/proc/self/cgroup``), else the
cgroup mounted at ``/sys/fs/cgroup`` (what a container with its own cgroup namespace sees),
else the host's. A worker and the training processes it starts share one cgroup, so the
worker's counter covers them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
VMSTAT = Path("/proc/vmstat")
CGROUP, HOST = "memory cgroup", "host"
"""What a counter counts: the kills in this process's memory cgroup, or in the whole host."""

_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class OomCounter:
    """One file holding an ``oom_kill`` count; ``scope`` says whose kills it counts."""

    path: Path
    scope: str  # CGROUP or HOST

    def read(self) -> int | None:
        """The count now, None when the file cannot be read (or holds no count)."""
        try:
            match = _OOM_KILL.search(self.path.read_text())
        except OSError:
            return None
        return int(match.group(1)) if match else None


def candidates(
    proc_cgroup: str, root: Path = CGROUP_ROOT, vmstat: Path = VMSTAT
) -> list[OomCounter]:
    """Where to look, best first, for a process whose ``/proc/self/cgroup`` is ``proc_cgroup``:
    its own cgroup (v2, then v1's ``memory`` controller), the mounted root, the host."""
    own: list[OomCounter] = []
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, cgroup = parts
        relative = cgroup.strip().lstrip("/")
        if controllers == "":  # v2 (unified) hierarchy
            own.append(OomCounter(root / relative / "memory.events", CGROUP))
        elif "memory" in controllers.split(","):
            own.append(OomCounter(root / "memory" / relative / "memory.oom_control", CGROUP))
    mounted = [
        OomCounter(root / "memory.events", CGROUP),
        OomCounter(root / "memory" / "memory.oom_control", CGROUP),
    ]
    unique = list(dict.fromkeys([*own, *mounted]))
    return [*unique, OomCounter(vmstat, HOST)]


def find_counter(
    proc_cgroup: Path = PROC_SELF_CGROUP, root: Path = CGROUP_ROOT, vmstat: Path = VMSTAT
) -> OomCounter | None:
    """The first readable counter for this process, None where none is (not Linux, say)."""
    try:
        text = proc_cgroup.read_text()
    except OSError:
        text = ""
    for counter in candidates(text, root, vmstat):
        if counter.read() is not None:
            return counter
    return None
