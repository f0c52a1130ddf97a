"""The process's memory as the kernel sees it: the container's limit (cgroup v2 or v1) and resident memory.

Linux only, read from /sys/fs/cgroup and /proc; elsewhere there is no limit to
read and the resident figure is unknown (None), and the budget works from its
charges alone (memory_budget.py).
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number; anything this large is none.
_NO_LIMIT = 1 << 60


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """The memory limit of the cgroup this process runs in, in bytes; None when there is none or none is readable.

    v2: `memory.max` of the process's own cgroup (`0::/path` in /proc/self/cgroup); v1:
    `memory.limit_in_bytes` of its own memory cgroup (`N:memory:/path`); then the same files at the
    root, where a container with its own cgroup namespace sees its cgroup.
    """
    candidates: list[Path] = []
    try:
        for line in proc_self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            path = path.strip().lstrip("/")
            if not path:
                continue
            if controllers == "":
                candidates.append(root / path / "memory.max")
            elif "memory" in controllers.split(","):
                candidates.append(root / "memory" / path / "memory.limit_in_bytes")
    except (OSError, ValueError):
        pass
    candidates += [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    for candidate in candidates:
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        if text.isdigit():
            value = int(text)
            return value if 0 < value < _NO_LIMIT else None
    return None


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(statm: Path = Path("/proc/self/statm")) -> int | None:
    """This process's resident memory now (the second field of /proc/self/statm, in pages); None off Linux."""
    try:
        return int(statm.read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
