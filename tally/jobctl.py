"""Submit, list and cancel Flink jobs on the local cluster (`tally job ...`).

Submission goes through Flink's own CLI (``flink run -d -py jobs/<name>.py``) with the
stack's Flink configuration, after creating the topic and Cassandra schema the job
needs.  A job that is already running under the same name is not submitted twice.

The job runs against the endpoints of the config it is submitted with (its host, ports,
Kafka/Cassandra/Redis addresses are handed to the job's client as TALLY_* variables), so
a private stack (own TALLY_HOME and ports) runs its own jobs.

Every submitted job id is recorded under its name in ``<data_dir>/flink/jobs.json``, next
to the durable checkpoint folder.  ``resume`` (`tally job resume`) brings a job back after
the JobManager died (standalone mode has no HA store, so the restarted JobManager does not
know the job): it finds the newest *completed* checkpoint (``chk-N/_metadata``) of that
job name's recorded runs and submits with ``flink run -s <checkpoint>``, so window state
and Kafka offsets continue exactly where the checkpoint left them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

from tally.config import REPO_ROOT, TallyConfig
from tally.stack.components import Flink
from tally.stack.process import StackError

JOBS_DIR = REPO_ROOT / "jobs"
ACTIVE_STATES = ("RUNNING", "CREATED", "INITIALIZING", "RESTARTING", "CANCELLING")


def _rest(cfg: TallyConfig, path: str, method: str = "GET") -> dict:
    req = urllib.request.Request(f"{cfg.flink_rest_url}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
    except OSError as exc:
        raise StackError(f"Flink REST API at {cfg.flink_rest_url} not reachable ({exc}); run `tally stack up`")
    return json.loads(body) if body else {}


def list_jobs(cfg: TallyConfig) -> list[dict]:
    """Every job the cluster knows: id, name, status."""
    overview = _rest(cfg, "/jobs/overview")
    return [{"id": j["jid"], "name": j["name"], "status": j["state"]} for j in overview.get("jobs", [])]


def execution_config(cfg: TallyConfig, job_id: str) -> dict:
    """A job's execution config as the cluster reports it (restart strategy, parallelism...)."""
    return _rest(cfg, f"/jobs/{job_id}/config").get("execution-config", {})


def running_job(cfg: TallyConfig, name: str) -> str | None:
    """The id of a non-terminal job with this exact name, if any."""
    for job in list_jobs(cfg):
        if job["name"] == name and job["status"] in ACTIVE_STATES:
            return job["id"]
    return None


def prepare(cfg: TallyConfig) -> None:
    """Create what a job needs before it starts: the points topic and the Cassandra schema."""
    from sinks.cassandra import ensure_schema
    from tally.producer import ensure_topic

    from tally.archive import topic_configs

    # The points and late topics keep kafka_retention_hours; the archive keeps the rest.
    # Series registrations are few and needed for as long as their series live: kept.
    retention = topic_configs(cfg)
    for topic, configs in ((cfg.points_topic, retention), (cfg.series_topic, {"retention.ms": "-1"}),
                           (cfg.late_topic, retention)):
        ensure_topic(cfg, topic, partitions=cfg.kafka_partitions, replication=cfg.kafka_replication_factor,
                     configs=configs)
    ensure_schema(cfg)


def job_flags(cfg: TallyConfig) -> list[str]:
    """Command-line flags that run jobs/aggregate.py on exactly this config's topics,
    keyspace, group and tuning."""
    names = ["points_topic", "series_topic", "late_topic", "keyspace", "consumer_group", "grace_seconds",
             "source_idle_timeout_seconds", "job_parallelism", "salt_buckets", "checkpoint_interval_seconds",
             "job_object_reuse"]
    def text(value) -> str:
        return str(value).lower() if isinstance(value, bool) else str(value)

    return [arg for name in names for arg in ("--" + name.replace("_", "-"), text(getattr(cfg, name)))]


def remove_data(cfg: TallyConfig) -> None:
    """Delete a deployment's topics, keyspace and Redis keys (tests and benchmarks clean up)."""
    from sinks.cassandra import drop_keyspace
    from sinks.redis_cache import delete_keyspace_keys
    from tally.producer import delete_topic

    for topic in (cfg.points_topic, cfg.series_topic, cfg.late_topic):
        delete_topic(cfg, topic)
    drop_keyspace(cfg)
    delete_keyspace_keys(cfg)


def endpoint_env(cfg: TallyConfig) -> dict[str, str]:
    """The TALLY_* variables naming this config's stack endpoints (host, every port, the
    cluster addresses when set, replication factors and consistency): the job's client
    builds its config from them."""
    env = {"TALLY_HOST": cfg.host}
    for f in dataclasses.fields(cfg.ports):
        env[f"TALLY_{f.name.upper()}_PORT"] = str(getattr(cfg.ports, f.name))
    if cfg.kafka_bootstrap_servers:
        env["TALLY_KAFKA_BOOTSTRAP"] = cfg.kafka_bootstrap_servers
    if cfg.cassandra_contact_points:
        env["TALLY_CASSANDRA_HOSTS"] = ",".join(cfg.cassandra_contact_points)
    if cfg.redis_url_override:
        env["TALLY_REDIS_URL"] = cfg.redis_url_override
    # How the cluster is written to travels with where it is (topics, keyspace, statements).
    env["TALLY_KAFKA_REPLICATION_FACTOR"] = str(cfg.kafka_replication_factor)
    env["TALLY_CASSANDRA_REPLICATION_FACTOR"] = str(cfg.cassandra_replication_factor)
    env["TALLY_CASSANDRA_CONSISTENCY"] = cfg.cassandra_consistency
    return env


def _with_endpoints(job_cfg: TallyConfig, cfg: TallyConfig) -> TallyConfig:
    """The job's config (flags) on the submitting config's stack endpoints."""
    return dataclasses.replace(job_cfg, host=cfg.host, ports=cfg.ports,
                               kafka_bootstrap_servers=cfg.kafka_bootstrap_servers,
                               cassandra_contact_points=cfg.cassandra_contact_points,
                               redis_url_override=cfg.redis_url_override,
                               kafka_replication_factor=cfg.kafka_replication_factor,
                               cassandra_replication_factor=cfg.cassandra_replication_factor,
                               cassandra_consistency=cfg.cassandra_consistency)


def submit(cfg: TallyConfig, name: str = "aggregate", job_args: list[str] | None = None,
           wait_running_s: float = 120, from_checkpoint: str | None = None) -> str:
    """Submit jobs/<name>.py detached and wait until it is RUNNING; returns the job id.
    ``from_checkpoint``: a retained checkpoint (or savepoint) path to restore from."""
    script = JOBS_DIR / f"{name}.py"
    if not script.exists():
        raise StackError(f"no job {name!r}: expected {script}")
    job_args = list(job_args or [])
    module = _load_job_module(script)
    job_cfg = _with_endpoints(module.parse_config(job_args), cfg)
    prepare(job_cfg)
    flink_name = module.job_name(job_cfg)
    existing = running_job(cfg, flink_name)
    if existing:
        return existing
    free = _rest(cfg, "/overview").get("slots-available", 0)
    if free < job_cfg.job_parallelism:
        raise StackError(f"the job needs {job_cfg.job_parallelism} free task slot(s), the cluster has {free}: "
                         "cancel another job first (tally job list / tally job cancel ID)")
    flink = Flink()
    client_env = {**flink.env(cfg), **endpoint_env(cfg)}
    if not (Path(client_env["FLINK_LIB_DIR"]).is_dir() and Path(client_env["FLINK_CONF_DIR"], "config.yaml").exists()):
        # A cluster started from another checkout or TALLY_HOME: this one's client has no
        # lib/ and conf/ yet (the launcher writes them on `stack up`).
        flink.prepare(cfg)
    restore = ["-s", from_checkpoint] if from_checkpoint else []
    cmd = ["bash", str(flink.flink_home() / "bin" / "flink"), "run", "-d", *restore, "-py", str(script), *job_args]
    result = subprocess.run(cmd, env=client_env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    match = re.search(r"JobID ([0-9a-f]{32})", result.stdout + result.stderr)
    if result.returncode != 0 or not match:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-25:])
        raise StackError(f"flink run failed (exit {result.returncode}):\n{tail}")
    job_id = match.group(1)
    _record_run(cfg, flink_name, job_id)
    deadline = time.monotonic() + wait_running_s
    while time.monotonic() < deadline:
        job = _rest(cfg, f"/jobs/{job_id}")
        state = job.get("state")
        # Every task RUNNING (operators opened, Python workers up), not just the job: points
        # sent before would pile up into a backlog while the job warms up.
        if state == "RUNNING" and all(v.get("status") == "RUNNING" for v in job.get("vertices", [])):
            return job_id
        if state in ("FAILED", "CANCELED", "FINISHED"):
            raise StackError(f"job {job_id} ended as {state}; see `tally stack logs flink`")
        time.sleep(1)
    raise StackError(f"job {job_id} not RUNNING after {wait_running_s:.0f}s")


