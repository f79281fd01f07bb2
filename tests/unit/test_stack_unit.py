"""Launcher logic that needs no JVM: PID records, port checks, prerequisite errors, config."""

import os
import socket
import subprocess
import sys
import time

import pytest

from tally.config import TallyConfig
from tally.stack import fetch
from tally.stack.process import Managed, StackError, port_open, require_free


def test_managed_process_start_pid_and_stop(tmp_path):
    proc = Managed("sleeper", tmp_path / "run", tmp_path / "logs")
    assert proc.pid() is None
    pid = proc.start([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"], os.environ, tmp_path)
    assert proc.pid() == pid
    time.sleep(0.3)
    assert "hi" in proc.tail()
    assert proc.stop(timeout_s=5) is True
    assert proc.pid() is None
    assert not proc.pid_file.exists()
    assert proc.stop() is False  # nothing left to stop


def test_stale_or_reused_pid_is_never_ours(tmp_path):
    proc = Managed("ghost", tmp_path, tmp_path)
    # Our own PID with a wrong start time: a reused PID must not be treated as the stack's.
    proc.pid_file.write_text(f"{os.getpid()} 1\n")
    assert proc.pid() is None
    assert not proc.pid_file.exists()


def test_a_dead_leaders_leftover_processes_are_killed(tmp_path):
    """A TaskManager's Python workers stay in its process group after a kill -9 of the
    TaskManager; the next look at the PID file finds the leader dead and kills the rest."""
    m = Managed("leader", tmp_path / "run", tmp_path / "logs")
    pid = m.start(["bash", "-c", "sleep 300 & echo $! > child.pid; wait"], os.environ, tmp_path)
    child_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 10
    while not (child_file.exists() and child_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(child_file.read_text())
    os.kill(pid, 9)  # the leader dies, its child lives on in the group
    os.waitpid(pid, 0)
    assert os.getpgid(child) == pid
    assert m.pid() is None  # stale: the leftover group is killed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the orphaned child of the dead leader is still alive")


def test_taken_port_gives_one_line_remedy():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_open("127.0.0.1", port)
        with pytest.raises(StackError) as err:
            require_free("127.0.0.1", port, "Kafka broker", "TALLY_KAFKA_PORT")
    message = str(err.value)
    assert "\n" not in message
    assert f"port {port} (Kafka broker) is taken" in message and "TALLY_KAFKA_PORT" in message


def test_missing_java_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    with pytest.raises(StackError, match="java not found: install Java 17"):
        fetch.require_java()
    with pytest.raises(StackError, match="mvn not found: install Maven"):
        fetch.require_maven()
    with pytest.raises(StackError, match="redis-server not found"):
        fetch.require_redis()


def test_cli_reports_missing_prerequisite_without_traceback(tmp_path):
    env = {"PATH": str(tmp_path), "TALLY_HOME": str(tmp_path / "home")}  # no java, no mvn
    result = subprocess.run([sys.executable, "-m", "tally.cli", "stack", "up"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("tally: java not found")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_reports_taken_port(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        env = {**os.environ, "TALLY_HOME": str(tmp_path / "home"), "TALLY_REDIS_PORT": str(port)}
        # Only redis: needs no jars, so the check is reached quickly and nothing else starts.
        result = subprocess.run([sys.executable, "-m", "tally.cli", "stack", "up", "redis"], env=env,
                                capture_output=True, text=True, timeout=120)
    if "not found" in result.stderr:
        pytest.skip(f"prerequisite missing on this machine: {result.stderr.strip()}")
    assert result.returncode == 2
    assert f"port {port} (Redis) is taken" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_from_env_with_ports_and_units(tmp_path):
    cfg = TallyConfig.from_env({"TALLY_HOME": str(tmp_path), "TALLY_KAFKA_PORT": "19092", "TALLY_GRACE_SECONDS": "7"})
    assert cfg.kafka_bootstrap == "127.0.0.1:19092"
    assert cfg.grace_seconds == 7
    assert cfg.log_dir == tmp_path / "logs"
    with pytest.raises(ValueError, match="TALLY_REDIS_PORT must be an integer"):
        TallyConfig.from_env({"TALLY_REDIS_PORT": "x"})


def test_config_points_at_a_real_cluster_from_env():
    local = TallyConfig.from_env({})
    assert local.cassandra_hosts == ("127.0.0.1",) and local.cassandra_replication.endswith("'replication_factor': 1}")
    cfg = TallyConfig.from_env({
        "TALLY_KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "TALLY_CASSANDRA_HOSTS": "c1,c2,c3",
        "TALLY_REDIS_URL": "redis://r:6380/1", "TALLY_CASSANDRA_REPLICATION_FACTOR": "3",
        "TALLY_CASSANDRA_CONSISTENCY": "quorum", "TALLY_KAFKA_REPLICATION_FACTOR": "3"})
    assert cfg.kafka_bootstrap == "k1:9092,k2:9092" and cfg.cassandra_hosts == ("c1", "c2", "c3")
    assert cfg.redis_url == "redis://r:6380/1" and cfg.cassandra_consistency == "QUORUM"
    assert cfg.cassandra_replication == "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    assert cfg.kafka_replication_factor == 3
