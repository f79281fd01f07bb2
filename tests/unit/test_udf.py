"""tally.udf without a JVM or Maven: registration, jar staleness, import boundary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tally import udf


class FakeConfig:
    def __init__(self, values: dict[str, str]):
        self.values = values

    def get(self, key: str, default: str) -> str:
        return self.values.get(key, default)

    def set(self, key: str, value: str) -> "FakeConfig":
        self.values[key] = value
        return self


class FakeTableEnv:
    def __init__(self, jars: str | None = None):
        self.config = FakeConfig({} if jars is None else {"pipeline.jars": jars})
        self.functions: dict[str, str] = {}

    def get_config(self) -> FakeConfig:
        return self.config

    def create_java_temporary_system_function(self, name: str, class_name: str) -> None:
        self.functions[name] = class_name


def test_register_udfs_appends_the_jar_and_registers_every_function(tmp_path):
    jar = tmp_path / "tally-udf.jar"
    t_env = FakeTableEnv(jars="file:///opt/kafka.jar")
    udf.register_udfs(t_env, jar)
    udf.register_udfs(t_env, jar)  # idempotent: the jar is listed once
    assert t_env.config.values["pipeline.jars"] == f"file:///opt/kafka.jar;{jar.resolve().as_uri()}"
    assert t_env.functions == udf.FUNCTIONS
    assert set(udf.FUNCTIONS) == {"sketch_agg", "sketch_of", "sketch_quantile", "last_by_time", "max_before",
                                  "pack_buckets"}


def test_register_udfs_reads_yaml_list_jars_as_written_by_env_add_jars(tmp_path):
    jar = tmp_path / "tally-udf.jar"
    t_env = FakeTableEnv(jars=f"['file:///opt/kafka.jar', '{jar.resolve().as_uri()}']")
    udf.register_udfs(t_env, jar)
    assert t_env.config.values["pipeline.jars"] == f"file:///opt/kafka.jar;{jar.resolve().as_uri()}"


def test_every_registered_class_has_a_java_source():
    java = udf.UDF_MODULE_DIR / "src" / "main" / "java"
    for class_name in udf.FUNCTIONS.values():
        assert (java / (class_name.replace(".", "/") + ".java")).is_file(), class_name


def _module(tmp_path: Path) -> tuple[Path, Path, Path]:
    source = tmp_path / "src" / "main" / "java" / "X.java"
    source.parent.mkdir(parents=True)
    source.write_text("class X {}")
    (tmp_path / "pom.xml").write_text("<project/>")
    jar = tmp_path / "target" / udf.JAR_NAME
    jar.parent.mkdir()
    return tmp_path, source, jar


def test_jar_is_stale_when_missing_or_older_than_any_source(tmp_path):
    module, source, jar = _module(tmp_path)
    assert not udf._is_fresh(jar, module)
    jar.write_bytes(b"jar")
    os.utime(jar, (1_000, 1_000))
    assert not udf._is_fresh(jar, module)
    os.utime(source, (500, 500))
    os.utime(module / "pom.xml", (500, 500))
    assert udf._is_fresh(jar, module)
    os.utime(module / "pom.xml", (2_000, 2_000))
    assert not udf._is_fresh(jar, module)


def test_up_to_date_jar_is_returned_without_maven(tmp_path, monkeypatch):
    module, source, jar = _module(tmp_path)
    jar.write_bytes(b"jar")
    os.utime(source, (500, 500))
    os.utime(module / "pom.xml", (500, 500))

    def no_maven(*args, **kwargs):
        raise AssertionError("Maven must not run for an up-to-date jar")

    monkeypatch.setattr(udf, "run_maven", no_maven)
    assert udf.udf_jar_path(module) == jar


def test_missing_maven_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(udf.shutil, "which", lambda name: None)
    with pytest.raises(udf.UdfBuildError, match="Maven"):
        udf.run_maven(["package"], tmp_path)


def test_importing_tally_udf_does_not_import_pyflink():
    code = "import sys, tally.udf; sys.exit('pyflink' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_maven_runs_offline_first_then_online(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0 if len(calls) == 2 else 1, "", "offline: not cached")

    monkeypatch.setattr(udf.shutil, "which", lambda name: "/usr/bin/mvn")
    monkeypatch.setattr(udf.subprocess, "run", fake_run)
    assert udf.run_maven(["package"], tmp_path).returncode == 0
    assert "-o" in calls[0] and "-o" not in calls[1]
    assert calls[1][-1] == "package"

    calls.clear()
    monkeypatch.setattr(udf.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or subprocess.CompletedProcess(cmd, 1, "", "BUILD FAILURE"))
    with pytest.raises(udf.UdfBuildError, match="BUILD FAILURE"):
        udf.run_maven(["package"], tmp_path)
    assert len(calls) == 2