def _runs_file(cfg: TallyConfig) -> Path:
    return cfg.data_dir / "flink" / "jobs.json"


def _read_runs(cfg: TallyConfig) -> dict[str, list[str]]:
    try:
        return json.loads(_runs_file(cfg).read_text())
    except (OSError, ValueError):
        return {}


def _record_run(cfg: TallyConfig, flink_name: str, job_id: str) -> None:
    """Append a job id to its name's runs (oldest first) in the durable jobs file."""
    runs = _read_runs(cfg)
    runs.setdefault(flink_name, []).append(job_id)
    path = _runs_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=1))
    tmp.replace(path)


def checkpoint_dir(cfg: TallyConfig) -> Path:
    """The durable checkpoint folder of the local cluster (Flink's state.checkpoints.dir)."""
    return cfg.data_dir / "flink" / "checkpoints"


def latest_checkpoint(cfg: TallyConfig, job_ids: list[str]) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` folder holding ``_metadata``) of the
    given runs, newest run first; None if none of them completed one."""
    for job_id in reversed(job_ids):
        done = [d for d in (checkpoint_dir(cfg) / job_id).glob("chk-*") if (d / "_metadata").exists()]
        if done:
            return max(done, key=lambda d: int(d.name.split("-", 1)[1]))
    return None


def resume(cfg: TallyConfig, name: str = "aggregate", job_args: list[str] | None = None,
           wait_slots_s: float = 120) -> tuple[str, Path | None]:
    """Bring the job back from its latest completed checkpoint (after a JobManager loss).

    Returns (job id, checkpoint used); a job of that name that is still running is left
    alone (checkpoint None).  Without any completed checkpoint it refuses: a fresh start
    from the committed Kafka offsets would lose the windows open at the time of the crash
    (`tally job submit` does that; run `tally reconcile` afterwards)."""
    script = JOBS_DIR / f"{name}.py"
    if not script.exists():
        raise StackError(f"no job {name!r}: expected {script}")
    module = _load_job_module(script)
    job_cfg = _with_endpoints(module.parse_config(list(job_args or [])), cfg)
    flink_name = module.job_name(job_cfg)
    existing = running_job(cfg, flink_name)
    if existing:
        return existing, None
    checkpoint = latest_checkpoint(cfg, _read_runs(cfg).get(flink_name, []))
    if checkpoint is None:
        raise StackError(f"no completed checkpoint of {flink_name!r} under {checkpoint_dir(cfg)}; "
                         "`tally job submit` starts it fresh from the committed offsets (windows open at the "
                         "crash are lost: run `tally reconcile` for that period)")
    # A restarted JobManager gets its TaskManagers' slots back once they re-register.
    deadline = time.monotonic() + wait_slots_s
    while _rest(cfg, "/overview").get("slots-available", 0) < job_cfg.job_parallelism:
        if time.monotonic() > deadline:
            raise StackError(f"fewer than {job_cfg.job_parallelism} free task slot(s) after {wait_slots_s:.0f}s")
        time.sleep(1)
    return submit(cfg, name, job_args, from_checkpoint=checkpoint.as_uri()), checkpoint


def cancel(cfg: TallyConfig, name_or_id: str, wait_s: float = 60) -> None:
    """Cancel active jobs matching a job id or a name prefix and wait until their slots are free."""
    matched = [j for j in list_jobs(cfg) if j["status"] in ACTIVE_STATES
               and (j["id"] == name_or_id or j["name"].startswith(f"tally-{name_or_id}"))]
    if not matched:
        raise StackError(f"no running job matches {name_or_id!r}")
    for job in matched:
        _rest(cfg, f"/jobs/{job['id']}?mode=cancel", method="PATCH")
    deadline = time.monotonic() + wait_s
    ids = {j["id"] for j in matched}
    while time.monotonic() < deadline:
        if not any(j["id"] in ids and j["status"] in ACTIVE_STATES for j in list_jobs(cfg)):
            return
        time.sleep(0.5)
    raise StackError(f"jobs {sorted(ids)} still not cancelled after {wait_s:.0f}s")


def _load_job_module(script: Path):
    import importlib

    return importlib.import_module(f"jobs.{script.stem}")
