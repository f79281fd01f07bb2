"""Integration fixtures: the real local stack, started through the project's launcher.

The stack is reused when it is already healthy (and then left running); a stack this
session started is stopped at the end.  Each test run gets its own topic, keyspace and
consumer group, and removes them afterwards.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from tally.config import TallyConfig
from tally.stack import launcher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def stack_cfg() -> TallyConfig:
    cfg = TallyConfig.from_env()
    already_up = all(ok for _, ok, _ in launcher.status(cfg))
    if not already_up:
        launcher.up(cfg, timeout_s=300)
    yield cfg
    if not already_up:
        launcher.down(cfg)


@pytest.fixture(scope="session")
def pipeline_cfg(stack_cfg):
    """A private topic / keyspace / group, with the aggregation job running on them."""
    from sinks.cassandra import drop_keyspace
    from tally import jobctl
    from tally.producer import delete_topic

    run = uuid.uuid4().hex[:8]
    cfg = dataclasses.replace(
        stack_cfg, points_topic=f"tally.it.{run}", keyspace=f"tally_it_{run}",
        consumer_group=f"tally-it-{run}", grace_seconds=2, source_idle_timeout_seconds=2,
    )
    job_args = ["--topic", cfg.points_topic, "--keyspace", cfg.keyspace, "--consumer-group", cfg.consumer_group,
                "--grace-seconds", str(cfg.grace_seconds),
                "--source-idle-timeout-seconds", str(cfg.source_idle_timeout_seconds)]
    job_id = jobctl.submit(stack_cfg, "aggregate", job_args)
    yield dataclasses.replace(cfg), job_id
    try:
        jobctl.cancel(stack_cfg, job_id)
    finally:
        delete_topic(stack_cfg, cfg.points_topic)
        drop_keyspace(cfg)
