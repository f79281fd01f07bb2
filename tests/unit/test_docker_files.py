"""docker/: the compose file and Dockerfiles are consistent with the repository (no engine runs here).

Parses docker/compose.yaml and every Dockerfile it builds, and checks the references a
broken rename or a new flag would silently break: images, build targets, COPY sources,
depends_on, volumes, published ports against tally.config.Ports, the `tally` subcommands
(tally.cli's parser) and the job flags (jobs/aggregate.parse_args).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tally.cli import build_parser
from tally.config import REPO_ROOT, Ports

DOCKER = REPO_ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
# Official images the compose may pull, by repository name (tag must be pinned).
OFFICIAL = {"cassandra", "apache/kafka", "redis", "flink", "python", "maven"}
# Tally's own servers: container port -> the Ports field it must equal.
TALLY_SERVER_PORTS = {"agent": ("statsd", "agent_http"), "gateway": ("gateway",), "api": ("api",)}


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _services() -> dict:
    return _compose()["services"]


def _pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":") if ":" in image else (image, "", "")
    return name in OFFICIAL and bool(tag) and tag != "latest" and re.search(r"\d", tag) is not None


# ---------------------------------------------------------------- Dockerfile parsing


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{dockerfile}: dangling line continuation"
    return out


def _stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """Build stages by name (unnamed stages get their index) with their instructions."""
    stages: dict[str, list] = {}
    current = None
    for word, rest in _instructions(dockerfile):
        if word == "FROM":
            parts = rest.split()
            current = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages[current] = [(word, rest)]
        else:
            assert current is not None, f"{dockerfile}: {word} before the first FROM"
            stages[current].append((word, rest))
    return stages


def _json_or_shell(arg: str) -> list[str]:
    arg = arg.strip()
    return yaml.safe_load(arg) if arg.startswith("[") else shlex.split(arg)


def _copy_sources(rest: str) -> list[str]:
    parts = _json_or_shell(rest)
    parts = [p for p in parts if not p.startswith("--")]
    return parts[:-1]


def _dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def _built_dockerfiles() -> dict[str, tuple[Path, str | None]]:
    """Service -> (Dockerfile, target) for every service with a build section."""
    built = {}
    for name, svc in _services().items():
        build = svc.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == REPO_ROOT, f"{name}: build context must be the repository root, is {context}"
            built[name] = ((context / build["dockerfile"]).resolve(), build.get("target"))
    return built


# ---------------------------------------------------------------- tests


def test_compose_has_the_topology():
    services = _services()
    for expected in ("kafka-1", "kafka-2", "kafka-3", "cassandra-1", "cassandra-2", "cassandra-3", "redis",
                     "flink-jobmanager", "flink-taskmanager-1", "flink-taskmanager-2", "flink-job",
                     "agent", "gateway", "api", "tally-init"):
        assert expected in services, f"compose lacks service {expected}"
    voters = {svc["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"] for n, svc in services.items()
              if n.startswith("kafka-")}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    for n in ("kafka-1", "kafka-2", "kafka-3"):
        env = services[n]["environment"]
        assert env["KAFKA_NODE_ID"] == n[-1] and env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{n}:9092"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2" and env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
    flink_props = yaml.safe_load(services["flink-jobmanager"]["environment"]["FLINK_PROPERTIES"])
    assert flink_props["taskmanager.numberOfTaskSlots"] * 2 >= 2  # two TaskManagers carry parallelism 2


def test_every_service_has_an_image_that_is_built_or_official_and_pinned():
    built = _built_dockerfiles()
    for name, svc in _services().items():
        if name in built:
            dockerfile, target = built[name]
            assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
            if target:
                assert target in _stages(dockerfile), f"{name}: no stage {target!r} in {dockerfile.name}"
        else:
            image = svc.get("image", "")
            # A service may reuse an image another service builds (same tag).
            reused = any(_services()[b].get("image") == image for b in built)
            assert reused or _pinned(image), f"{name}: image {image!r} is neither built here nor official+pinned"


def test_same_image_tag_means_same_build():
    builds: dict[str, tuple] = {}
    for name, (dockerfile, target) in _built_dockerfiles().items():
        image = _services()[name]["image"]
        assert builds.setdefault(image, (dockerfile, target)) == (dockerfile, target), \
            f"{image} built two different ways"


def test_depends_on_names_services_with_valid_conditions():
    services = _services()
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        items = deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)
        for dep, spec in items:
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            condition = (spec or {}).get("condition", "service_started")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} healthy, {dep} has no healthcheck"


def test_long_running_services_have_health_checks():
    for name in ("kafka-1", "cassandra-1", "redis", "flink-jobmanager", "agent", "gateway", "api"):
        test = _services()[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"


def test_every_named_volume_is_declared_and_used():
    declared = set((_compose().get("volumes") or {}).keys())
    used = set()
    for name, svc in _services().items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
            if source and not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source}"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def _published(svc: dict) -> list[tuple[int, int, str]]:
    """(host port, container port, protocol) of a service's published ports."""
    out = []
    for spec in svc.get("ports", []):
        spec = str(spec)
        proto = "tcp"
        if "/" in spec:
            spec, proto = spec.split("/")
        parts = spec.split(":")
        out.append((int(parts[-2]), int(parts[-1]), proto))
    return out


