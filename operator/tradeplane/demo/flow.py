"""A desk's steady order flow into the order service: crossing buy/sell pairs over a few accounts.

One order-entry session, as a client would hold one. It counts what the stack answered (acknowledged,
rejected by reason, traded) so the demo can show orders/s and fills, and it follows the order service's
pod when that pod is replaced (a new session on the new address).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tradeplane.demo.background import BackgroundLoop
from tradeplane_services.client import OrderSession
from tradeplane_services.config import Address
from tradeplane_services.protocol import ExecType, ExecutionReport, Reason, Side, price_units
from tradeplane_services.sessions import Credentials

SYMBOLS = {"AAPL": 190.0, "MSFT": 410.0, "NVDA": 120.0}
ACCOUNTS = (101, 102, 103, 104)


@dataclass
class OrderFlow(BackgroundLoop):
    """Send `rate` orders/s to the order service found by `locate` until stopped."""

    locate: Callable[[], Address | None]
    creds: Credentials
    rate: float = 40.0
    sent: int = 0
    acknowledged: int = 0
    fills: int = 0
    rejects: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    _history: list[tuple[float, int]] = field(default_factory=list)

    thread_name = "order-flow"

    def orders_per_second(self, over: float = 3.0) -> float:
        """Acknowledged orders per second over the last `over` seconds."""
        now = time.monotonic()
        recent = [(at, count) for at, count in self._history if at >= now - over]
        if len(recent) < 2:
            return 0.0
        (first_at, first), (last_at, last) = recent[0], recent[-1]
        return (last - first) / max(1e-9, last_at - first_at)

    def _run(self) -> None:
        first_id = 1
        while not self._stop.is_set():
            address = self.locate()
            if address is None:
                self._stop.wait(0.5)
                continue
            try:
                with OrderSession(address, timeout=2.0, first_id=first_id, creds=self.creds) as session:
                    first_id += self._trade(session)
            except OSError as error:
                # The order pod went away (rolled, deleted): open a session to its replacement.
                self.errors.append(f"{address}: {error}")
                self._stop.wait(0.5)

    def _trade(self, session: OrderSession) -> int:
        """Send crossing pairs at the rate until stopped; return how many orders the session sent."""
        symbols = list(SYMBOLS)
        pair = 0
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            while next_send <= now:
                symbol = symbols[pair % len(symbols)]
                price = price_units(SYMBOLS[symbol])
                buyer = ACCOUNTS[pair % len(ACCOUNTS)]
                seller = ACCOUNTS[(pair + 1) % len(ACCOUNTS)]
                # Changes once every (account, symbol) pair traded: risk's duplicate-order check never fires.
                quantity = 1 + (pair // 12) % 97
                session.new_order(Side.BUY, symbol, quantity, price, account=buyer)
                session.new_order(Side.SELL, symbol, quantity, price, account=seller)
                self.sent += 2
                pair += 1
                next_send += 2 / self.rate
            # Never 0: a zero timeout would put the socket in non-blocking mode.
            for message in session.receive(max(0.001, min(0.05, next_send - time.monotonic()))):
                self._count(message)
            self._history = [*self._history[-200:], (time.monotonic(), self.acknowledged)]
        return 2 * pair

    def _count(self, message: object) -> None:
        if not isinstance(message, ExecutionReport):
            return
        if message.exec_type == ExecType.NEW:
            self.acknowledged += 1
        elif message.exec_type == ExecType.REJECTED:
            self.rejects[Reason(message.reason).name] += 1
        elif message.exec_type == ExecType.TRADE:
            self.fills += 1
