"""Blocking clients of the services' wire protocol, for people, scripts and tests.

`OrderSession` is an order-entry session (one TCP connection: client order ids are unique within it and
its resting orders are canceled when it closes). `request` sends one message to any service and collects
the answers, e.g. positions from position or the kill switch of risk. Every connection logs on first, as
TRADEPLANE_IDENTITY (default client; the kill switch needs admin) with the keys in TRADEPLANE_KEYS_DIR,
unless credentials are given.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from typing import Any, Self

from tradeplane_services.catalog import ADMIN
from tradeplane_services.config import Address
from tradeplane_services.protocol import (
    CancelOrder,
    ExecType,
    ExecutionReport,
    FrameError,
    FrameRun,
    KillSwitchState,
    KillSwitchStatus,
    NewOrder,
    OrderStatus,
    OrderType,
    PositionQuery,
    PositionQueryEnd,
    PositionReport,
    Reason,
    ReplaceOrder,
    SessionReject,
    SetKillSwitch,
    Side,
    TimeInForce,
    encode,
    price_value,
    symbol_bytes,
    symbol_text,
)
from tradeplane_services.sessions import Credentials, credentials, logon


class WireClient:
    """A framed, blocking TCP connection, logged on: send messages, receive decoded ones."""

    def __init__(self, address: Address, timeout: float = 5.0, creds: Credentials | None = None) -> None:
        self.socket = socket.create_connection((address.host, address.port), timeout=timeout)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.decoder, self.backlog = logon(self.socket, creds or credentials(), timeout)
        except BaseException:
            self.socket.close()
            raise
        self.sequence = 1  # the Logon

    def send(self, message: Any) -> None:
        self.sequence += 1
        self.socket.sendall(encode(message, self.sequence))

    def send_raw(self, data: bytes) -> None:
        self.socket.sendall(data)

    def receive(self, timeout: float) -> list[Any]:
        """Messages (or FrameErrors) that arrive within `timeout`; [] when none did."""
        if self.backlog:
            received, self.backlog = self.backlog, []
            return received
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(1 << 16)
        except TimeoutError:
            return []
        if not data:
            raise ConnectionError("the service closed the connection")
        messages: list[Any] = []
        for item in self.decoder.feed(data):
            if isinstance(item, FrameError):
                messages.append(item)
            elif not isinstance(item, FrameRun):
                messages.append(item[0])
        return messages

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> Any:
        """The first message matching `predicate`; the others stay queued for later `receive` calls."""
        deadline = time.monotonic() + timeout
        skipped: list[Any] = []
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no matching message within {timeout}s; got {skipped[-5:]}")
                for position, message in enumerate(batch := self.receive(remaining)):
                    if predicate(message):
                        skipped.extend(batch[position + 1 :])
                        return message
                    skipped.append(message)
        finally:
            self.backlog = skipped + self.backlog

    def close(self) -> None:
        self.socket.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OrderSession(WireClient):
    """Order entry: new, cancel, replace; each returns the client order id it used."""

    def __init__(
        self, address: Address, timeout: float = 5.0, first_id: int = 1, creds: Credentials | None = None
    ) -> None:
        super().__init__(address, timeout, creds)
        self._ids = itertools.count(first_id)

    def new_order(
        self,
        side: Side,
        symbol: str,
        quantity: int,
        price: int,
        account: int = 1,
        order_type: OrderType = OrderType.LIMIT,
        time_in_force: TimeInForce = TimeInForce.DAY,
    ) -> int:
        client_order_id = next(self._ids)
        self.send(
            NewOrder(
                client_order_id,
                account,
                symbol_bytes(symbol),
                side,
                order_type,
                time_in_force,
                quantity,
                price,
            )
        )
        return client_order_id

    def cancel(self, original: int) -> int:
        client_order_id = next(self._ids)
        self.send(CancelOrder(client_order_id, original))
        return client_order_id

    def replace(self, original: int, quantity: int, price: int) -> int:
        client_order_id = next(self._ids)
        self.send(ReplaceOrder(client_order_id, original, quantity, price))
        return client_order_id

    def report_for(
        self, client_order_id: int, exec_type: ExecType | None = None, timeout: float = 5.0
    ) -> ExecutionReport:
        report: ExecutionReport = self.wait_for(
            lambda m: (
                isinstance(m, ExecutionReport)
                and m.client_order_id == client_order_id
                and (exec_type is None or m.exec_type == exec_type)
            ),
            timeout,
        )
        return report


def request(
    address: Address, message: Any, until: type, timeout: float = 5.0, creds: Credentials | None = None
) -> list[Any]:
    """Send one message and collect the answers up to and including the first of type `until`."""
    with WireClient(address, timeout, creds) as connection:
        connection.send(message)
        answers: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for answer in connection.receive(deadline - time.monotonic()):
                if isinstance(answer, (SessionReject, FrameError)):
                    raise RuntimeError(f"{address} refused the request: {answer}")
                answers.append(answer)
                if isinstance(answer, until):
                    return answers
        raise TimeoutError(f"{address} did not answer {type(message).__name__} within {timeout}s")


def positions(
    address: Address, account: int = 0, timeout: float = 5.0, creds: Credentials | None = None
) -> list[PositionReport]:
    answers = request(address, PositionQuery(account), PositionQueryEnd, timeout, creds)
    return [answer for answer in answers if isinstance(answer, PositionReport)]


def set_kill_switch(
    address: Address, state: KillSwitchState, timeout: float = 5.0, creds: Credentials | None = None
) -> KillSwitchState:
    """Move risk's kill switch (an admin identity's privilege); the state risk reports back."""
    with WireClient(address, timeout, creds or credentials(ADMIN)) as connection:
        # Risk greets every session with the current state; the answer to the request comes after it.
        connection.wait_for(lambda m: isinstance(m, KillSwitchStatus), timeout)
        connection.send(SetKillSwitch(int(state)))
        answer: KillSwitchStatus = connection.wait_for(lambda m: isinstance(m, KillSwitchStatus), timeout)
        return KillSwitchState(answer.state)


def describe(message: Any) -> str:
    """One line for a person."""
    if isinstance(message, ExecutionReport):
        text = (
            f"clid={message.client_order_id} {ExecType(message.exec_type).name:<15} "
            f"{OrderStatus(message.order_status).name:<16} {symbol_text(message.symbol):<6} "
            f"{Side(message.side).name if message.side in (1, 2) else '-':<4} "
            f"cum={message.cumulative_quantity} leaves={message.leaves_quantity}"
        )
        if message.exec_type == ExecType.TRADE:
            text += f" last={message.last_quantity}@{price_value(message.last_price):.2f}"
        if message.reason:
            text += f" reason={Reason(message.reason).name}"
        return text
    if isinstance(message, PositionReport):
        return (
            f"account={message.account} {symbol_text(message.symbol):<6} qty={message.quantity:>8} "
            f"bought={message.bought_quantity} sold={message.sold_quantity} "
            f"realized={price_value(message.realized_pnl):.2f} "
            f"unrealized={price_value(message.unrealized_pnl):.2f} mark={price_value(message.mark_price):.2f}"
        )
    if isinstance(message, SessionReject):
        return f"REJECT {Reason(message.reason).name} at byte {message.offset}: {symbol_text(message.text)}"
    return repr(message)
