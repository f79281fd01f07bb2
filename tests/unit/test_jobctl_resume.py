"""`tally job resume`: which checkpoint it picks, and the endpoints a job is submitted with."""

from __future__ import annotations

import dataclasses

import pytest

from tally import jobctl
from tally.config import Ports, TallyConfig


def _checkpoint(cfg, job_id, n, complete=True):
    d = jobctl.checkpoint_dir(cfg) / job_id / f"chk-{n}"
    d.mkdir(parents=True)
    if complete:
        (d / "_metadata").write_bytes(b"x")
    return d


def test_latest_completed_checkpoint_of_the_newest_run_that_has_one(tmp_path):
    cfg = TallyConfig(home=tmp_path)
    _checkpoint(cfg, "old", 40)
    assert jobctl.latest_checkpoint(cfg, ["old", "new"]) == jobctl.checkpoint_dir(cfg) / "old" / "chk-40"
    _checkpoint(cfg, "new", 9)
    _checkpoint(cfg, "new", 10)
    _checkpoint(cfg, "new", 11, complete=False)  # in progress when the JobManager died
    assert jobctl.latest_checkpoint(cfg, ["old", "new"]) == jobctl.checkpoint_dir(cfg) / "new" / "chk-10"
    assert jobctl.latest_checkpoint(cfg, []) is None


def test_runs_are_recorded_per_job_name(tmp_path):
    cfg = TallyConfig(home=tmp_path)
    jobctl._record_run(cfg, "tally-aggregate a -> b", "j1")
    jobctl._record_run(cfg, "tally-aggregate a -> b", "j2")
    jobctl._record_run(cfg, "other", "j3")
    assert jobctl._read_runs(cfg) == {"tally-aggregate a -> b": ["j1", "j2"], "other": ["j3"]}


def test_a_job_is_submitted_with_the_endpoints_of_the_config():
    cfg = dataclasses.replace(TallyConfig(), ports=dataclasses.replace(Ports(), kafka=19092, redis=16379))
    env = jobctl.endpoint_env(cfg)
    assert env["TALLY_KAFKA_PORT"] == "19092" and env["TALLY_REDIS_PORT"] == "16379"
    assert env["TALLY_HOST"] == cfg.host and "TALLY_KAFKA_BOOTSTRAP" not in env
    job = jobctl._with_endpoints(TallyConfig(grace_seconds=7), cfg)
    assert job.ports == cfg.ports and job.grace_seconds == 7


def test_a_job_on_a_cluster_config_creates_replicated_topics_and_keyspace():
    cfg = dataclasses.replace(TallyConfig(), kafka_replication_factor=3, cassandra_replication_factor=3,
                              cassandra_consistency="QUORUM", cassandra_contact_points=("127.0.0.1", "127.0.0.2"))
    env = jobctl.endpoint_env(cfg)
    assert env["TALLY_KAFKA_REPLICATION_FACTOR"] == "3" and env["TALLY_CASSANDRA_REPLICATION_FACTOR"] == "3"
    assert env["TALLY_CASSANDRA_CONSISTENCY"] == "QUORUM"
    assert TallyConfig.from_env(env).cassandra_replication_factor == 3
    job = jobctl._with_endpoints(TallyConfig(grace_seconds=7), cfg)
    assert (job.kafka_replication_factor, job.cassandra_replication_factor, job.cassandra_consistency) == (3, 3, "QUORUM")
    assert job.grace_seconds == 7


def test_job_flags_round_trip_through_the_job_parser(monkeypatch):
    """jobctl.job_flags is what `tally job submit` passes to jobs/aggregate.py: every tuning
    value, including the object-reuse switch, comes back unchanged."""
    import dataclasses

    from jobs.aggregate import parse_args

    for name in [k for k in __import__("os").environ if k.startswith("TALLY_")]:
        monkeypatch.delenv(name)
    for reuse in (True, False):
        cfg = dataclasses.replace(TallyConfig(), points_topic="Bench.Points", keyspace="ks_1", grace_seconds=3,
                                  job_parallelism=2, salt_buckets=16, job_object_reuse=reuse)
        parsed, sink = parse_args(jobctl.job_flags(cfg) + ["--sink", "discard"])
        assert sink == "discard" and parsed.job_object_reuse is reuse
        assert (parsed.points_topic, parsed.keyspace, parsed.grace_seconds, parsed.job_parallelism,
                parsed.salt_buckets) == ("Bench.Points", "ks_1", 3, 2, 16)
    with pytest.raises(SystemExit):
        parse_args(["--job-object-reuse", "maybe"])


def test_object_reuse_from_the_environment():
    assert TallyConfig.from_env({}).job_object_reuse is True
    assert TallyConfig.from_env({"TALLY_JOB_OBJECT_REUSE": "false"}).job_object_reuse is False
    with pytest.raises(ValueError, match="TALLY_JOB_OBJECT_REUSE must be true or false"):
        TallyConfig.from_env({"TALLY_JOB_OBJECT_REUSE": "maybe"})


def test_phase1_salts_follow_the_parallelism_unless_set(monkeypatch):
    """salt_buckets 0 (the default) is auto: one salt for a job of one subtask (a hot series
    has nowhere to spread), 2 x parallelism up to 16 above; a set value is kept whatever the
    parallelism."""
    import dataclasses

    from jobs.aggregate import parse_args

    for name in [k for k in __import__("os").environ if k.startswith("TALLY_")]:
        monkeypatch.delenv(name)
    auto = TallyConfig()
    assert auto.salt_buckets == 0
    assert [dataclasses.replace(auto, job_parallelism=p).phase1_salts for p in (1, 2, 3, 8, 256)] == [1, 4, 6, 16, 16]
    assert dataclasses.replace(auto, job_parallelism=1, salt_buckets=8).phase1_salts == 8
    assert TallyConfig.from_env({"TALLY_SALT_BUCKETS": "5"}).phase1_salts == 5
    with pytest.raises(ValueError, match="salt_buckets must be 0 .auto. or a positive count, got -2"):
        TallyConfig.from_env({"TALLY_SALT_BUCKETS": "-2"}).phase1_salts
    parsed, _ = parse_args(["--job-parallelism", "2"])
    assert parsed.salt_buckets == 0 and parsed.phase1_salts == 4
