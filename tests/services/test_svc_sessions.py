"""Who may talk to whom, tried as an attacker would against the five real service processes.

Every session logs on first (HMAC challenge-response); every role may send only its own messages; idle,
stalled and crowding connections are closed; hostile but well-formed message sequences kill nothing.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradeplane_services.catalog import BUNDLED, CALLERS, CLIENT
from tradeplane_services.client import OrderSession, WireClient, positions, set_kill_switch
from tradeplane_services.protocol import (
    HEADER,
    LAYOUTS,
    PROTOCOL_VERSION,
    BatchFlags,
    Challenge,
    ExecType,
    Fill,
    FrameError,
    KillSwitchState,
    KillSwitchStatus,
    Logon,
    LogonAck,
    MarketDataBatch,
    NewOrder,
    Reason,
    ReplayRequest,
    RiskCheck,
    RiskResult,
    RouteOrder,
    SessionReject,
    SetKillSwitch,
    Side,
    StreamDecoder,
    VenueReport,
    encode,
    layout_of,
    price_units,
    symbol_bytes,
)
from tradeplane_services.sessions import (
    AuthenticationError,
    Credentials,
    Keyring,
    generate_keyring,
    identity_bytes,
)
from tradeplane_services.stack import Stack
from wire_strategies import message_strategy

StackFactory = Callable[..., Stack]
FAST = {"logonTimeoutMillis": 300, "readTimeoutMillis": 300}
# A message each service handles, sent by someone not allowed to send it.
GUARDED = {
    "order": NewOrder(1, 1, symbol_bytes("AAPL"), 1, 1, 1, 10, price_units(190)),
    "risk": SetKillSwitch(int(KillSwitchState.HALTED)),
    "execution": RouteOrder(1, 1, symbol_bytes("AAPL"), 1, 1, 1, 10, price_units(190)),
    "position": Fill(1, 1, 7, symbol_bytes("AAPL"), 1, 1_000, price_units(190), 1, 0),
    "market-data": ReplayRequest(0, 0),
}


class Raw:
    """A bare TCP connection to a service: what an attacker has before any logon."""

    def __init__(self, stack: Stack, component: str) -> None:
        self.socket = socket.create_connection((stack.host, stack.address(component).port), timeout=5)
        self.decoder = StreamDecoder()
        self.closed = False

    def read(self, seconds: float, count: int = 1_000) -> list[Any]:
        """Messages until `count` came, `seconds` passed or the service closed the connection (`closed`)."""
        messages: list[Any] = []
        deadline = time.monotonic() + seconds
        while not self.closed and len(messages) < count and (remaining := deadline - time.monotonic()) > 0:
            self.socket.settimeout(remaining)
            try:
                data = self.socket.recv(1 << 16)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            messages += [
                item if isinstance(item, FrameError) else item[0] for item in self.decoder.feed(data)
            ]
        return messages

    def close(self) -> None:
        self.socket.close()


def refusals(stack: Stack, component: str) -> dict[str, float]:
    """tradeplane_session_refusals_total by reason, from the service's /metrics."""
    import urllib.request

    with urllib.request.urlopen(stack.metrics_url(component), timeout=5) as response:
        text = response.read().decode()
    found = re.findall(r'tradeplane_session_refusals_total\{[^}]*reason="(\w+)"[^}]*\} (\S+)', text)
    return {reason: float(value) for reason, value in found}


def rejects(messages: list[Any]) -> list[Reason]:
    return [Reason(m.reason) for m in messages if isinstance(m, SessionReject)]


def error_lines(stack: Stack) -> list[str]:
    return [
        line
        for component in stack.processes
        for line in (stack.workdir / f"{component}.log").read_text(errors="replace").splitlines()
        if '"level": "ERROR"' in line or "Traceback" in line or "Fatal error" in line
    ]


@pytest.fixture
def fast_stack(make_stack: StackFactory) -> Stack:
    return make_stack({component: dict(FAST) for component in BUNDLED})


