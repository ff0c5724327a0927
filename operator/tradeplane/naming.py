"""What a TradingService's children are called and how they are labelled: their owner and its names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tradeplane.api import TradingServiceSpec
from tradeplane.labels import (
    CANARY_SUFFIX,
    COMPONENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGER,
    NAME_LABEL,
    PART_OF_LABEL,
)

Role = Literal["stable", "canary"]


@dataclass(frozen=True)
class Owner:
    """The TradingService the children belong to; no uid when rendering offline (no ownerReference)."""

    name: str
    namespace: str
    uid: str | None = None


def deployment_name(owner: Owner, role: Role) -> str:
    return owner.name + CANARY_SUFFIX if role == "canary" else owner.name


def revision_object_name(owner: Owner, revision: str) -> str:
    return f"{owner.name}-{revision}"


def selector(owner: Owner) -> dict[str, str]:
    """The pods of the service, every revision: the Service's and both Deployments' selector."""
    return {NAME_LABEL: owner.name}


def labels(owner: Owner, spec: TradingServiceSpec) -> dict[str, str]:
    return {
        NAME_LABEL: owner.name,
        COMPONENT_LABEL: str(spec.component),
        MANAGED_BY_LABEL: MANAGER,
        PART_OF_LABEL: MANAGER,
    }
