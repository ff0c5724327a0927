"""The operator image: its build context installs the `tradeplane` command, and it agrees with the chart.

There is no Docker here, so the build stage's own step runs instead: the project is built into a wheel from
exactly the files the Dockerfile copies.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from chart.chartkit import CHART, DOCKERFILE, REPO_ROOT

from tradeplane import cli
from tradeplane.cluster import toolchain


def core_target_dir() -> Path:
    """Where scripts/bootstrap compiles the core: keyed by its locked dependencies."""
    lock = hashlib.sha256((REPO_ROOT / "core" / "Cargo.lock").read_bytes()).hexdigest()[:16]
    return toolchain.cache_dir().parent / "cargo" / f"core-{lock}"


def instructions(name: str) -> list[list[str]]:
    """The arguments of every `name` instruction of the Dockerfile."""
    lines = [line.split() for line in DOCKERFILE.read_text().splitlines()]
    return [words[1:] for words in lines if words and words[0] == name]


def ignored() -> list[str]:
    """Paths the Dockerfile's own ignore file keeps out of the build context."""
    lines = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_installs_the_tradeplane_command_without_the_development_packages(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    excluded = {REPO_ROOT / path for path in ignored() if not path.startswith("**")}

    def skip(directory: str, names: list[str]) -> set[str]:
        return {name for name in names if name == "__pycache__" or Path(directory, name) in excluded}

    for *sources, destination in (args for args in instructions("COPY") if not args[0].startswith("--from")):
        for source in sources:
            target = context / (source if destination in ("./", ".") else destination)
            if (REPO_ROOT / source).is_dir():
                shutil.copytree(REPO_ROOT / source, target, ignore=skip)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO_ROOT / source, target)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            context,
        ],
        check=True,
        capture_output=True,
        # The core's crates come compiled from scripts/bootstrap's cache: only the core itself compiles.
        env={**os.environ, "CARGO_TARGET_DIR": str(core_target_dir())},
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tradeplane-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tradeplane/cli.py" in names
    # The operator imports the wire codec (routing tables, sessions): the image carries the compiled core.
    assert [name for name in names if name.startswith("tradeplane_services/_wire.") and name.endswith(".so")]
    assert not [name for name in names if name.startswith(("tradeplane/cluster/", "tradeplane/demo/"))]
    (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    (entrypoint,) = instructions("ENTRYPOINT")
    command = entrypoint[0].strip('[]"')
    assert f"{command} = tradeplane.cli:main" in scripts


def test_image_user_and_ports_are_the_charts() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (user,) = instructions("USER")
    uid, gid = (int(part) for part in user[0].split(":"))
    assert (uid, gid) == (values["securityContext"]["runAsUser"], values["securityContext"]["runAsGroup"])
    assert uid == values["podSecurityContext"]["runAsUser"]
    (exposed,) = instructions("EXPOSE")
    assert sorted(int(port) for port in exposed) == sorted(
        [values["health"]["port"], values["metrics"]["port"]]
    )


def test_chart_app_version_is_the_project_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def test_the_command_works_without_the_development_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "tradeplane.cluster.commands", raising=False)
    for package in ("tradeplane.cluster", "tradeplane.demo"):
        monkeypatch.setitem(sys.modules, package, None)  # as absent as in the image: imports fail
    commands = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"operator", "promote", "abort"} <= set(commands) and not {"cluster", "demo"} & set(commands)