def test_every_port_challenges_and_refuses_anything_before_a_logon(fast_stack: Stack) -> None:
    for component, message in GUARDED.items():
        raw = Raw(fast_stack, component)
        challenge = raw.read(1.0, count=1)[0]
        assert isinstance(challenge, Challenge) and challenge.service == identity_bytes(component)
        raw.socket.sendall(encode(message, 1))
        answer = raw.read(2.0)
        assert [r.name for r in rejects(answer)] == ["LOGON_REQUIRED"], component
        assert raw.closed, f"{component} kept a session that never logged on"
        assert refusals(fast_stack, component).get("LOGON_REQUIRED") == 1.0
    assert fast_stack.status("risk")["killSwitch"] == "ACTIVE"
    assert positions(fast_stack.address("position")) == []


def test_a_wrong_key_and_an_identity_without_a_role_are_refused_at_logon(
    fast_stack: Stack, tmp_path: Path
) -> None:
    impostor = Credentials("order", generate_keyring(tmp_path / "impostor"))
    with pytest.raises(AuthenticationError, match="AUTHENTICATION_FAILED"):
        WireClient(fast_stack.address("risk"), creds=impostor)
    # A trading client holds a real key, but nothing reaches execution except through order and risk.
    for component in ("execution", "risk"):
        with pytest.raises(AuthenticationError, match="NOT_AUTHORIZED: client may not log on"):
            WireClient(fast_stack.address(component), creds=fast_stack.credentials(CLIENT))
    assert refusals(fast_stack, "risk") == {"AUTHENTICATION_FAILED": 1.0, "NOT_AUTHORIZED": 1.0}


def test_only_an_admin_moves_the_kill_switch_and_no_session_books_fills(fast_stack: Stack) -> None:
    with WireClient(fast_stack.address("risk"), creds=fast_stack.credentials("order")) as order:
        order.wait_for(lambda m: isinstance(m, KillSwitchStatus))
        order.send(SetKillSwitch(int(KillSwitchState.HALTED)))
        refused = order.wait_for(lambda m: isinstance(m, SessionReject))
        assert b"order may not send SetKillSwitch" in refused.text
        # The session survives its refusal: its own messages are still answered.
        order.send(RiskCheck(5, 1, symbol_bytes("AAPL"), 1, 1, 10, price_units(190), 0))
        assert order.wait_for(lambda m: isinstance(m, RiskResult)).order_id == 5
    assert fast_stack.status("risk")["killSwitch"] == "ACTIVE"
    assert refusals(fast_stack, "risk") == {"NOT_AUTHORIZED": 1.0}
    assert set_kill_switch(fast_stack.address("risk"), KillSwitchState.HALTED) == KillSwitchState.HALTED
    assert set_kill_switch(fast_stack.address("risk"), KillSwitchState.ACTIVE) == KillSwitchState.ACTIVE

    with WireClient(fast_stack.address("position"), creds=fast_stack.credentials(CLIENT)) as client:
        client.send(GUARDED["position"])
        assert b"Fill is not handle" in client.wait_for(lambda m: isinstance(m, SessionReject)).text
    # Fills reach position only through the event log: no identity may send one over a session.
    assert positions(fast_stack.address("position"), 7) == []


def test_idle_and_stalled_connections_are_closed_with_the_reason(fast_stack: Stack) -> None:
    idle = Raw(fast_stack, "risk")
    assert [r.name for r in rejects(idle.read(3.0))] == ["LOGON_TIMEOUT"] and idle.closed

    # A slow loris: logged on, then a frame trickling in a byte at a time never completes in time.
    with WireClient(fast_stack.address("order")) as session:
        frame = encode(NewOrder(1, 1, symbol_bytes("AAPL"), 1, 1, 1, 10, price_units(190)), 2)
        started, received = time.monotonic(), []
        with pytest.raises(ConnectionError):
            for byte in frame:
                session.send_raw(bytes([byte]))
                received += session.receive(0.1)
        assert time.monotonic() - started < 2.0, "the timeout restarted with every byte"
        assert [r.name for r in rejects(received)] == ["READ_TIMEOUT"]
    assert {"LOGON_TIMEOUT", "READ_TIMEOUT"} <= refusals(fast_stack, "risk").keys() | refusals(
        fast_stack, "order"
    ).keys()
    with OrderSession(fast_stack.address("order")) as session:
        assert (
            session.report_for(session.new_order(Side.BUY, "AAPL", 1, price_units(190))).exec_type
            == ExecType.NEW
        )


