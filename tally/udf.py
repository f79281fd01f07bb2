"""Tally's Java SQL functions (Maven module jobs/udf) for PyFlink jobs: build and register.

The per-point path of the aggregation job must stay in Java operators (per-record Python
costs ~20x), so sketches are built and merged by Java user-defined functions that encode
exactly like ``tally.sketch.Sketch.to_bytes()``:

============================================  ==============================================
``sketch_of(value DOUBLE[, count DOUBLE])``   BYTES: encoded sketch of one weighted value
``sketch_agg(sk BYTES)``                      aggregate, BYTES: the merge of the sketches
``sketch_quantile(sk BYTES, q DOUBLE)``       DOUBLE: quantile of an encoded sketch
``last_by_time(ts BIGINT, v DOUBLE)``         aggregate, DOUBLE: value of the largest (ts, v)
============================================  ==============================================

In a job::

    from tally.udf import register_udfs
    register_udfs(t_env)      # builds jobs/udf/target/tally-udf.jar if missing or stale

This module never imports pyflink: ``register_udfs`` only calls methods of the table
environment it is given.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml

from tally.config import REPO_ROOT

__all__ = [
    "FUNCTIONS",
    "UDF_MODULE_DIR",
    "UdfBuildError",
    "register_udfs",
    "run_maven",
    "udf_jar_path",
]

UDF_MODULE_DIR = REPO_ROOT / "jobs" / "udf"
JAR_NAME = "tally-udf.jar"  # <finalName> in jobs/udf/pom.xml

# SQL name -> Java class; registered as temporary system functions (no catalog needed).
FUNCTIONS: dict[str, str] = {
    "max_before": "dev.tally.udf.MaxBefore",
    "sketch_agg": "dev.tally.udf.SketchAgg",
    "sketch_of": "dev.tally.udf.SketchOf",
    "sketch_quantile": "dev.tally.udf.SketchQuantile",
    "last_by_time": "dev.tally.udf.LastByTime",
    "pack_buckets": "dev.tally.udf.PackBuckets",
}

_PIPELINE_JARS = "pipeline.jars"
_OUTPUT_TAIL_LINES = 40


class UdfBuildError(RuntimeError):
    """Maven is missing or the build failed; the message ends with Maven's output."""


def udf_jar_path(module_dir: Path = UDF_MODULE_DIR, *, timeout_s: float = 600) -> Path:
    """Return the path of the UDF jar, building it first when missing or stale.

    Stale means older than ``pom.xml`` or any file under ``src/main``; an up-to-date jar
    costs a few ``stat`` calls and no Maven run.  Concurrent callers (``./dev setup`` and a
    test run, say) build once, serialised by a lock file in ``target/``.
    """
    jar = module_dir / "target" / JAR_NAME
    if _is_fresh(jar, module_dir):
        return jar
    with _build_lock(module_dir):
        if not _is_fresh(jar, module_dir):  # another process may have built it meanwhile
            run_maven(["package", "-DskipTests"], module_dir, timeout_s=timeout_s)
            if not jar.is_file():
                raise UdfBuildError(f"Maven succeeded but {jar} does not exist")
    return jar


def run_maven(
    goals: Sequence[str], module_dir: Path = UDF_MODULE_DIR, *, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``mvn -q -o <goals>`` on the module, then online if offline fails.

    Offline first: it is fast and works without a network once ``~/.m2`` has the plugins;
    a fresh machine's first build needs Maven Central.  Raises UdfBuildError when Maven is
    missing or both attempts fail.
    """
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UdfBuildError("Maven (mvn) not found: install it (apt-get install maven) to build jobs/udf")
    base = [mvn, "-q", "-B", "-f", str(module_dir / "pom.xml"), *goals]
    result = None
    for offline in (True, False):
        cmd = [*base[:2], "-o", *base[2:]] if offline else base
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=module_dir)
        except subprocess.TimeoutExpired as exc:
            raise UdfBuildError(f"{' '.join(cmd)} timed out after {timeout_s:.0f}s") from exc
        if result.returncode == 0:
            return result
    tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-_OUTPUT_TAIL_LINES:])
    raise UdfBuildError(f"{' '.join(base)} failed (exit {result.returncode}), offline and online:\n{tail}")


def register_udfs(t_env, jar: Path | None = None) -> None:
    """Put the UDF jar on ``t_env``'s pipeline and register every function in FUNCTIONS.

    ``t_env`` is a PyFlink (Stream)TableEnvironment.  The jar is appended to
    ``pipeline.jars`` (jars set earlier, e.g. connectors, are kept): PyFlink then loads it
    into the client JVM, and the job ships it to the cluster, also when the job ends in
    ``env.execute()`` after ``to_data_stream`` (the planner copies the table config into the
    stream environment).  Builds the jar when ``jar`` is not given and it is missing or stale.
    """
    jar_url = (jar or udf_jar_path()).resolve().as_uri()
    config = t_env.get_config()
    jars = _parse_list(config.get(_PIPELINE_JARS, ""))
    # Set even when listed already (e.g. by env.add_jars): PyFlink's set() is what puts the
    # jar on the client's class loader, which create_java_temporary_system_function needs.
    config.set(_PIPELINE_JARS, ";".join(jars if jar_url in jars else [*jars, jar_url]))
    for name, class_name in FUNCTIONS.items():
        t_env.create_java_temporary_system_function(name, class_name)


def _parse_list(raw: str | None) -> list[str]:
    """A list option as Flink 2 reads it: a YAML list (``env.add_jars`` writes those) or
    the legacy ``a;b`` form.  Same rule as PyFlink's ``Configuration.parse_list_value``."""
    if not raw:
        return []
    if raw.lstrip().startswith("["):
        value = yaml.safe_load(raw)
        if isinstance(value, list):
            return [str(item) for item in value if item]
    return [item for item in raw.split(";") if item]


def _is_fresh(jar: Path, module_dir: Path) -> bool:
    try:
        jar_mtime = jar.stat().st_mtime
    except FileNotFoundError:
        return False
    return jar_mtime >= max(path.stat().st_mtime for path in _sources(module_dir))


def _sources(module_dir: Path) -> Iterator[Path]:
    yield module_dir / "pom.xml"
    yield from (path for path in (module_dir / "src" / "main").rglob("*") if path.is_file())


@contextmanager
def _build_lock(module_dir: Path) -> Iterator[None]:
    target = module_dir / "target"
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield
