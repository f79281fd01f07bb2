"""`tally stack up | down | status | logs | fetch`: the embedded local stack.

`up` is idempotent: components whose recorded process is alive are left alone, the rest
are prepared and started, and `up` returns only when every component answers its real
health check (or fails with the component's last log lines).  `down` stops only the
processes whose PIDs it recorded.  Data lives under ``<home>/data`` and survives both.

The topology comes from the config (``stack_topology``, tally.stack.topology): the
single-node default, or the multi-node cluster on loopback addresses, whose processes
start one at a time where a component needs that (Cassandra nodes bootstrap one by one);
``up`` on a multi-node stack with a dead node starts just that node again.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable

from tally.config import TallyConfig
from tally.stack import fetch, topology
from tally.stack.components import components_for
from tally.stack.process import Managed, StackError, port_open, require_free

Log = Callable[[str], None]


def _managed(cfg: TallyConfig, name: str) -> Managed:
    return Managed(name, cfg.run_dir, cfg.log_dir)


def _select(cfg: TallyConfig, names: Iterable[str] | None):
    components = components_for(cfg)
    wanted = set(names or [])
    unknown = wanted - {c.name for c in components}
    if unknown:
        raise StackError(f"unknown component(s) {sorted(unknown)}; choose from {[c.name for c in components]}")
    return [c for c in components if not wanted or c.name in wanted]


def _addresses(component, cfg: TallyConfig) -> list[tuple[str, int, str, str]]:
    """(host, port, what, env name) of every port a component binds."""
    if hasattr(component, "addresses"):
        return component.addresses(cfg)
    return [(cfg.host, port, what, env_name) for port, what, env_name in component.ports(cfg)]


def _quiet_client_logs() -> None:
    # Health probes against a starting service fail by design; their drivers' retry
    # chatter would bury the progress lines.
    for name in ("kafka", "cassandra", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def fetch_all(cfg: TallyConfig, log: Log = print) -> None:
    """Check prerequisites and download every component's jars (cached)."""
    fetch.require_java()
    fetch.require_redis()
    for component in fetch.COMPONENT_POMS:
        fetch.fetch(cfg, component, log)


def health(cfg: TallyConfig, component) -> tuple[bool, str]:
    """Run one component's health check; (healthy, detail)."""
    # A cheap TCP probe first: client libraries block for seconds on a closed port.
    # (Multi-node components probe each node themselves and name the ones down.)
    if not hasattr(component, "addresses"):
        port, what, _ = component.ports(cfg)[0]
        if not port_open(cfg.host, port):
            return False, f"{what} port {port} not listening"
    try:
        return True, component.health(cfg)
    except Exception as exc:  # any failure of a probe means "not healthy yet"
        return False, f"{type(exc).__name__}: {exc}".strip()[:200]


def up(cfg: TallyConfig, names: Iterable[str] | None = None, timeout_s: float = 240, log: Log = print) -> float:
    """Start what is not running and wait until all selected components are healthy.

    Returns the seconds from the call to all-healthy.
    """
    _quiet_client_logs()
    started_at = time.monotonic()
    components = _select(cfg, names)
    if cfg.stack_topology == "multi":
        # Reuse the jars the single-node stack's home already holds (no second download).
        topology.link_shared_jars(cfg, TallyConfig().cache_dir / "lib")
    fetch_all(cfg, log)
    for sub in (cfg.data_dir, cfg.log_dir, cfg.run_dir):
        sub.mkdir(parents=True, exist_ok=True)
    for component in components:
        names_ = _proc_names(component, cfg)
        running = [_managed(cfg, p) for p in names_ if _managed(cfg, p).pid()]
        if running and len(running) == len(names_):
            log(f"  {component.name}: already running")
            continue
        if not running:
            for host, port, what, env_name in _addresses(component, cfg):
                require_free(host, port, what, env_name)
        component.prepare(cfg)
        for proc in component.processes(cfg):
            managed = _managed(cfg, proc.name)
            if managed.pid() is None:
                pid = managed.start(proc.argv, proc.env, cfg.home)
                log(f"  {proc.name}: started (pid {pid}, log {managed.log_file})")
                if hasattr(component, "wait_started"):
                    component.wait_started(cfg, proc.name, managed, timeout_s)
                    log(f"  {proc.name}: serving after {time.monotonic() - started_at:.1f}s")
    pending = {c.name: c for c in components}
    deadline = time.monotonic() + timeout_s
    last_detail: dict[str, str] = {}
    while pending:
        for name, component in list(pending.items()):
            for proc_name in _proc_names(component, cfg):
                if _managed(cfg, proc_name).pid() is None:
                    tail = _managed(cfg, proc_name).tail(15)
                    raise StackError(f"{proc_name} exited during start-up; last log lines:\n{tail}")
            ok, detail = health(cfg, component)
            last_detail[name] = detail
            if ok:
                log(f"  {name}: healthy after {time.monotonic() - started_at:.1f}s ({detail})")
                del pending[name]
        if not pending:
            break
        if time.monotonic() > deadline:
            waiting = "; ".join(f"{n}: {last_detail.get(n, '?')}" for n in pending)
            raise StackError(f"not healthy after {timeout_s:.0f}s: {waiting}")
        time.sleep(1.0)
    elapsed = time.monotonic() - started_at
    log(f"stack up: all healthy in {elapsed:.1f}s")
    return elapsed


def _proc_names(component, cfg: TallyConfig) -> tuple[str, ...]:
    if hasattr(component, "process_names_for"):
        return component.process_names_for(cfg)
    return component.process_names


def down(cfg: TallyConfig, names: Iterable[str] | None = None, log: Log = print) -> None:
    """Stop the processes this launcher started (by recorded PID), in reverse start order."""
    for component in reversed(_select(cfg, names)):
        for proc_name in reversed(_proc_names(component, cfg)):
            if _managed(cfg, proc_name).stop():
                log(f"  {proc_name}: stopped")
            else:
                log(f"  {proc_name}: not running")


def running(cfg: TallyConfig, names: Iterable[str] | None = None) -> set[str]:
    """Names of the selected components with at least one process alive (healthy or not)."""
    return {c.name for c in _select(cfg, names) if any(_managed(cfg, p).pid() for p in _proc_names(c, cfg))}


def status(cfg: TallyConfig, names: Iterable[str] | None = None) -> list[tuple[str, bool, str]]:
    """(component, healthy, detail) for each selected component."""
    _quiet_client_logs()
    rows = []
    for component in _select(cfg, names):
        pids = {p: _managed(cfg, p).pid() for p in _proc_names(component, cfg)}
        ok, detail = health(cfg, component)
        pid_text = ", ".join(f"{p} pid {pid}" if pid else f"{p} not started by tally" for p, pid in pids.items())
        rows.append((component.name, ok, f"{detail} [{pid_text}]"))
    return rows


def logs(cfg: TallyConfig, names: Iterable[str] | None = None, lines: int = 40) -> str:
    """The last log lines of each selected component's processes."""
    parts = []
    for component in _select(cfg, names):
        for proc_name in _proc_names(component, cfg):
            managed = _managed(cfg, proc_name)
            parts.append(f"==> {managed.log_file} <==\n{managed.tail(lines)}")
    return "\n".join(parts)
