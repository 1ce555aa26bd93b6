"""Console sessions revoked before their expiry, shared by every replica through the state database.

A console session is a signed cookie that any replica verifies alone; a logout must end it on all of
them, including one that becomes the leader later. The revoked session ids live here until the
sessions would have expired anyway. Not control state: any replica may write it (unfenced).
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from gateway.storage.engine import Database
from gateway.storage.schema import console_revocations_table, utc_now


class ConsoleSessionState(Database):
    def revoke_console_session(self, sid: str, expires_at: float) -> None:
        """Refuse session `sid` from now on (idempotent); prune revocations of sessions already expired."""
        t = console_revocations_table
        with self._write() as conn:
            conn.execute(delete(t).where(t.c.expires_at < time.time()))
            try:
                with conn.begin_nested():
                    conn.execute(insert(t).values(sid=sid, expires_at=float(expires_at), revoked_at=utc_now()))
            except IntegrityError:
                pass  # revoked already (a second logout of the same session, or a race with another replica)

    def console_session_revoked(self, sid: str) -> bool:
        t = console_revocations_table
        with self._read() as conn:
            return conn.execute(select(t.c.sid).where(t.c.sid == sid)).first() is not None
