"""The keyed work queue: one run per key at a time, coalesced triggers, requeues and backoff."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

from tradeplane.workqueue import WorkQueue


async def settle(queue: WorkQueue[str], seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
    while queue.busy:
        await asyncio.sleep(0.01)


def test_triggers_during_a_run_coalesce_into_one_more_run() -> None:
    async def scenario() -> Counter[str]:
        runs: Counter[str] = Counter()
        gate = asyncio.Event()

        async def work(key: str) -> float | None:
            runs[key] += 1
            await gate.wait()
            return None

        queue: WorkQueue[str] = WorkQueue(work)
        queue.add("a")
        await asyncio.sleep(0.01)
        for _ in range(5):
            queue.add("a")
        gate.set()
        await settle(queue)
        return runs

    assert asyncio.run(scenario()) == Counter({"a": 2})


def test_one_run_per_key_at_a_time_but_keys_run_side_by_side() -> None:
    async def scenario() -> tuple[int, int]:
        running: Counter[str] = Counter()
        most_per_key = 0
        most_overall = 0

        async def work(key: str) -> float | None:
            nonlocal most_per_key, most_overall
            running[key] += 1
            most_per_key = max(most_per_key, running[key])
            most_overall = max(most_overall, sum(running.values()))
            await asyncio.sleep(0.02)
            running[key] -= 1
            return None

        queue: WorkQueue[str] = WorkQueue(work, concurrency=4)
        for _ in range(3):
            for key in "abcd":
                queue.add(key)
            await asyncio.sleep(0.005)
        await settle(queue)
        return most_per_key, most_overall

    assert asyncio.run(scenario()) == (1, 4)


def test_the_work_asks_to_run_again_later() -> None:
    async def scenario() -> int:
        runs = 0

        async def work(key: str) -> float | None:
            nonlocal runs
            runs += 1
            return 0.02 if runs < 3 else None

        queue: WorkQueue[str] = WorkQueue(work)
        queue.add("a")
        await asyncio.sleep(0.2)
        return runs

    assert asyncio.run(scenario()) == 3


def test_a_trigger_runs_a_waiting_key_at_once() -> None:
    async def scenario() -> int:
        runs = 0

        async def work(key: str) -> float | None:
            nonlocal runs
            runs += 1
            return 60.0

        queue: WorkQueue[str] = WorkQueue(work)
        queue.add("a")
        await asyncio.sleep(0.01)
        queue.add("a")
        await asyncio.sleep(0.01)
        await queue.stop()
        return runs

    assert asyncio.run(scenario()) == 2


def test_failures_retry_with_growing_backoff_and_are_reported() -> None:
    async def scenario() -> tuple[list[float], list[str]]:
        started: list[float] = []
        errors: list[str] = []
        loop = asyncio.get_running_loop()

        async def work(key: str) -> float | None:
            started.append(loop.time())
            if len(started) < 3:
                raise RuntimeError(f"attempt {len(started)}")
            return None

        queue: WorkQueue[str] = WorkQueue(
            work, backoff=0.02, on_error=lambda key, error: errors.append(f"{key}: {error}")
        )
        queue.add("a")
        await asyncio.sleep(0.3)
        gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
        return gaps, errors

    gaps, errors = asyncio.run(scenario())
    assert errors == ["a: attempt 1", "a: attempt 2"]
    assert len(gaps) == 2
    assert 0.015 < gaps[0] < gaps[1]
