"""Console sessions: a signed cookie, a CSRF token bound to it, and the login form's own nonce.

A session is `base64url(json) "." base64url(HMAC-SHA256)`, the JSON naming the admin token's name, an
expiry and a random session id. The MAC key is derived from that one token (`AdminAuth.derived_key`):

- every replica configured with the same tokens verifies every session, with no state to share, so
  a session made by one leader still holds after the lease moves to another replica;
- replacing or removing a token ends its sessions at once, on every replica;
- the cookie carries no token, and the token cannot be recovered from it.

A logout ends the session on every replica before its expiry: its id goes into the state database's
revocations (`Store.revoke_console_session`), which each request's `check` reads (a revoked id is
then remembered in the process). The cookie alone would stay valid until it expires, and a copy of
it would keep working.

The CSRF token is an HMAC of the session id under the same key: nothing to store, valid exactly as
long as its session. Actions must send it (header `X-CSRF-Token`, or form field `csrf`); with the
cookie's SameSite=Strict that makes a cross-site request forgery fail twice over. The login form,
which has no session yet, carries a random nonce that must equal a SameSite=Strict cookie set with
the form, so another site cannot log a browser in under its own token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.admin.auth import AdminAuth

COOKIE = "sluice_console"
LOGIN_COOKIE = "sluice_console_login"
COOKIE_PATH = "/console"
TTL_S = 8 * 3600
"""A session lasts a working day; then the console asks for the token again."""
_PURPOSE = b"sluice console session v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    actor: str
    """The admin token's name: what the audit log records for the console's actions."""
    expires_at: int
    sid: str
    csrf: str


class Revocations(Protocol):
    """Where ended sessions are kept for every replica to see (the state store)."""

    def revoke_console_session(self, sid: str, expires_at: float) -> None: ...

    def console_session_revoked(self, sid: str) -> bool: ...


class Sessions:
    """Issues and verifies console sessions for the tokens `auth` knows; ends them in `revocations`."""

    def __init__(
        self,
        auth: AdminAuth,
        revocations: Revocations | None = None,
        *,
        ttl_s: int = TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.auth = auth
        self.revocations = revocations
        self.ttl_s = ttl_s
        self.clock = clock
        self._revoked: dict[str, int] = {}
        """Session ids seen revoked, with their expiry: a revocation is for good, so it need not be read again."""

    def issue(self, actor: str) -> tuple[str, Session]:
        """A new session for a token name that `auth.authenticate` has just accepted: (cookie value, session)."""
        key = self.auth.derived_key(actor, _PURPOSE)
        if key is None:
            raise ValueError(f"no admin token is named {actor!r}")
        expires_at = int(self.clock()) + self.ttl_s
        sid = _b64(secrets.token_bytes(16))
        payload = _b64(json.dumps({"a": actor, "e": expires_at, "s": sid}, separators=(",", ":")).encode())
        mac = _b64(hmac.new(key, payload.encode("ascii"), "sha256").digest())
        return f"{payload}.{mac}", Session(actor, expires_at, sid, _csrf(key, sid))

    def verify(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, or None when it is absent, forged, expired or its token is gone."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        try:
            doc = json.loads(_unb64(payload))
            presented = _unb64(mac)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        if not isinstance(doc, dict):
            return None
        actor, expires_at, sid = doc.get("a"), doc.get("e"), doc.get("s")
        if not (isinstance(actor, str) and isinstance(expires_at, int) and isinstance(sid, str)):
            return None
        key = self.auth.derived_key(actor, _PURPOSE)
        if key is None:
            return None
        expected = hmac.new(key, payload.encode("ascii"), "sha256").digest()
        if not hmac.compare_digest(presented, expected) or expires_at <= self.clock():
            return None
        return Session(actor, expires_at, sid, _csrf(key, sid))

    async def check(self, cookie: str | None) -> Session | None:
        """`verify`, and the session must not have been ended by a logout (on any replica)."""
        session = self.verify(cookie)
        if session is None or self.revocations is None:
            return session
        if session.sid in self._revoked:
            return None
        if await asyncio.to_thread(self.revocations.console_session_revoked, session.sid):
            self._remember(session)
            return None
        return session

    async def revoke(self, session: Session) -> None:
        """End `session` now, on every replica (its cookie, even a copy of it, is refused from now on)."""
        if self.revocations is not None:
            await asyncio.to_thread(self.revocations.revoke_console_session, session.sid, session.expires_at)
        self._remember(session)

    def _remember(self, session: Session) -> None:
        now = self.clock()
        for sid in [sid for sid, expires_at in self._revoked.items() if expires_at <= now]:
            del self._revoked[sid]
        self._revoked[session.sid] = session.expires_at

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), session.csrf.encode())


def _csrf(key: bytes, sid: str) -> str:
    return _b64(hmac.new(key, b"csrf:" + sid.encode("ascii"), "sha256").digest())


def login_nonce() -> str:
    """The login form's nonce (also set as the LOGIN_COOKIE): a cross-site form post cannot know it."""
    return _b64(secrets.token_bytes(16))