def test_published_ports_are_unique_and_match_tally_defaults():
    seen = {}
    for name, svc in _services().items():
        for host, container, proto in _published(svc):
            assert (host, proto) not in seen, f"host port {host}/{proto} published by {seen.get((host, proto))} and {name}"
            seen[(host, proto)] = name
    defaults = Ports()
    for name, fields in TALLY_SERVER_PORTS.items():
        ports = {container for _, container, _ in _published(_services()[name])}
        expected = {getattr(defaults, f) for f in fields}
        assert ports == expected, f"{name} publishes {sorted(ports)}, Tally's defaults are {sorted(expected)}"
        for host, container, _ in _published(_services()[name]):
            assert host == container, f"{name}: host port {host} differs from Tally's port {container}"
    assert {c for _, c, _ in _published(_services()["flink-jobmanager"])} == {defaults.flink_rest}


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_parses_and_copies_existing_sources(dockerfile: Path):
    instructions = _instructions(dockerfile)
    assert instructions[0][0] in ("FROM", "ARG"), f"{dockerfile.name}: first instruction is {instructions[0][0]}"
    stages = _stages(dockerfile)
    for stage, body in stages.items():
        base = body[0][1].split()[0]
        assert base in stages or _pinned(base), f"{dockerfile.name} stage {stage}: base {base} not official+pinned"
        for word, rest in body:
            if word not in ("COPY", "ADD"):
                continue
            if "--from=" in rest:
                src_stage = re.search(r"--from=(\S+)", rest).group(1)
                assert src_stage in stages, f"{dockerfile.name}: COPY --from unknown stage {src_stage}"
                continue
            for src in _copy_sources(rest):
                assert (REPO_ROOT / src).exists(), f"{dockerfile.name}: COPY source {src} missing from the repo"
    final = list(stages.values())
    for stage, body in stages.items():
        words = {w for w, _ in body}
        # Every stage something runs from has a command (own or inherited from its base stage).
        base = body[0][1].split()[0]
        inherited = base in stages and ({w for w, _ in stages[base]} & {"CMD", "ENTRYPOINT"})
        if stage not in ("jars",):
            assert words & {"CMD", "ENTRYPOINT"} or inherited, f"{dockerfile.name} stage {stage}: no CMD/ENTRYPOINT"
    assert final


def test_entrypoint_script_is_copied_and_executable():
    script = DOCKER / "entrypoint.sh"
    assert script.stat().st_mode & 0o111
    assert script.read_text().startswith("#!/bin/sh")


def _stage_cmd(dockerfile: Path, target: str | None) -> list[str] | None:
    stages = _stages(dockerfile)
    name = target or list(stages)[-1]
    while True:
        cmds = [rest for w, rest in stages[name] if w == "CMD"]
        if cmds:
            return _json_or_shell(cmds[-1])
        base = stages[name][0][1].split()[0]
        if base not in stages:
            return None
        name = base


