"""Who may talk to whom: identities, session keys, the logon handshake and the callers of each service.

Every session opens with a challenge-response logon (services/README.md, "Sessions"): the service sends a
random nonce, the peer answers with its identity, a nonce of its own and HMAC-SHA256 over both nonces and
both identities under the identity's key; the service answers with a proof of its own under the same key
(so a peer knows it reached a real service). After the logon a session carries no authentication at all:
what an identity may send is decided once, at logon, by the handlers its session gets.

Keys live in a directory with one file per identity (a Kubernetes Secret volume: the operator mounts the
keys of a service's own identity and of its callers). A file holds one or more hex keys, one per line: the
first signs, any verifies, so a key is rotated without a restart and without refusing anyone (add the new
key second, then first, then drop the old one). Files are re-read when they change.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tradeplane_services.catalog import CLIENT, IDENTITIES
from tradeplane_services.protocol import (
    Challenge,
    FrameError,
    Logon,
    LogonAck,
    Reason,
    SessionReject,
    StreamDecoder,
    encode,
)

KEY_BYTES = 32
NONCE_BYTES = 16
_LOGON = b"tradeplane logon\0"
_ACCEPT = b"tradeplane accept\0"


class AuthenticationError(ConnectionError):
    """A logon that did not succeed: the reason and what the other side said."""


def identity_bytes(identity: str) -> bytes:
    return identity.encode("ascii").ljust(16, b"\0")


def identity_text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("ascii", "replace")


def logon_proof(key: bytes, challenge: Challenge, identity: bytes, nonce: bytes) -> bytes:
    message = _LOGON + challenge.nonce + nonce + challenge.service + identity
    return hmac.new(key, message, hashlib.sha256).digest()


def accept_proof(key: bytes, challenge: Challenge, logon: Logon) -> bytes:
    message = _ACCEPT + logon.nonce + challenge.nonce + logon.identity + challenge.service
    return hmac.new(key, message, hashlib.sha256).digest()


@dataclass
class Keyring:
    """The keys in `directory`, one file per identity, re-read when a file changes."""

    directory: Path
    _cache: dict[str, tuple[tuple[int, int, int], tuple[bytes, ...]]] = field(default_factory=dict)

    def keys(self, identity: str) -> tuple[bytes, ...]:
        """Every key of `identity` (the first one signs); () when there is no file or no valid key."""
        path = self.directory / identity
        try:
            stat = os.stat(path)  # follows the Secret volume's ..data symlink: a rotation changes it
        except OSError:
            return ()
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(identity)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        keys = tuple(parse_keys(path.read_text(errors="replace")))
        self._cache[identity] = (stamp, keys)
        return keys

    def signing_key(self, identity: str) -> bytes:
        keys = self.keys(identity)
        if not keys:
            raise AuthenticationError(f"no key for identity {identity!r} in {self.directory}")
        return keys[0]


def parse_keys(text: str) -> Iterable[bytes]:
    for line in text.split():
        try:
            key = bytes.fromhex(line)
        except ValueError:
            continue
        if len(key) >= 16:
            yield key


def generate_keyring(directory: Path, identities: Iterable[str] = IDENTITIES) -> Keyring:
    """A fresh random key per identity (files the owner alone may read); existing files are kept."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for identity in identities:
        path = directory / identity
        if not path.exists():
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(KEY_BYTES) + "\n")
    return Keyring(directory)


@dataclass(frozen=True)
class Credentials:
    """Who a client or peer logs on as, and where its keys are."""

    identity: str
    keyring: Keyring

    def logon(self, challenge: Challenge) -> tuple[Logon, bytes]:
        """The Logon answering `challenge`, and the key that signed it (to check the LogonAck with)."""
        key = self.keyring.signing_key(self.identity)
        identity = identity_bytes(self.identity)
        nonce = secrets.token_bytes(NONCE_BYTES)
        return Logon(identity, nonce, logon_proof(key, challenge, identity, nonce)), key

    def check_ack(self, key: bytes, challenge: Challenge, logon: Logon, ack: LogonAck) -> None:
        if ack.service != challenge.service or not hmac.compare_digest(
            ack.proof, accept_proof(key, challenge, logon)
        ):
            raise AuthenticationError(
                f"{identity_text(challenge.service)} did not prove it holds the key of {self.identity!r}"
            )


def credentials(identity: str | None = None, keys: Path | str | None = None) -> Credentials:
    """Credentials from arguments, else TRADEPLANE_IDENTITY (default client) and TRADEPLANE_KEYS_DIR."""
    identity = identity or os.environ.get("TRADEPLANE_IDENTITY") or CLIENT
    directory = keys or os.environ.get("TRADEPLANE_KEYS_DIR")
    if not directory:
        raise AuthenticationError(
            "no session keys: pass --keys DIR or set TRADEPLANE_KEYS_DIR (tradeplane-svc stack prints it)"
        )
    return Credentials(identity, Keyring(Path(directory)))


def describe_reject(reject: SessionReject) -> str:
    try:
        reason = Reason(reject.reason).name
    except ValueError:
        reason = f"reason {reject.reason}"
    return f"{reason}: {reject.text.rstrip(bytes(1)).decode('ascii', 'replace')}"


def logon(sock: socket.socket, creds: Credentials, timeout: float = 5.0) -> tuple[StreamDecoder, list[Any]]:
    """Log a blocking socket on; the decoder to keep reading with and anything that came after the ack."""
    decoder = StreamDecoder()
    deadline = time.monotonic() + timeout
    challenge: Challenge | None = None
    pending: tuple[Logon, bytes] | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AuthenticationError(f"no logon answer within {timeout}s")
        sock.settimeout(remaining)
        data = sock.recv(1 << 16)
        if not data:
            raise AuthenticationError("the service closed the connection during logon")
        items = decoder.feed(data)
        for position, item in enumerate(items):
            if isinstance(item, FrameError):
                raise AuthenticationError(f"logon: {item.error}")
            message = item[0]
            if isinstance(message, Challenge) and challenge is None:
                challenge = message
                pending = creds.logon(challenge)
                sock.sendall(encode(pending[0], 1))
            elif isinstance(message, LogonAck) and challenge is not None and pending is not None:
                creds.check_ack(pending[1], challenge, pending[0], message)
                # FrameErrors are NamedTuples: only a plain tuple is a (message, sequence) pair.
                return decoder, [i[0] if type(i) is tuple else i for i in items[position + 1 :]]
            elif isinstance(message, SessionReject):
                raise AuthenticationError(describe_reject(message))
