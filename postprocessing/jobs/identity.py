"""A process identity that survives clock steps: ``pid:boot-id:start-ticks``.

A pid alone is reused, and a process's start time in seconds (``psutil.create_time``) is
derived from the wall clock, which moves when it is stepped (NTP just after boot).  The
boot id and the start time in clock ticks since boot (field 22 of ``/proc/<pid>/stat``)
never change for a process, and no other process of the same boot has both.
"""

from typing import Optional

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    with open(BOOT_ID_PATH, encoding="ascii") as handle:
        return handle.read().strip()


def start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ")".
    fields = stat[stat.rfind(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def identity(pid: int) -> str:
    """``pid:boot-id:start-ticks`` of a live process."""
    ticks = start_ticks(pid)
    if ticks is None:
        raise ProcessLookupError("no process %d" % pid)
    return "%d:%s:%d" % (pid, boot_id(), ticks)


def alive(text: str) -> Optional[bool]:
    """Whether the process an identity names still runs; None when ``text`` is no identity."""
    parts = text.strip().split(":")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
        return None
    if parts[1] != boot_id():
        return False
    return start_ticks(int(parts[0])) == int(parts[2])
