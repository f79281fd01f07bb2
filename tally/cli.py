"""The `tally` command line: local stack, job submission, demo traffic."""

from __future__ import annotations

import argparse
import sys

from tally.config import TallyConfig
from tally.stack.process import StackError


def _stack(args, cfg: TallyConfig) -> int:
    from tally.stack import launcher

    if (args.topology or cfg.stack_topology) == "multi":
        import os

        from tally.stack import topology

        cfg = topology.multi_config(os.environ)
    if args.action == "env":  # eval "$(tally stack env --topology multi)": other commands reach it
        from tally.stack import topology

        for name, value in sorted(topology.stack_env(cfg).items()):
            print(f"export {name}='{value}'")
        return 0
    if args.action == "up":
        launcher.up(cfg, args.components, timeout_s=args.timeout)
    elif args.action == "down":
        launcher.down(cfg, args.components)
    elif args.action == "fetch":
        launcher.fetch_all(cfg)
    elif args.action == "logs":
        print(launcher.logs(cfg, args.components, args.lines))
    else:
        rows = launcher.status(cfg, args.components)
        for name, ok, detail in rows:
            print(f"{name:10s} {'healthy' if ok else 'DOWN':8s} {detail}")
        return 0 if all(ok for _, ok, _ in rows) else 1
    return 0


def _job(args, cfg: TallyConfig) -> int:
    from tally import jobctl

    if args.action == "submit":
        job_id = jobctl.submit(cfg, args.name, args.job_args)
        print(f"submitted {args.name}: job id {job_id} (Flink UI {cfg.flink_rest_url})")
    elif args.action == "list":
        for job in jobctl.list_jobs(cfg):
            print(f"{job['id']}  {job['status']:10s} {job['name']}")
    elif args.action == "cancel":
        jobctl.cancel(cfg, args.name)
        print(f"cancelled {args.name}")
    elif args.action == "resume":
        job_id, checkpoint = jobctl.resume(cfg, args.name, args.job_args)
        print(f"resumed {args.name} from {checkpoint}: job id {job_id}" if checkpoint
              else f"{args.name} is running: job id {job_id}")
    return 0


def _gateway(args, cfg: TallyConfig) -> int:
    from tally.gateway import server

    return server.main(cfg, listen_host=args.listen)


def _api(args, cfg: TallyConfig) -> int:
    from tally.api import app

    app.run(cfg, use_redis=not args.no_redis)
    return 0


def _demo(args, cfg: TallyConfig) -> int:
    from tally import demo

    return demo.main(cfg, seconds=args.seconds, rate_per_s=args.rate)


def _buckets(args, cfg: TallyConfig) -> int:
    from tally.cql import connect
    from tally.sketch import Sketch
    from tally.tiers import tier_by_name

    tier = tier_by_name(args.tier)
    cluster, session = connect(cfg)
    try:
        if args.name:
            names = [args.name]
        else:
            rows = session.execute(f"SELECT DISTINCT tenant, name FROM {cfg.keyspace}.series")
            names = sorted(r.name for r in rows if r.tenant == args.tenant)
        shown = 0
        for name in names:
            for s in session.execute(
                f"SELECT sid, series FROM {cfg.keyspace}.series WHERE tenant = %s AND name = %s",
                (args.tenant, name),
            ):
                newest = None
                for part in _recent_partitions(tier):
                    newest = newest or session.execute(
                        f"SELECT ts, count, sum, min, max, last, sketch FROM {cfg.keyspace}.buckets_{tier.name} "
                        "WHERE tenant = %s AND sid = %s AND part = %s ORDER BY ts DESC LIMIT 1",
                        (args.tenant, s.sid, part),
                    ).one()
                if newest and shown < args.limit:
                    quantiles = ""
                    if newest.sketch:
                        sketch = Sketch.from_bytes(newest.sketch)
                        quantiles = f" p50={sketch.quantile(0.5):.4g} p99={sketch.quantile(0.99):.4g}"
                    print(f"{s.series:60s} {tier.name} bucket {newest.ts}: count={newest.count:g} "
                          f"sum={newest.sum:g} min={newest.min:g} max={newest.max:g} last={newest.last:g}{quantiles}")
                    shown += 1
        print(f"({shown} series shown from {cfg.keyspace}.buckets_{tier.name})")
    finally:
        cluster.shutdown()
    return 0


def _agent(args, cfg: TallyConfig) -> int:
    import dataclasses

    from tally.agent import server

    overrides = {k: v for k, v in (("agent_workers", args.workers), ("agent_tenant", args.tenant)) if v is not None}
    return server.main(dataclasses.replace(cfg, **overrides))


