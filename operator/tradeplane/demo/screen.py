"""The demo's one screen: order flow, each service with its rollout and p99, positions, the story so far."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tradeplane.demo.flow import OrderFlow
from tradeplane.demo.observe import Snapshot

POSITION_ROWS = 12
EVENT_ROWS = 6


def _micros(snapshot: Snapshot, service: str, revision: str | None) -> str:
    measured = snapshot.latency.get((service, revision or ""))
    if measured is None or measured.p99_micros is None:
        return "-"
    return f"{measured.p99_micros:,.0f} ({measured.samples})"


def services_table(snapshot: Snapshot) -> Table:
    table = Table(title="TradingServices (p99 µs over 5s from the pods' own histograms, with samples)")
    for column in ("service", "phase", "stable", "canary", "step", "pods", "p99 stable", "p99 canary", "SLO"):
        table.add_column(column)
    table.add_column("last analysis", overflow="fold")
    for item in snapshot.services:
        name = item["metadata"]["name"]
        status = item.get("status") or {}
        stable, canary = status.get("stableRevision"), status.get("canaryRevision")
        analysis = status.get("lastAnalysis") or {}
        verdict = (
            f"{analysis.get('verdict')} {analysis.get('gate') or ''} {analysis.get('value', '-')}"
            f"/{analysis.get('threshold', '-')} on {analysis.get('samples', 0)} samples"
            if analysis
            else "-"
        )
        pods = f"{len(snapshot.pods_of(name, stable))}" + (
            f"+{len(snapshot.pods_of(name, canary))}" if canary else ""
        )
        style = {"RollingBack": "bold red", "RolledBack": "red", "Progressing": "yellow"}.get(
            status.get("phase", ""), ""
        )
        table.add_row(
            name,
            Text(status.get("phase", "-"), style=style),
            stable or "-",
            canary or "-",
            f"{status.get('step', 0)} @ {float(status.get('weight') or 0):g}%" if canary else "-",
            pods,
            _micros(snapshot, name, stable),
            _micros(snapshot, name, canary) if canary else "-",
            str((item["spec"].get("slo") or {}).get("p99LatencyMicros", "-")),
            verdict,
        )
    return table


def flow_table(flow: OrderFlow) -> Table:
    table = Table(title="Order flow (order -> risk -> execution -> position)")
    for column in ("orders/s", "acknowledged", "fills", "rejects", "reconnects"):
        table.add_column(column, justify="right")
    rejects = ", ".join(f"{reason} {count}" for reason, count in flow.rejects.most_common(3)) or "0"
    table.add_row(
        f"{flow.orders_per_second():.0f}",
        f"{flow.acknowledged:,}",
        f"{flow.fills:,}",
        rejects,
        str(len(flow.errors)),
    )
    return table


def positions_table(snapshot: Snapshot) -> Table:
    table = Table(title="Positions by account (from the position service)")
    for column in ("account", "symbol", "quantity", "realized PnL"):
        table.add_column(column, justify="right")
    for position in snapshot.positions[:POSITION_ROWS]:
        table.add_row(
            str(position.account), position.symbol, f"{position.quantity:,}", f"{position.realized:,.2f}"
        )
    return table


def render(snapshot: Snapshot, flow: OrderFlow, story: list[str], title: str) -> Group:
    events = Text(
        "\n".join(
            f"{event['type']:<8} {event['object']:<10} {event['reason']:<12} {event['message']}"
            for event in snapshot.events[-EVENT_ROWS:]
        )
        or "-"
    )
    return Group(
        Text(title, style="bold"),
        flow_table(flow),
        services_table(snapshot),
        positions_table(snapshot),
        Panel(Text("\n".join(story) or "-"), title="What happened"),
        Panel(events, title="Events of the TradingServices"),
    )
