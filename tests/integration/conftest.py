"""Integration fixtures: the real local stack, started through the project's launcher.

The stack is reused when it is already healthy (and then left running); a stack this
session started is stopped at the end.  Each test module that needs the aggregation job
gets its own topics, keyspace and consumer group and its own job run, removed afterwards.
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


@pytest.fixture(scope="module")
def pipeline(stack_cfg):
    """(config, job id): a private topic set and keyspace with the aggregation job running.

    Idleness is off: tests move event time with watermark ticks on every partition, so a
    burst after a quiet spell can never outrun a partition marked idle."""
    from tally import jobctl

    run = uuid.uuid4().hex[:8]
    cfg = dataclasses.replace(
        stack_cfg, points_topic=f"tally.it.{run}.points", series_topic=f"tally.it.{run}.series",
        late_topic=f"tally.it.{run}.late", keyspace=f"tally_it_{run}", consumer_group=f"tally-it-{run}",
        grace_seconds=2, source_idle_timeout_seconds=0, job_parallelism=2, salt_buckets=64,
        checkpoint_interval_seconds=5,
    )
    job_id = jobctl.submit(stack_cfg, "aggregate", jobctl.job_flags(cfg))
    yield cfg, job_id
    try:
        jobctl.cancel(stack_cfg, job_id)
    finally:
        jobctl.remove_data(cfg)
