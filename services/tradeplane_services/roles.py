"""Who may call each bundled service and send what: identities and their messages, as plain data.

Read by the services (authorization at logon), and by the operator (which keys a pod mounts, which pods
its NetworkPolicy lets in). Message names are the protocol's class names. Heartbeats are always allowed.
Nothing reaches execution except through order, whose orders pass risk first.
"""

from __future__ import annotations

ADMIN = "admin"  # operators of the platform: the kill switch
CLIENT = "client"  # trading clients: order entry, positions, market data
CALLERS: dict[str, dict[str, tuple[str, ...]]] = {
    "order": {CLIENT: ("NewOrder", "CancelOrder", "ReplaceOrder")},
    "risk": {"order": ("RiskCheck", "RiskUpdate"), ADMIN: ("SetKillSwitch",)},
    "execution": {"order": ("RouteOrder", "CancelRoute", "ReplaceRoute")},
    # Fills reach position through the event log, never over a session.
    "position": {CLIENT: ("PositionQuery",), ADMIN: ("PositionQuery",)},
    "market-data": {
        identity: ("Subscribe", "ReplayRequest") for identity in ("risk", "position", CLIENT, ADMIN)
    },
}
IDENTITIES = (*CALLERS, ADMIN, CLIENT)
