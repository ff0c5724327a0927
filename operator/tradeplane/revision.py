"""The pod-template revision of a spec: a short stable hash of every field that changes the pods.

Replicas, SLO, rollout settings and `paused` do not change a pod, so they do not make a revision. Fields
at their defaults are left out of the hash, so adding a defaulted field to the API later does not give
every existing TradingService a new revision (and a canary) on operator upgrade; quantities are hashed
in canonical form, so `8192Mi` and `8Gi` are one revision.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tradeplane.api import TradingServiceSpec
from tradeplane.quantity import canonical_quantity

TEMPLATE_FIELDS = frozenset(
    {
        "component",
        "image",
        "command",
        "port",
        "metricsPort",
        "resources",
        "placement",
        "network",
        "config",
        "eventLog",
        "coLocate",
    }
)
REVISION_LENGTH = 10


def template_fields(spec: TradingServiceSpec) -> dict[str, Any]:
    """The fields of the spec that shape the pod template, defaults filled in, quantities canonical."""
    return _canonical_quantities(spec.model_dump(mode="json", include=set(TEMPLATE_FIELDS)))


def template_revision(spec: TradingServiceSpec) -> str:
    fields = _canonical_quantities(
        spec.model_dump(mode="json", include=set(TEMPLATE_FIELDS), exclude_defaults=True)
    )
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]


def _canonical_quantities(fields: dict[str, Any]) -> dict[str, Any]:
    resources = fields["resources"]
    resources["memory"] = canonical_quantity(resources["memory"])
    if resources.get("hugepages"):
        resources["hugepages"]["amount"] = canonical_quantity(resources["hugepages"]["amount"])
    return fields
