"""Reconciliation edge cases on the real Cassandra: a keyspace made before ``repaired_ms``
existed gets the column, a period without archive files recomputes nothing and says so,
and a missing keyspace is a one-line error before any Flink work."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from reconcile import ReconcileError, job
from reconcile.store import BucketStore
from sinks.cassandra import drop_keyspace, ensure_schema
from tally.cql import connect
from tally.tiers import DEFAULT_TIERS

pytestmark = pytest.mark.integration


@pytest.fixture
def keyspace_cfg(stack_cfg, tmp_path):
    cfg = dataclasses.replace(stack_cfg, home=tmp_path / "home", keyspace=f"tally_it_{uuid.uuid4().hex[:8]}",
                              archive_uri=str(tmp_path / "archive"), archive_group=f"tally-it-{uuid.uuid4().hex[:8]}")
    ensure_schema(cfg)
    yield cfg
    drop_keyspace(cfg)


def test_old_keyspace_gets_the_marker_column_and_empty_period_is_reported(keyspace_cfg):
    cfg = keyspace_cfg
    cluster, session = connect(cfg)
    try:
        for tier in ("1s", "1d"):  # as created before the column existed
            session.execute(f"ALTER TABLE {cfg.keyspace}.buckets_{tier} DROP repaired_ms")
    finally:
        cluster.shutdown()
    store = BucketStore(cfg, DEFAULT_TIERS)
    try:
        assert sorted(store.ensure_marker_column()) == ["buckets_1d", "buckets_1s"]
        assert store.ensure_marker_column() == []
    finally:
        store.close()

    report, path = job.run(cfg, job.Period(dt.date(2020, 1, 1), (1,)))
    assert (report.checked, report.missing, report.repaired) == (0, 0, 0)
    assert report.notes and "no archive folder" in report.notes[0]
    assert path.is_file()


def test_missing_keyspace_is_a_clear_error(stack_cfg, tmp_path):
    cfg = dataclasses.replace(stack_cfg, home=tmp_path, keyspace="tally_it_does_not_exist")
    with pytest.raises(ReconcileError, match="tally_it_does_not_exist.buckets_1s does not exist"):
        job.run(cfg, job.Period(dt.date(2020, 1, 1), (1,)))
