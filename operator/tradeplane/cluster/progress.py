"""Progress of the binaries' build: a live rich display on a terminal, plain timed lines in a CI log."""

from __future__ import annotations

import time
from types import TracebackType
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

# How often a CI log (no terminal) gets a line while one group compiles.
PLAIN_REPORT_SECONDS = 30.0


class BuildProgress:
    """Told what the build does; shows it. Groups are (name, version, binaries) in build order."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.overall: TaskID | None = None
        self.tasks: dict[str, TaskID] = {}
        self.labels: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.counts: dict[str, int] = {}
        self.started = time.monotonic()
        self.last_report = 0.0

    @classmethod
    def for_terminal(cls, stream: IO[str]) -> BuildProgress:
        return cls(Console(file=stream, highlight=False))

    def __enter__(self) -> BuildProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.live:
            self.progress.stop()

    def _say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        if self.live:
            self.progress.console.print(f"[{elapsed:5.0f}s] {message}")
        else:
            self.console.print(f"[{elapsed:5.0f}s] {message}", soft_wrap=True)

    def start(self, groups: list[tuple[str, str, list[str]]], source: str = "the Go module proxy") -> None:
        binaries = sum(len(names) for _, _, names in groups)
        self._say(f"building {binaries} binaries from {source} (first time only; cached by version)")
        self.overall = self.progress.add_task("binaries built", total=binaries)
        for name, version, names in groups:
            self.labels[name] = f"{', '.join(names)} {version}"
            self.sizes[name] = len(names)
            self.counts[name] = 0
            self.tasks[name] = self.progress.add_task(f"{self.labels[name]}: waiting", total=None)

    def fetching(self, group: str) -> None:
        self.progress.update(self.tasks[group], description=f"{self.labels[group]}: fetching modules")

    def fetched(self, group: str, packages: int) -> None:
        self.totals[group] = packages
        self.progress.update(
            self.tasks[group], description=f"{self.labels[group]}: modules fetched", total=packages
        )
        self._say(f"{self.labels[group]}: modules fetched, {packages} packages to compile")

    def compiling(self, group: str) -> None:
        self.progress.update(self.tasks[group], description=f"{self.labels[group]}: compiling")
        self.progress.reset(self.tasks[group], total=self.totals.get(group))
        self.last_report = time.monotonic()

    def compiled(self, group: str, package: str) -> None:
        self.counts[group] += 1
        self.progress.advance(self.tasks[group])
        if not self.live and time.monotonic() - self.last_report >= PLAIN_REPORT_SECONDS:
            self.last_report = time.monotonic()
            self._say(f"{self.labels[group]}: {self.counts[group]}/{self.totals.get(group, '?')} packages")

    def built(self, group: str, seconds: float) -> None:
        task = self.tasks[group]
        self.progress.update(task, description=f"{self.labels[group]}: built in {seconds:.0f}s")
        self.progress.update(task, completed=self.totals.get(group, self.counts[group]))
        if self.overall is not None:
            self.progress.advance(self.overall, self.sizes[group])
        self._say(f"{self.labels[group]}: built in {seconds:.0f}s")
