"""Prerequisite checks and jar downloads for the local stack.

Jars come from Maven Central through Maven itself (so ~/.m2 is a second-level cache a
fresh clone reuses); each component's jars are copied under ``<home>/cache/lib/<name>``.
A marker file holding the POM's digest makes the fetch idempotent and notices POM edits.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

from tally.config import TallyConfig
from tally.stack.process import StackError

MAVEN_DIR = Path(__file__).resolve().parent / "maven"
COMPONENT_POMS = ("kafka", "cassandra", "flink")


def require_java() -> str:
    """Path of a Java 17+ `java`, or a one-line StackError saying how to get one."""
    java = shutil.which("java")
    if not java:
        raise StackError("java not found: install Java 17 (apt-get install openjdk-17-jdk-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)', out)
    if not match or int(match.group(1)) < 17:
        raise StackError(f"Java 17 or newer is required, found: {out.splitlines()[0] if out else '?'}")
    return java


def require_maven() -> str:
    """Path of `mvn`, or a one-line StackError saying how to get it."""
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError("mvn not found: install Maven (apt-get install maven), it fetches the stack's jars")
    return mvn


def require_redis() -> str:
    """Path of `redis-server`, or a one-line StackError naming the setup step."""
    server = shutil.which("redis-server")
    if not server:
        raise StackError("redis-server not found: run ./dev setup (or apt-get install redis-server)")
    return server


def lib_dir(cfg: TallyConfig, component: str) -> Path:
    """Where a component's jars live once fetched."""
    return cfg.cache_dir / "lib" / component


def fetch(cfg: TallyConfig, component: str, log=print) -> Path:
    """Resolve a component's jars from Maven Central (no-op when already cached)."""
    pom = MAVEN_DIR / f"{component}.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    target = lib_dir(cfg, component)
    marker = target / ".fetched"
    if marker.exists() and marker.read_text() == digest:
        return target
    mvn = require_maven()
    log(f"  fetching {component} jars from Maven Central ...")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={target}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stdout + result.stderr).strip().splitlines()[-3:]
        raise StackError(f"maven could not fetch {component} jars: {' | '.join(last)}")
    marker.write_text(digest)
    return target


def classpath(cfg: TallyConfig, component: str) -> str:
    """The ':'-joined classpath of a fetched component's jars."""
    jars = sorted(lib_dir(cfg, component).glob("*.jar"))
    if not jars:
        raise StackError(f"no jars for {component}: run `tally stack fetch`")
    return ":".join(str(j) for j in jars)
