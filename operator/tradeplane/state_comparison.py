"""A state shadow's comparison: the canary pods' state digests against the stable pods', at the same log
sequences. Pure.

Each pod of a log projection answers its recent history of (log sequence, digest) (tradeplane_services
catalog's DIGESTS_ROUTE). A canary pod's digest at a sequence is compared with the digests the stable pods
recorded at that sequence: a match when every stable pod holding it has the canary's digest, a mismatch
otherwise. Sequences the stable holds nowhere are not compared: with no sequence in common nothing is
compared, and the decision gate calls that Inconclusive. The counts feed the decision gate as `Decisions`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from tradeplane.measurement import Decisions

History = dict[int, str]
"""A pod's digests by log sequence."""
WHAT = "state comparisons (canary pod x log sequence)"
SPAN = "at the log sequences both hold"
_DIGEST = re.compile(r"^[0-9a-f]{16}$")


class BadDigests(ValueError):
    """A pod's digest document is not what the route answers."""


def parse_history(endpoint: str, document: Any) -> History:
    """The pod's digests by sequence, or BadDigests naming the pod and the field."""
    if not isinstance(document, dict) or not isinstance(document.get("history"), list):
        raise BadDigests(f"{endpoint}: expected an object with a history list")
    history: History = {}
    for index, entry in enumerate(document["history"]):
        valid = (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], int)
            and not isinstance(entry[0], bool)
            and entry[0] > 0
            and isinstance(entry[1], str)
            and _DIGEST.match(entry[1]) is not None
        )
        if not valid:
            raise BadDigests(
                f"{endpoint}: history[{index}] is {entry!r}, expected [sequence > 0, 16 hex digits]"
            )
        history[entry[0]] = entry[1]
    return history


def compare_states(canary: Mapping[str, History], stable: Mapping[str, History]) -> Decisions:
    """Every (canary pod, sequence) the stable holds too, as a match or a mismatch."""
    stable_at: dict[int, set[str]] = {}
    for history in stable.values():
        for sequence, digest in history.items():
            stable_at.setdefault(sequence, set()).add(digest)
    match = mismatch = 0
    first: tuple[int, str, str, set[str]] | None = None
    for endpoint, history in sorted(canary.items()):
        for sequence, digest in sorted(history.items()):
            held = stable_at.get(sequence)
            if held is None:
                continue
            if held == {digest}:
                match += 1
                continue
            mismatch += 1
            if first is None or sequence < first[0]:
                first = (sequence, endpoint, digest, held)
    detail = ""
    if first is not None:
        sequence, endpoint, digest, held = first
        stable_digests = ", ".join(sorted(held))
        detail = f"first at log sequence {sequence}: {endpoint} holds {digest}, the stable {stable_digests}"
    return Decisions(match, mismatch, 0, what=WHAT, detail=detail, span=SPAN)
