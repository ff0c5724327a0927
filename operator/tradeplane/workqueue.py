"""A keyed work queue: at most one run per key at a time, triggers coalesced, retries backed off.

Many events (the resource, each child, each pod) trigger the reconcile of one TradingService. A key
added while its work runs is run once more afterwards, however many times it was added; a key added while
idle runs at once. The work answers when it wants to run again (a rollout's clock, a placement retry);
a failure retries with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
logger = logging.getLogger(__name__)


@dataclass
class _State:
    running: bool = False
    dirty: bool = False
    failures: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class WorkQueue(Generic[Key]):
    def __init__(
        self,
        work: Callable[[Key], Awaitable[float | None]],
        *,
        concurrency: int = 16,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        on_error: Callable[[Key, BaseException], None] | None = None,
    ) -> None:
        self._work = work
        self._slots = asyncio.Semaphore(concurrency)
        self._states: dict[Key, _State] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._on_error = on_error

    def add(self, key: Key) -> None:
        """Run the work for `key` now, or once more right after its current run."""
        state = self._states.setdefault(key, _State())
        if state.timer is not None:
            state.timer.cancel()
            state.timer = None
        if state.running:
            state.dirty = True
            return
        state.running = True
        task = asyncio.create_task(self._run(key, state), name=f"reconcile {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def add_after(self, key: Key, delay: float) -> None:
        """Run the work for `key` in `delay` seconds, unless something runs it sooner."""
        state = self._states.setdefault(key, _State())
        if state.timer is not None:
            state.timer.cancel()
        state.timer = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def forget(self, key: Key) -> None:
        state = self._states.get(key)
        if state is not None and not state.running:
            if state.timer is not None:
                state.timer.cancel()
            del self._states[key]

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    async def stop(self) -> None:
        for state in self._states.values():
            if state.timer is not None:
                state.timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _fire(self, key: Key) -> None:
        state = self._states.get(key)
        if state is not None:
            state.timer = None
            self.add(key)

    async def _run(self, key: Key, state: _State) -> None:
        again: float | None = None
        try:
            while True:
                state.dirty = False
                async with self._slots:
                    try:
                        again = await self._work(key)
                        state.failures = 0
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:
                        state.failures += 1
                        again = min(self._max_backoff, self._backoff * 2 ** (state.failures - 1))
                        if self._on_error is not None:
                            self._on_error(key, error)
                        else:
                            logger.exception("work for %s failed; retrying in %.1fs", key, again)
                if not state.dirty:
                    break
        finally:
            state.running = False
        if again is not None and self._states.get(key) is state:
            self.add_after(key, again)
