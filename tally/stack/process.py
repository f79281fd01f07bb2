"""Start, find and stop the local stack's processes by recorded PID.

A PID file holds the PID and the process start time read from /proc, so a PID that the
kernel reused for an unrelated process is never mistaken for ours and never killed.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence


class StackError(Exception):
    """A problem the user can fix; printed as one line without a stack trace."""


def _start_ticks(pid: int) -> str | None:
    """The process start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses; fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: exited, not yet reaped
        return None
    return fields[19]


@dataclass(frozen=True)
class Managed:
    """One process of the stack: its name and where its PID file and log live."""

    name: str
    run_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The PID if the process we started is still alive, else None (stale files removed)."""
        try:
            pid_text, ticks = self.pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        now_ticks = _start_ticks(pid)
        if now_ticks != ticks:
            if now_ticks is None:
                _kill_orphaned_group(pid)
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def start(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> int:
        """Start the process detached (own session), output appended to its log file."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n=== tally stack: starting {self.name} at {time.ctime()} ===\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ticks = None
        for _ in range(50):  # /proc entry appears immediately; loop only guards a race
            ticks = _start_ticks(proc.pid)
            if ticks:
                break
            time.sleep(0.01)
        self.pid_file.write_text(f"{proc.pid} {ticks}\n")
        return proc.pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM our process group, wait, then SIGKILL. Returns True if something was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.pid() is not None:
            _reap(pid)
            time.sleep(0.2)
        if self.pid() is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(50):
                _reap(pid)
                if self.pid() is None:
                    break
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 40) -> str:
        """The last lines of the log file ('' if there is none)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 200_000))
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""


def _kill_orphaned_group(pgid: int) -> None:
    """Kill what is left of the process group of a process we started that has died.

    Every stack process leads its own group (``start_new_session``), and what it spawns
    stays in that group: a TaskManager's Python workers outlive a ``kill -9`` of the
    TaskManager and would stay behind, idle and holding memory, after ``tally stack up``
    starts a new one.  Called only when the leader is gone: Linux does not hand out a
    PID while a process group of that number exists, so the members are ours (and with
    no members left, killpg finds no group)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on host, below the kernel's ephemeral range: a port
    the kernel hands out (port 0) can be taken by any outgoing connection before the server
    meant to use it binds it (a private stack's Cassandra lost its storage port that way)."""
    first_ephemeral = _first_ephemeral_port()
    low = max(1024, first_ephemeral - 12_000)
    high = max(low + 1000, first_ephemeral)
    while True:
        port = random.randrange(low, high)
        try:
            with socket.socket() as t:
                t.bind((host, port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
            return port
        except OSError:
            continue


def require_free(host: str, port: int, what: str, env_name: str) -> None:
    """Fail with a one-line remedy if a port we are about to bind is already in use."""
    if port_open(host, port):
        raise StackError(
            f"port {port} ({what}) is taken by a process tally did not start; "
            f"stop it or choose another port with {env_name}=<port>"
        )
