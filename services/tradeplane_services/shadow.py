"""Shadow comparisons: a canary's decision on a copy of a request beside the stable's decision on it.

In a shadow rollout of a peer (orderflow.SHADOW) the caller sends the canary a copy of the requests of
its share of accounts and never lets the canary's answer out; each copied request waits here for both
answers and is then counted as a MATCH or a MISMATCH (by pair of decisions). A request the canary does
not answer within the answer time is UNANSWERED (a canary that never answers grows nothing: entries
expire, and at most `capacity` wait at once, the oldest counted UNANSWERED when a new one would pass
it); one the stable did not answer in time is STABLE_UNANSWERED, which says nothing of the canary.

Pure: the caller passes the clock's reading (nanoseconds) in.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

MATCH = "match"
MISMATCH = "mismatch"
UNANSWERED = "unanswered"
STABLE_UNANSWERED = "stable_unanswered"
OUTCOMES = (MATCH, MISMATCH, UNANSWERED, STABLE_UNANSWERED)
DEFAULT_CAPACITY = 65_536


@dataclass
class _Pending:
    revision: str
    """The canary revision the copy went to."""
    since_ns: int
    stable: int | None = None
    canary: int | None = None


class ShadowComparisons:
    """Copied requests waiting for the stable's and the canary's decisions, by request id (FIFO)."""

    def __init__(self, answer_within_ns: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected at least 1, got {capacity}")
        self.answer_within_ns = answer_within_ns
        self.capacity = capacity
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self.outcomes: Counter[tuple[str, str]] = Counter()
        """(canary revision, outcome) -> requests."""
        self.mismatches: Counter[tuple[str, int, int]] = Counter()
        """(canary revision, stable decision, canary decision) -> requests."""

    def __len__(self) -> int:
        return len(self._pending)

    def copied(self, request_id: int, revision: str, now_ns: int) -> None:
        """A copy of request `request_id` went to canary `revision`."""
        self.expire(now_ns)
        if request_id in self._pending:
            # The same id again (a replace): the earlier copy is decided by what arrived so far.
            self._settle(self._pending.pop(request_id))
        while len(self._pending) >= self.capacity:
            self._settle(self._pending.popitem(last=False)[1])
        self._pending[request_id] = _Pending(revision, now_ns)

    def stable_decided(self, request_id: int, decision: int) -> None:
        pending = self._pending.get(request_id)
        if pending is not None:
            pending.stable = decision
            self._complete(request_id, pending)

    def canary_decided(self, request_id: int, decision: int) -> bool:
        """The canary's answer; False when no copy of that request waits (not a shadow answer)."""
        pending = self._pending.get(request_id)
        if pending is None:
            return False
        pending.canary = decision
        self._complete(request_id, pending)
        return True

    def expire(self, now_ns: int) -> None:
        """Copies older than the answer time are decided by what arrived."""
        deadline = now_ns - self.answer_within_ns
        while self._pending:
            request_id, pending = next(iter(self._pending.items()))
            if pending.since_ns > deadline:
                break
            del self._pending[request_id]
            self._settle(pending)

    def _complete(self, request_id: int, pending: _Pending) -> None:
        if pending.stable is not None and pending.canary is not None:
            del self._pending[request_id]
            self._settle(pending)

    def _settle(self, pending: _Pending) -> None:
        if pending.canary is None:
            outcome = UNANSWERED
        elif pending.stable is None:
            outcome = STABLE_UNANSWERED
        elif pending.stable == pending.canary:
            outcome = MATCH
        else:
            outcome = MISMATCH
            self.mismatches[(pending.revision, pending.stable, pending.canary)] += 1
        self.outcomes[(pending.revision, outcome)] += 1
