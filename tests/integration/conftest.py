"""Integration fixtures: the real local stack, started through the project's launcher.

The stack is reused when its processes are already running (and then left running, even
if a health check is slow); only components this session started are stopped at the end.  Each test module that needs the aggregation job
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
    # Components with a live process belong to whoever started them (another session, or a
    # test restarting one of them): this session waits for them and never stops them.  A
    # slow health check on a busy machine must not make a session stop a shared stack.
    preexisting = launcher.running(cfg)
    launcher.up(cfg, timeout_s=300)
    yield cfg
    started = [name for name in launcher.running(cfg) if name not in preexisting]
    if started:
        launcher.down(cfg, started)


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
