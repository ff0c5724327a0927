"""Run the program through the real Pulumi CLI and engine without the Python language host.

A Pulumi installation ships `pulumi-language-python`, the plugin that starts `__main__.py`. That host is
not published as a Go module, so the set-up command cannot build it, while it does build the CLI and the
Kubernetes provider (`tradeplane.cluster.toolchain`). The Automation
API's inline programs need no host: this process serves the language runtime and the CLI connects to it
(`pulumi up --client=...`); the engine, the providers and the policy packs run as they always do.

    python -m tradeplane_infra.automation up --stack local --policy-pack policy/__main__.py

The engine runs a policy pack directory through the language host too, so the pack is given as its
executable (see policy/__main__.py).

The backend and the passphrase come from the environment as for `pulumi` itself (`pulumi login`,
`PULUMI_BACKEND_URL`, `PULUMI_CONFIG_PASSPHRASE`). The last line printed is the engine's summary of
resource operations as JSON, e.g. `{"create": 9}`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pulumi import automation as auto

from tradeplane.cluster import toolchain
from tradeplane_infra.settings import INFRA_DIR, NAMESPACE

COMMANDS = ("preview", "up", "destroy")
DEFAULT_PROGRAM = "tradeplane_infra.program:main"


def load_program(reference: str) -> Callable[[], None]:
    """`module:function` to the function."""
    module, _, function = reference.partition(":")
    if not module or not function:
        raise ValueError(f"--program: {reference!r} is not of the form module:function")
    try:
        program: Callable[[], None] = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--program: {reference!r}: {error}") from None
    return program


def select_stack(stack: str, project_dir: Path, program: Callable[[], None]) -> auto.Stack:
    """The stack of the project in `project_dir` (created when new), running `program` inline."""
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text())["name"]
    return auto.create_or_select_stack(
        stack_name=stack,
        project_name=project,
        program=program,
        opts=auto.LocalWorkspaceOptions(
            work_dir=str(project_dir),
            # Runs root/bin/pulumi with root/bin first on PATH, where the engine finds its plugins;
            # next comes this interpreter's, so an executable policy pack runs in this environment.
            pulumi_command=auto.PulumiCommand(root=str(toolchain.pulumi_root())),
            env_vars={"PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])},
        ),
    )


def run(
    command: str,
    stack: auto.Stack,
    policy_packs: Sequence[str],
    config_file: str | None,
    expect_no_changes: bool,
) -> dict[str, int]:
    """Runs one CLI command, streaming its output; returns the counts of resource operations."""
    if command == "preview":
        changes = stack.preview(
            on_output=print,
            policy_packs=list(policy_packs),
            config_file=config_file,
            expect_no_changes=expect_no_changes,
        ).change_summary
    elif command == "up":
        changes = (
            stack.up(
                on_output=print,
                policy_packs=list(policy_packs),
                config_file=config_file,
                expect_no_changes=expect_no_changes,
            ).summary.resource_changes
            or {}
        )
    else:
        changes = stack.destroy(on_output=print, config_file=config_file).summary.resource_changes or {}
    # Typed as OpType, but parsed from the engine's JSON events: plain strings.
    return {str(operation): count for operation, count in changes.items()}


@dataclass(frozen=True)
class ScratchProject:
    """infra/'s project copied into a folder of its own, logged in to a file backend inside it: stacks
    that touch neither the checkout's stack files nor ~/.pulumi. Commands run in a child process."""

    directory: Path
    env: dict[str, str]

    @classmethod
    def create(cls, directory: Path, passphrase: str, env: Mapping[str, str]) -> ScratchProject:
        (directory / "state").mkdir(parents=True)
        shutil.copy(INFRA_DIR / "Pulumi.yaml", directory)
        project = cls(
            directory,
            {
                **env,
                "PULUMI_HOME": str(directory / "home"),
                "PULUMI_CONFIG_PASSPHRASE": passphrase,
                "PULUMI_SKIP_UPDATE_CHECK": "true",
            },
        )
        login = [str(toolchain.pulumi_root() / "bin" / "pulumi"), "login", f"file://{directory / 'state'}"]
        subprocess.run(login, env=project.env, check=True, capture_output=True)
        return project

    def configure(self, stack: str, **values: Any) -> None:
        """Stack config: infra/Pulumi.<stack>.yaml with these `tradeplane:*` values over it."""
        document = yaml.safe_load((INFRA_DIR / f"Pulumi.{stack}.yaml").read_text())
        document["config"].update({f"{NAMESPACE}:{key}": value for key, value in values.items()})
        (self.directory / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump(document))

    def __call__(self, command: str, *args: str, stack: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", __name__, command, "--stack", stack, "--cwd", str(self.directory), *args],
            env=self.env,
            capture_output=True,
            text=True,
        )

    def run(self, command: str, *args: str, stack: str) -> dict[str, int]:
        """Runs a command that must succeed; returns its counts of resource operations."""
        result = self(command, *args, stack=stack)
        if result.returncode != 0:
            raise RuntimeError(f"{command} failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
        changes: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
        return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradeplane_infra.automation", description=__doc__)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--stack", required=True)
    parser.add_argument("--cwd", type=Path, default=INFRA_DIR, help="the project directory (Pulumi.yaml)")
    parser.add_argument("--policy-pack", action="append", default=[], help="a policy pack directory")
    parser.add_argument("--config-file", help="stack configuration file instead of Pulumi.<stack>.yaml")
    parser.add_argument("--expect-no-changes", action="store_true", help="fail if anything would change")
    parser.add_argument("--program", default=DEFAULT_PROGRAM, help="module:function declaring the resources")
    args = parser.parse_args(argv)
    project_dir = args.cwd.resolve()
    policy_packs = [str(Path(pack).resolve()) for pack in args.policy_pack]
    config_file = str(Path(args.config_file).resolve()) if args.config_file else None
    try:
        program = load_program(args.program)
    except ValueError as error:
        parser.error(str(error))
    # The providers run in the project directory and resolve the program's relative paths (the chart)
    # from there, as under `pulumi up`; an inline program runs in this process, so it must run there too.
    os.chdir(project_dir)
    try:
        stack = select_stack(args.stack, project_dir, program)
        changes = run(args.command, stack, policy_packs, config_file, args.expect_no_changes)
    except (auto.CommandError, toolchain.ToolchainError) as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(changes, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