def test_connections_from_one_peer_are_bounded(make_stack: StackFactory) -> None:
    stack = make_stack({"market-data": {"maxConnectionsPerPeer": 3}}, components=("market-data",))
    held = [Raw(stack, "market-data") for _ in range(3)]
    assert all(isinstance(raw.read(1.0, count=1)[0], Challenge) for raw in held)
    crowding = Raw(stack, "market-data")
    assert [r.name for r in rejects(crowding.read(2.0))] == ["TOO_MANY_CONNECTIONS"] and crowding.closed
    held.pop().close()
    time.sleep(0.2)
    with WireClient(stack.address("market-data")) as client:
        client.send(ReplayRequest(0, 0))
        assert client.wait_for(lambda m: isinstance(m, MarketDataBatch)).flags & BatchFlags.SNAPSHOT
    for raw in held:
        raw.close()


def test_replay_requests_out_of_range_are_answered_not_fatal(make_stack: StackFactory) -> None:
    stack = make_stack(
        {"market-data": {"retainPackets": 4, "ticksPerSecond": 2000}}, components=("market-data",)
    )
    time.sleep(0.5)  # the retention window wraps many times over
    with WireClient(stack.address("market-data")) as client:
        client.send(ReplayRequest(2**64 - 1, 2**64 - 1))  # not published yet: nothing to send
        client.send(ReplayRequest(9, 2))  # backwards
        refused = client.wait_for(lambda m: isinstance(m, SessionReject))
        assert refused.offset == layout_of(ReplayRequest).offsets["last_sequence"]
        assert refused.text.startswith(b"INVALID_FIELD at byte 20: ReplayRequest.last_seq")
        client.send(ReplayRequest(1, 2))  # long gone: a snapshot instead
        assert client.wait_for(lambda m: isinstance(m, MarketDataBatch)).flags & BatchFlags.SNAPSHOT
    assert not error_lines(stack)


def test_a_rotated_key_takes_effect_without_a_restart_and_spares_open_sessions(
    fast_stack: Stack, tmp_path: Path
) -> None:
    key_file = fast_stack.keyring.directory / CLIENT
    old = key_file.read_text().split()[0]
    old_only = tmp_path / "old"
    old_only.mkdir()
    (old_only / CLIENT).write_text(old + "\n")
    pid = fast_stack.processes["order"].pid
    with OrderSession(fast_stack.address("order")) as before:
        new = generate_keyring(tmp_path / "new", [CLIENT]).signing_key(CLIENT).hex()
        key_file.write_text(f"{new}\n{old}\n")  # the new key signs, both verify
        WireClient(fast_stack.address("order"), creds=Credentials(CLIENT, Keyring(old_only))).close()
        key_file.write_text(f"{new}\n")  # the old key is retired
        with pytest.raises(AuthenticationError, match="AUTHENTICATION_FAILED"):
            WireClient(fast_stack.address("order"), creds=Credentials(CLIENT, Keyring(old_only)))
        with OrderSession(fast_stack.address("order")) as after:
            assert after.report_for(after.new_order(Side.SELL, "MSFT", 5, price_units(420))).exec_type == (
                ExecType.NEW
            )
        assert before.report_for(before.new_order(Side.BUY, "MSFT", 5, price_units(420))).exec_type == (
            ExecType.NEW
        )
    assert fast_stack.processes["order"].pid == pid and fast_stack.processes["order"].poll() is None


