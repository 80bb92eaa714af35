"""The handshake's proof of a per-job (or per-node) token.

The client never sends its token: it proves it knows it with an HMAC-SHA256 over both
sides' nonces, the mode and the name it claims, so a recorded handshake cannot be replayed
against a new challenge and a token of job A gives nothing for job B::

    client                                  agent
      HELLO(name, mode, nonce_c, versions)  ->
                                            <-  CHALLENGE(nonce_a, version)
      AUTH(hmac(token, transcript))         ->
                                            <-  WELCOME(...)   or ERROR(AUTH_FAILED) + close

An unknown job and a wrong token get the same answer, so the agent does not reveal which
jobs exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from conspirator.wire.frames import NONCE_SIZE, Hello

_LABEL = b"conspirator/v1/auth\x00"


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def new_token() -> str:
    """A fresh per-job token (what the operator stores in the job's Secret)."""
    return secrets.token_urlsafe(32)


def transcript(hello: Hello, agent_nonce: bytes, version: int) -> bytes:
    return b"".join((_LABEL, bytes([hello.mode]), hello.identity.encode(), b"\x00",
                     hello.nonce, agent_nonce, version.to_bytes(2, "little")))


def prove(token: str | bytes, hello: Hello, agent_nonce: bytes, version: int) -> bytes:
    key = token.encode() if isinstance(token, str) else token
    return hmac.new(key, transcript(hello, agent_nonce, version), hashlib.sha256).digest()


def verify(token: str | bytes | None, hello: Hello, agent_nonce: bytes, version: int,
           mac: bytes) -> bool:
    """Constant-time check; an unknown name (``token is None``) is checked against a
    random key so that it costs the same as a wrong token."""
    key = secrets.token_bytes(32) if token is None else token
    ok = hmac.compare_digest(prove(key, hello, agent_nonce, version), mac)
    return ok and token is not None
