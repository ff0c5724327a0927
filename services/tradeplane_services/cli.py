"""`tradeplane-svc`: run a service, the whole stack, a client, the load generator.

tradeplane-svc order|risk|market-data|execution|position [--config PATH]
tradeplane-svc stack [--host 127.0.0.1] [--config stack.yaml] [--workdir DIR]
tradeplane-svc client [--order HOST:PORT]                 interactive order entry
tradeplane-svc client demo [--orders N]                   crossing orders, fills, positions
tradeplane-svc client positions [--account N]
tradeplane-svc client kill-switch ACTIVE|REDUCING|HALTED
tradeplane-svc client md-tail [--seconds S] [--record FILE]
tradeplane-svc loadgen --rate R --seconds S [--target order|echo]
tradeplane-svc echo                                       the loadgen's baseline server
tradeplane-svc log info|dump --account N|replay --to-sequence N    read the event log
tradeplane-svc query ohlcv|vwap|positions|tca|kpis|last [...]      ask analytics
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tradeplane_services import client as clients
from tradeplane_services.catalog import BUNDLED
from tradeplane_services.config import (
    Address,
    ConfigError,
    parse_address,
    read_environment,
)
from tradeplane_services.protocol import (
    KillSwitchState,
    OrderType,
    Side,
    TimeInForce,
    price_units,
)


def _address(text: str) -> Address:
    try:
        return parse_address(text, "address")
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _default(component: str) -> Address:
    return Address("127.0.0.1", BUNDLED[component].port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeplane-svc", description="tradeplane's bundled trading services"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for component in BUNDLED:
        service = commands.add_parser(component, help=f"run the {component} service")
        service.add_argument("--config", help="settings file (default $TRADEPLANE_CONFIG)")

    stack = commands.add_parser("stack", help="run every bundled service as a local process")
    stack.add_argument("--host", default="127.0.0.1", help="address every service binds")
    stack.add_argument("--config", type=Path, help="YAML with a section of settings per component")
    stack.add_argument("--workdir", type=Path, help="logs and position state (default: a temp dir)")
    stack.add_argument("--revision", default="dev")

    client = commands.add_parser("client", help="send orders and read positions")
    client.add_argument("--order", type=_address, default=_default("order"))
    client.add_argument("--position", type=_address, default=_default("position"))
    client.add_argument("--risk", type=_address, default=_default("risk"))
    client.add_argument("--market-data", type=_address, default=_default("market-data"))
    client.add_argument("--account", type=int, default=1)
    client.add_argument("--keys", type=Path, help="session keys directory (default $TRADEPLANE_KEYS_DIR)")
    actions = client.add_subparsers(dest="action")
    demo = actions.add_parser("demo", help="send crossing orders and show fills and positions")
    demo.add_argument("--orders", type=int, default=20)
    actions.add_parser("positions", help="print positions and PnL")
    kill = actions.add_parser("kill-switch", help="move risk's kill switch")
    kill.add_argument("state", choices=[s.name for s in KillSwitchState])
    tail = actions.add_parser("md-tail", help="subscribe to market data and print statistics")
    tail.add_argument("--group", type=_address, help="multicast group (default: unicast)")
    tail.add_argument("--seconds", type=float, default=5.0)
    tail.add_argument("--record", type=Path, help="also write the ticks to this file (replayFile format)")

    from tradeplane_services import loadgen

    loadgen.add_arguments(commands.add_parser("loadgen", help="open-loop load at a fixed rate"))
    from tradeplane_services import desk

    desk.add_arguments(commands.add_parser("log", help="read the event log: info, dump, replay"))
    from tradeplane_services import query

    query.add_arguments(commands.add_parser("query", help="ask analytics: bars, VWAP, positions, TCA, KPIs"))
    echo = commands.add_parser("echo", help="a bare echo server over the same transport (baseline)")
    echo.add_argument("--bind", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=7000)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    command = arguments.command
    if command in BUNDLED:
        from tradeplane_services.runtime import run

        try:
            environment = read_environment(command, arguments.config)
        except ConfigError as error:
            print(f"tradeplane-svc {command}: {error}", file=sys.stderr)
            return 2
        return run(BUNDLED[command].service_class(), environment)
    if command == "stack":
        from tradeplane_services.stack import run_stack

        workdir = arguments.workdir or Path(tempfile.mkdtemp(prefix="tradeplane-stack-"))
        return run_stack(arguments.host, arguments.config, workdir, arguments.revision)
    if command == "client":
        return run_client(arguments)
    if command == "loadgen":
        from tradeplane_services import loadgen

        return loadgen.main(arguments)
    if command == "log":
        from tradeplane_services import desk

        return desk.main(arguments)
    if command == "query":
        from tradeplane_services import query

        return query.main(arguments)
    from tradeplane_services import loadgen

    return loadgen.serve_echo(arguments.bind, arguments.port)


def run_client(arguments: argparse.Namespace) -> int:
    if arguments.keys is not None:
        os.environ["TRADEPLANE_KEYS_DIR"] = str(arguments.keys)  # every client call logs on with them
    try:
        if arguments.action == "positions":
            for report in clients.positions(arguments.position, 0):
                print(clients.describe(report))
            return 0
        if arguments.action == "kill-switch":
            state = clients.set_kill_switch(arguments.risk, KillSwitchState[arguments.state])
            print(f"kill switch: {state.name}")
            return 0
        if arguments.action == "demo":
            return run_demo(arguments)
        if arguments.action == "md-tail":
            return asyncio.run(tail_market_data(arguments))
        return run_interactive(arguments)
    except (OSError, TimeoutError, RuntimeError) as error:
        print(f"tradeplane-svc client: {error}", file=sys.stderr)
        return 1


def run_demo(arguments: argparse.Namespace) -> int:
    """Pairs of crossing orders (a buy and a sell at the same price) so they trade; then positions."""
    symbols = {"AAPL": 190.0, "MSFT": 420.0, "NVDA": 120.0}
    names = list(symbols)
    with clients.OrderSession(arguments.order) as session:
        for pair in range(max(1, arguments.orders // 2)):
            symbol = names[pair % len(names)]
            quantity, price = 100 + 10 * pair, price_units(symbols[symbol])
            buy = session.new_order(Side.BUY, symbol, quantity, price, account=arguments.account)
            sell = session.new_order(Side.SELL, symbol, quantity, price, account=arguments.account + 1)
            for client_order_id in (buy, sell):
                print(clients.describe(session.report_for(client_order_id)))
            time.sleep(0.02)
            for message in session.receive(0.05):
                print(clients.describe(message))
    print("positions:")
    for report in clients.positions(arguments.position, 0):
        print("  " + clients.describe(report))
    return 0


HELP = """commands:
  buy QTY SYMBOL [PRICE|market] [ioc]     e.g. buy 100 AAPL 190.00
  sell QTY SYMBOL [PRICE|market] [ioc]
  cancel CLID
  replace CLID QTY PRICE
  positions
  quit"""


def run_interactive(arguments: argparse.Namespace) -> int:
    session = clients.OrderSession(arguments.order)
    print(f"connected to order at {arguments.order}; account {arguments.account}\n{HELP}")
    stop = threading.Event()

    def print_reports() -> None:
        while not stop.is_set():
            try:
                for message in session.receive(0.2):
                    print(clients.describe(message), flush=True)
            except (OSError, ConnectionError) as error:
                if not stop.is_set():
                    print(f"connection lost: {error}", flush=True)
                return

    reader = threading.Thread(target=print_reports, daemon=True)
    reader.start()
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            try:
                if not _interactive_command(session, arguments, words):
                    break
            except (ValueError, IndexError, KeyError) as error:
                print(f"? {error}\n{HELP}", flush=True)
    finally:
        stop.set()
        session.close()
    return 0


def _interactive_command(
    session: clients.OrderSession, arguments: argparse.Namespace, words: list[str]
) -> bool:
    verb = words[0].lower()
    if verb in ("quit", "exit"):
        return False
    if verb in ("buy", "sell"):
        quantity, symbol = int(words[1]), words[2].upper()
        market = len(words) < 4 or words[3].lower() == "market"
        price = 0 if market else price_units(float(words[3]))
        client_order_id = session.new_order(
            Side.BUY if verb == "buy" else Side.SELL,
            symbol,
            quantity,
            price,
            arguments.account,
            OrderType.MARKET if market else OrderType.LIMIT,
            TimeInForce.IOC if "ioc" in (w.lower() for w in words[3:]) or market else TimeInForce.DAY,
        )
        print(f"sent clid={client_order_id}", flush=True)
    elif verb == "cancel":
        print(f"sent clid={session.cancel(int(words[1]))}", flush=True)
    elif verb == "replace":
        print(
            f"sent clid={session.replace(int(words[1]), int(words[2]), price_units(float(words[3])))}",
            flush=True,
        )
    elif verb == "positions":
        for report in clients.positions(arguments.position, 0):
            print(clients.describe(report), flush=True)
    else:
        raise ValueError(f"unknown command {verb!r}")
    return True


async def tail_market_data(arguments: argparse.Namespace) -> int:
    import numpy as np
    from prometheus_client import CollectorRegistry

    from tradeplane_services.marketdata import MarketDataSubscriber
    from tradeplane_services.runtime import RequestMetrics
    from tradeplane_services.sessions import credentials

    record = open(arguments.record, "ab") if arguments.record else None  # noqa: SIM115 - closed below

    def on_ticks(ticks: np.ndarray[Any, Any]) -> None:
        if record is not None:
            record.write(ticks.tobytes())

    metrics = RequestMetrics(CollectorRegistry(), "md-tail", "dev")
    subscriber = MarketDataSubscriber(
        on_ticks, arguments.market_data, arguments.group, "127.0.0.1", metrics, credentials()
    )
    await subscriber.start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < arguments.seconds:
            await asyncio.sleep(1.0)
            print(f"{subscriber.mode}: {subscriber.stats.as_dict()}", flush=True)
    finally:
        await subscriber.stop()
        if record is not None:
            record.close()
    return 0