def _archive(args, cfg: TallyConfig) -> int:
    import dataclasses
    import threading

    from tally import archive

    if args.archive_uri:
        cfg = dataclasses.replace(cfg, archive_uri=args.archive_uri)
    print(f"archiving {cfg.points_topic} to {archive.archive_location(cfg)}" + (" (drain and exit)" if args.once else ""),
          flush=True)
    stop = threading.Event()
    try:
        stats = archive.run(cfg, once=args.once, stop=stop)
    except KeyboardInterrupt:  # archive.run flushed and committed what it had read
        return 130
    print(stats.summary())
    return 0


def _reconcile(args, cfg: TallyConfig) -> int:
    from reconcile import ReconcileError, job

    try:
        return job.execute(args, cfg)
    except ReconcileError as exc:
        print(f"tally: {exc}", file=sys.stderr)
        return 2


def _recent_partitions(tier) -> tuple[int, ...]:
    import time

    now_ms = int(time.time() * 1000)
    current = now_ms - now_ms % tier.partition_ms
    return (current, current - tier.partition_ms)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tally", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the embedded local stack (Kafka, Cassandra, Redis, Flink)")
    stack.add_argument("action", choices=["up", "down", "status", "logs", "fetch", "env"],
                       help="env: print the TALLY_* exports that point other commands at this stack")
    stack.add_argument("--topology", choices=["single", "multi"], default=None,
                       help="multi: 3 Cassandra nodes, 3 Kafka brokers, 2 TaskManagers on 127.0.0.1-3 with their "
                            "own home and ports (default: TALLY_STACK_TOPOLOGY, else single)")
    stack.add_argument("components", nargs="*", help="kafka, cassandra, redis, flink (default: all)")
    stack.add_argument("--timeout", type=float, default=240, help="seconds `up` waits for health")
    stack.add_argument("--lines", type=int, default=40, help="log lines per process for `logs`")
    stack.set_defaults(func=_stack)

    job = sub.add_parser("job", help="submit, list and cancel Flink jobs on the local cluster")
    job.add_argument("action", choices=["submit", "list", "cancel", "resume"],
                     help="resume: submit again from the latest completed checkpoint (after a JobManager loss)")
    job.add_argument("name", nargs="?", default="aggregate", help="job module under jobs/ (default aggregate)")
    job.add_argument("job_args", nargs=argparse.REMAINDER, help="arguments passed to the job's main()")
    job.set_defaults(func=_job)

    gateway = sub.add_parser("gateway", help="HTTP ingest gateway: Prometheus remote_write and JSON push "
                                             "(port TALLY_GATEWAY_PORT, keys TALLY_API_KEYS_FILE)")
    gateway.add_argument("--listen", help="address to listen on (default: the config's host)")
    gateway.set_defaults(func=_gateway)

    api = sub.add_parser("api", help="Prometheus-compatible query API (PromQL subset) on the configured api port "
                                     "(TALLY_API_PORT)")
    api.add_argument("--no-redis", action="store_true", help="read every bucket from Cassandra (no Redis reads)")
    api.set_defaults(func=_api)

    demo = sub.add_parser("demo", help="send demo traffic and print the buckets it produced")
    demo.add_argument("--seconds", type=float, default=30)
    demo.add_argument("--rate", type=float, default=200, help="points per second")
    demo.set_defaults(func=_demo)

    buckets = sub.add_parser("buckets", help="print the newest bucket of each series of a tenant")
    buckets.add_argument("--tenant", default="demo")
    buckets.add_argument("--name", help="metric name (default: all of the tenant's metrics)")
    buckets.add_argument("--tier", default="10s")
    buckets.add_argument("--limit", type=int, default=20)
    buckets.set_defaults(func=_buckets)

    agent = sub.add_parser("agent", help="StatsD/DogStatsD agent: UDP/TCP/Unix socket in, 1 s aggregates to Kafka")
    agent.add_argument("--workers", type=int, help="worker processes (default: config agent_workers)")
    agent.add_argument("--tenant", help="tenant of the received series (default: config agent_tenant)")
    agent.set_defaults(func=_agent)

    archive = sub.add_parser("archive", help="archive the points topic into hourly files (loop; --once drains and exits)")
    archive.add_argument("--once", action="store_true", help="archive what the topic holds now, then exit")
    archive.add_argument("--archive-uri", help="folder or s3://bucket/prefix (default TALLY_ARCHIVE_URI or data/archive)")
    archive.set_defaults(func=_archive)

    reconcile = sub.add_parser("reconcile", help="recompute a day from the archive (Flink batch), repair drifted buckets")
    from reconcile.job import add_arguments as add_reconcile_arguments

    add_reconcile_arguments(reconcile)
    reconcile.set_defaults(func=_reconcile)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tally.relabel import RelabelError

    args = build_parser().parse_args(argv)
    cfg = TallyConfig.from_env()
    try:
        return args.func(args, cfg)
    except StackError as exc:
        print(f"tally: {exc}", file=sys.stderr)
        return 2
    except RelabelError as exc:  # a bad relabel rule file (agent, gateway): say which rule and field
        print(f"tally: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