def test_a_service_that_cannot_prove_the_key_is_not_trusted(tmp_path: Path) -> None:
    keyring = generate_keyring(tmp_path / "keys", [CLIENT])
    creds = Credentials(CLIENT, keyring)
    challenge = Challenge(b"n" * 16, identity_bytes("order"))
    logon, key = creds.logon(challenge)
    with pytest.raises(AuthenticationError, match="did not prove"):
        creds.check_ack(key, challenge, logon, LogonAck(identity_bytes("order"), b"\0" * 32))


# Everything a peer can put on the wire, framed correctly: session, order entry, internal and feed messages.
ANY_MESSAGE = st.one_of(
    *(message_strategy(spec) for spec in LAYOUTS.values() if not spec.record_size and spec.cls is not Logon)
)


def test_hostile_sequences_of_well_formed_messages_kill_no_session_and_no_service(
    make_stack: StackFactory,
) -> None:
    stack = make_stack()
    sessions = {
        (component, identity): WireClient(stack.address(component), creds=stack.credentials(identity))
        for component in BUNDLED
        for identity in CALLERS[component]
    }

    granted = {
        (component, identity): st.one_of(
            *(message_strategy(spec) for spec in LAYOUTS.values() if spec.cls.__name__ in names)
        )
        for component, identities in CALLERS.items()
        for identity, names in identities.items()
    }

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        targets=st.lists(st.sampled_from(sorted(sessions)), min_size=1, max_size=60),
        cut=st.integers(1, 60),
        data=st.data(),
    )
    def attack(targets: list[tuple[str, str]], cut: int, data: st.DataObject) -> None:
        # Mostly what the session's role may send, with hostile values; sometimes anything at all.
        steps = [
            (target, data.draw(st.one_of(granted[target], granted[target], ANY_MESSAGE)))
            for target in targets
        ]
        streams: dict[tuple[str, str], bytes] = {}
        for target, message in steps:
            session = sessions[target]
            session.sequence += 1
            streams[target] = streams.get(target, b"") + encode(message, session.sequence)
        for target, stream in streams.items():
            # Frames split across writes as TCP may deliver them, then a frame of an undefined type: every
            # live session refuses it, so its answer proves the session survived what came before.
            sessions[target].send_raw(stream[:cut])
            sessions[target].send_raw(stream[cut:] + HEADER.pack(12, 222, PROTOCOL_VERSION, 0))
        for target in streams:
            sessions[target].wait_for(
                lambda m: isinstance(m, SessionReject) and m.ref_type == 222, timeout=10
            )

    attack()
    for session in sessions.values():
        session.close()
    for component in BUNDLED:
        assert stack.processes[component].poll() is None, stack.log_tail(component)
    assert not error_lines(stack), "\n".join(error_lines(stack)[:5])


def test_extreme_values_each_role_may_send_are_answered_without_an_error(stack: Stack) -> None:
    top_price, top_quantity = 2**63 - 1, 2**32 - 1
    aapl = symbol_bytes("AAPL")
    with WireClient(stack.address("risk"), creds=stack.credentials("order")) as order:
        order.send(RiskCheck(1, 2**32 - 1, aapl, 1, 1, top_quantity, top_price, 0))
        order.send(RiskCheck(2, 0, aapl, 2, 2, top_quantity, 0, 1))
        assert {order.wait_for(lambda m: isinstance(m, RiskResult)).order_id for _ in range(2)} == {1, 2}
    with WireClient(stack.address("execution"), creds=stack.credentials("order")) as order:
        order.send(RouteOrder(1, 7, aapl, 1, 1, 1, top_quantity, top_price))
        order.send(RouteOrder(2, 7, aapl, 2, 2, 2, top_quantity, 0))
        trade = order.wait_for(lambda m: isinstance(m, VenueReport) and m.exec_type == ExecType.TRADE)
        assert (trade.last_quantity, trade.last_price) == (top_quantity, top_price)
    assert not error_lines(stack), "\n".join(error_lines(stack)[:5])