def _tally_commands():
    """Every `tally ...` command line in compose (service commands) and the Dockerfiles' CMDs."""
    commands = []
    for name, svc in _services().items():
        cmd = svc.get("command")
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        if cmd and cmd[0] == "tally":
            commands.append((f"compose {name}", cmd))
    for dockerfile in _dockerfiles():
        for stage in _stages(dockerfile):
            cmd = _stage_cmd(dockerfile, stage)
            if cmd and cmd[0] == "tally":
                commands.append((f"{dockerfile.name} {stage}", cmd))
    return commands


def test_tally_commands_are_real_subcommands_with_real_flags():
    commands = _tally_commands()
    assert {c[1] for _, c in commands} >= {"agent", "gateway", "api"}
    parser = build_parser()
    for where, cmd in commands:
        try:
            parser.parse_args(cmd[1:])
        except SystemExit:
            pytest.fail(f"{where}: `{' '.join(cmd)}` is not accepted by tally.cli")


def test_server_images_run_their_own_server():
    for name in TALLY_SERVER_PORTS:
        dockerfile, target = _built_dockerfiles()[name]
        assert _stage_cmd(dockerfile, target)[:2] == ["tally", name]
        assert _services()[name]["command"][:2] == ["tally", name]


def test_flink_job_command_uses_real_job_flags(monkeypatch):
    from jobs.aggregate import parse_args

    svc = _services()["flink-job"]
    cmd = svc["command"]
    assert cmd[:2] == ["flink", "run"] and "-py" in cmd
    script = cmd[cmd.index("-py") + 1]
    assert (REPO_ROOT / script).is_file(), f"flink-job runs {script}, which is not in the repo"
    job_args = cmd[cmd.index("-py") + 2:]
    for name in [k for k in __import__("os").environ if k.startswith("TALLY_")]:
        monkeypatch.delenv(name)
    try:
        cfg, sink = parse_args(job_args)
    except SystemExit:
        pytest.fail(f"jobs/aggregate.py rejects the compose flags {job_args}")
    assert cfg.job_parallelism == 2 and sink == "production"
    slots = yaml.safe_load(svc["environment"]["FLINK_PROPERTIES"])["taskmanager.numberOfTaskSlots"]
    taskmanagers = [n for n in _services() if n.startswith("flink-taskmanager")]
    assert slots * len(taskmanagers) >= cfg.job_parallelism


def test_flink_image_carries_pyflink_connector_and_udf_jar():
    text = (DOCKER / "flink.Dockerfile").read_text()
    assert re.search(r"^FROM flink:2\.2\.1-", text, re.M)
    assert "org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2" in text
    assert "/opt/flink/lib/tally-udf.jar" in text
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"apache-flink==2.2.1"' in pyproject  # installed into the image's venv from pyproject


def test_forwarders_point_at_services_on_their_ports():
    services = _services()
    defaults = Ports()
    own_port = {"kafka": defaults.kafka, "cassandra": defaults.cassandra_cql, "redis": defaults.redis}
    for name, svc in services.items():
        forward = (svc.get("environment") or {}).get("TALLY_FORWARD")
        if not forward:
            continue
        for spec in forward.split():
            local, target = spec.split("=")
            host, port = target.rsplit(":", 1)
            assert host in services, f"{name}: forwards to unknown service {host}"
            kind = re.sub(r"-\d+$", "", host)
            assert int(local) == int(port) == own_port[kind], f"{name}: {spec} is not {kind}'s port"


def test_python_scripts_run_by_services_exist_in_the_image():
    """`python <script>` commands (tally-init) name a file the service's image copies."""
    for name, (dockerfile, _) in _built_dockerfiles().items():
        cmd = _services()[name].get("command") or []
        if cmd[:1] == ["python"]:
            script = cmd[1]
            assert (REPO_ROOT / script).is_file(), f"{name} runs {script}, missing from the repo"
            copied = [src for w, rest in _instructions(dockerfile) if w == "COPY" and "--from=" not in rest
                      for src in _copy_sources(rest)]
            assert any(script == src or script.startswith(src.rstrip("/") + "/") for src in copied), \
                f"{name} runs {script}, which {dockerfile.name} does not copy"


def test_flink_healthcheck_tool_is_installed():
    test = " ".join(_services()["flink-jobmanager"]["healthcheck"]["test"])
    if "curl" in test:
        assert re.search(r"apt-get install[^\n]*\bcurl\b", (DOCKER / "flink.Dockerfile").read_text())
