"""Processes a test left running, found in /proc (psutil is not a dependency).

A test's processes are the children of the pytest process that were not there before it,
and any process whose command line names the test's own temporary directory (what a
child started and left behind when it was killed: an orphan is re-parented to init).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it."""

    pid: int
    comm: str
    start: int  # clock ticks after boot: tells a reused pid from the old one
    ppid: int
    state: str
    cmdline: str

    @property
    def key(self) -> tuple[int, int]:
        """Identity that survives pid reuse."""
        return (self.pid, self.start)

    @property
    def running(self) -> bool:
        """Alive (a zombie has exited; only its exit status is left)."""
        return self.state not in ("Z", "X")


def read(pid: int) -> Proc | None:
    """The process ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    return Proc(
        pid=pid,
        comm=stat[stat.index("(") + 1 : stat.rindex(")")],
        start=int(fields[19]),
        ppid=int(fields[1]),
        state=fields[0],
        cmdline=cmd.replace(b"\0", b" ").decode(errors="replace").strip(),
    )


def processes() -> list[Proc]:
    """Every process visible in /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            p = read(int(entry))
            if p is not None:
                found.append(p)
    return found


def children_keys() -> set[tuple[int, int]]:
    """The current children of this process."""
    me = os.getpid()
    return {p.key for p in processes() if p.ppid == me}


def left_running(before: set[tuple[int, int]], tmp_dir: Path | None) -> list[Proc]:
    """Running processes started since ``before`` was taken, or naming ``tmp_dir``."""
    me = os.getpid()
    marks = (f"{tmp_dir}/", f"{tmp_dir} ") if tmp_dir is not None else ()
    left = []
    for p in processes():
        if p.pid == me or not p.running:
            continue
        mine = p.ppid == me and p.key not in before
        named = any(m in f"{p.cmdline} " for m in marks)
        if mine or named:
            left.append(p)
    return left


def settle(before: set[tuple[int, int]], tmp_dir: Path | None, grace: float) -> list[Proc]:
    """``left_running``, after giving processes on their way out ``grace`` seconds."""
    deadline = time.monotonic() + grace
    left = left_running(before, tmp_dir)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = left_running(before, tmp_dir)
    return left


def unwaited(before: set[tuple[int, int]]) -> list[Proc]:
    """Children started since ``before`` that exited but were never waited for."""
    me = os.getpid()
    return [p for p in processes() if p.ppid == me and p.key not in before and not p.running]


def kill(procs: list[Proc], timeout: float) -> None:
    """SIGKILL ``procs`` and wait (bounded) until none of them runs.

    Children are left as zombies: whoever holds their ``Popen`` reaps them (reaping them
    here would leave that object believing they still run).
    """
    for p in procs:
        current = read(p.pid)
        if current is not None and current.key == p.key:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if (c := read(p.pid)) and c.key == p.key and c.running]
        if pending:
            time.sleep(0.02)
