"""Run `tally agent` as a child process with its own home, ports, topics and tenant
(used by the integration tests and bench/agent.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tally.config import REPO_ROOT
from tally.stack.process import free_port


class AgentProcess:
    """`python -m tally.cli agent` with its own home, ports, topics and tenant."""

    def __init__(self, home: Path, points_topic: str, series_topic: str, tenant: str, kafka_port: int,
                 workers: int = 2, extra_env: dict | None = None, grace_seconds: int | None = None):
        """``grace_seconds``: the job's grace (the workers keep within it of each other,
        tally.agent.sender.Progress); the environment's TALLY_GRACE_SECONDS when None."""
        self.home = home
        self.statsd_port = free_port()
        self.http_port = free_port()
        self.env = {**os.environ, "TALLY_HOME": str(home), "TALLY_STATSD_PORT": str(self.statsd_port),
                    "TALLY_AGENT_HTTP_PORT": str(self.http_port), "TALLY_POINTS_TOPIC": points_topic,
                    "TALLY_SERIES_TOPIC": series_topic, "TALLY_AGENT_TENANT": tenant,
                    "TALLY_AGENT_WORKERS": str(workers), "TALLY_KAFKA_PORT": str(kafka_port),
                    **({"TALLY_GRACE_SECONDS": str(grace_seconds)} if grace_seconds is not None else {}),
                    **(extra_env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = home / "agent.log"

    def start(self, timeout_s: float = 30) -> "AgentProcess":
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "tally.cli", "agent"], env=self.env, cwd=REPO_ROOT,
                                     stdout=open(self.log_path, "a"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.metrics().get("tally_agent_workers", 0) >= int(self.env["TALLY_AGENT_WORKERS"]):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.3)

    def metrics(self) -> dict[str, float]:
        """/metrics as {name or name{labels}: value}."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][^ ]*) ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def stop(self, timeout_s: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
