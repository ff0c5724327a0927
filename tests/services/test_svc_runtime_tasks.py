"""Background tasks end when a service stops, even when a cancellation is lost on the way."""

from __future__ import annotations

import asyncio

import pytest

from tradeplane_services.runtime import cancel_and_wait


async def follower(cancellations_to_lose: int, seen: list[str]) -> None:
    """Follows for ever; the first cancellations are lost, as asyncio.wait_for in Python 3.11 loses one
    that races the message it waits for."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            if len(seen) > cancellations_to_lose:
                raise


async def failing() -> None:
    raise RuntimeError("the follower failed")


def test_a_lost_cancellation_is_repeated_until_the_task_ends() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []
        task = asyncio.create_task(follower(1, seen))
        await asyncio.sleep(0)
        stopping = asyncio.create_task(cancel_and_wait(task))
        await asyncio.wait({stopping}, timeout=3)
        task.cancel()  # the test's own clean-up, whatever happened
        assert stopping.done(), "the follower still runs after its cancellation was lost"
        assert task.cancelled()
        return seen

    assert asyncio.run(scenario()) == ["cancelled"] * 2


def test_a_task_that_failed_still_says_why() -> None:
    async def scenario() -> None:
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        await cancel_and_wait(task, None)

    with pytest.raises(RuntimeError, match="the follower failed"):
        asyncio.run(scenario())
