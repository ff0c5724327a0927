"""Order-flow canaries: which revision of a peer an account's orders go to, and the routing that says so.

During a rollout of a peer (risk, execution) its caller (order) splits orders by account: the account's
bucket is a stable hash of the account, salted per rollout, into 10,000 buckets, and buckets below the
weight (basis points) go to the canary. So the share is exact to a basis point over many accounts, an
account stays on one revision for the whole rollout, and as the weight grows accounts only move from the
stable to the canary. The operator pushes a `RoutingTable` to every caller pod (POST /routing on its HTTP
port) each second of a rollout; the table holds for `leaseSeconds` only, so a canary nobody renews gets
no orders.

In shadow mode (`mode: shadow`) the stable answers every order; the accounts below the weight have a copy
of their checks sent to the canary, whose answers are only compared with the stable's (shadow.py).

Dependency-free: the operator builds the same table and reads the same answer.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BUCKETS = 10_000
STABLE_BEFORE_ROUTING = "stable"
"""The revision callers count the stable's orders under until a routing names it."""
MAX_SALT_BYTES = 64  # blake2b's key
MAX_LEASE_SECONDS = 60
LIVE, SHADOW = "live", "shadow"
MODES = (LIVE, SHADOW)
_ENDPOINT = re.compile(r"^[A-Za-z0-9.:\[\]-]+:[0-9]{1,5}$")
_REVISION = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_DOCUMENT_FIELDS = (
    "peer",
    "stableRevision",
    "canaryRevision",
    "canary",
    "weightBasisPoints",
    "salt",
    "leaseSeconds",
    "mode",
)
_OPTIONAL_FIELDS = {"mode"}


def bucket(account: int, salt: bytes) -> int:
    """The account's bucket, 0-9999, for one rollout's salt: uniform, and the same in every caller."""
    digest = hashlib.blake2b(account.to_bytes(8, "little"), digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "little") % BUCKETS


class RoutingError(ValueError):
    """A routing document that cannot be used; the message names the field."""


@dataclass(frozen=True)
class RoutingTable:
    """Where a caller sends a peer's orders during a rollout of that peer."""

    peer: str
    """The called component, e.g. risk."""
    stable_revision: str
    canary_revision: str
    canary: tuple[str, ...]
    """host:port of the canary revision's ready pods (wire port); none with a weight above 0 while none is
    ready: callers already holding the share keep its accounts with the canary (refused meanwhile)."""
    weight_basis_points: int
    salt: str
    lease_seconds: float
    mode: str = LIVE
    """live: the canary answers its accounts' orders; shadow: it gets copies, the stable answers."""

    @property
    def salt_key(self) -> bytes:
        return self.salt.encode()

    def document(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "stableRevision": self.stable_revision,
            "canaryRevision": self.canary_revision,
            "canary": list(self.canary),
            "weightBasisPoints": self.weight_basis_points,
            "salt": self.salt,
            "leaseSeconds": self.lease_seconds,
            "mode": self.mode,
        }

    @classmethod
    def from_document(cls, document: Any) -> RoutingTable:
        if not isinstance(document, Mapping):
            raise RoutingError(f"expected a JSON object, got {type(document).__name__}")
        unknown = sorted(set(document) - set(_DOCUMENT_FIELDS))
        if unknown:
            raise RoutingError(f"unknown fields {unknown}; expected {list(_DOCUMENT_FIELDS)}")
        missing = [name for name in _DOCUMENT_FIELDS if name not in document and name not in _OPTIONAL_FIELDS]
        if missing:
            raise RoutingError(f"missing fields {missing}")
        peer = _text(document, "peer", re.compile(r"^[a-z][-a-z]{0,30}$"))
        weight = document["weightBasisPoints"]
        if type(weight) is not int or not 0 <= weight <= BUCKETS:
            raise RoutingError(f"weightBasisPoints: expected an integer 0-{BUCKETS}, got {weight!r}")
        lease = document["leaseSeconds"]
        if type(lease) not in (int, float) or not 0 < lease <= MAX_LEASE_SECONDS:
            raise RoutingError(f"leaseSeconds: expected a number in (0, {MAX_LEASE_SECONDS}], got {lease!r}")
        salt = document["salt"]
        if not isinstance(salt, str) or not 0 < len(salt.encode()) <= MAX_SALT_BYTES:
            raise RoutingError(f"salt: expected a string of 1-{MAX_SALT_BYTES} bytes")
        canary = document["canary"]
        if not isinstance(canary, list) or not all(
            isinstance(endpoint, str) and _ENDPOINT.match(endpoint) for endpoint in canary
        ):
            raise RoutingError(f"canary: expected a list of host:port, got {canary!r}")
        mode = document.get("mode", LIVE)
        if mode not in MODES:
            raise RoutingError(f"mode: expected one of {list(MODES)}, got {mode!r}")
        return cls(
            peer=peer,
            stable_revision=_text(document, "stableRevision", _REVISION),
            canary_revision=_text(document, "canaryRevision", _REVISION),
            canary=tuple(canary),
            weight_basis_points=weight,
            salt=salt,
            lease_seconds=float(lease),
            mode=mode,
        )


def _text(document: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = document[name]
    if not isinstance(value, str) or not pattern.match(value):
        raise RoutingError(f"{name}: {value!r} does not match {pattern.pattern}")
    return value


@dataclass(frozen=True)
class RoutingAnswer:
    """A caller's answer to a push: the weight it now holds and for which canary revision, and the orders
    it routed per revision since it started (cumulative counters, as /metrics exports them)."""

    peer: str
    weight_basis_points: int
    routed: dict[str, int]
    canary_revision: str | None
    """None from a caller that predates the field: its weight is taken for the revision last pushed."""

    def document(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "weightBasisPoints": self.weight_basis_points,
            "routed": self.routed,
            "canaryRevision": self.canary_revision,
        }

    @classmethod
    def from_document(cls, document: Any) -> RoutingAnswer:
        try:
            routed = {str(revision): int(count) for revision, count in document["routed"].items()}
            revision = document.get("canaryRevision")
            return cls(
                str(document["peer"]),
                int(document["weightBasisPoints"]),
                routed,
                None if revision is None else str(revision),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RoutingError(f"not a routing answer: {error!r}") from None
