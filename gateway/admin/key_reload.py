"""Admin tokens and inference keys reloaded without a restart: on SIGHUP, and when their file changes.

Rotating a key must not need a restart (which would drop in-flight requests and re-warm every model).
`KeyReloader` re-reads both lists as at start-up (the environment's pairs plus the file's) and swaps
them into the live `AdminAuth` and `InferenceAuth` at once; a request sees either the old list or the
new one, never a mix. A file that no longer parses (a typo, a half-written file) changes nothing: the
old keys stay in force, the error is logged (naming the line, never a key) and counted in
`sluice_key_reloads_total{kind,outcome="error"}`, so a bad edit cannot lock everyone out. Nor open
inference to everyone: no inference keys means inference is open, so a reload that finds none where
some were in force (an editor's save read between its truncation and its write) is refused the same way.

Changes are noticed by polling the files' identity (inode, size, mtime) every `interval_s`: one stat
call per file, off the request path. A change is read once two polls in a row see it the same (it has
settled), so a file is not read in the middle of its write. With `--workers`, the supervisor passes
SIGHUP on to every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.admin.auth import AdminAuth, AdminTokenError, InferenceAuth
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

Identity = tuple[int, int, int] | None
"""A file's (inode, size, mtime in ns), None when it cannot be read."""


def _identity(path: Path | None) -> Identity:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class KeyReloader:
    def __init__(
        self,
        settings: GatewaySettings,
        admin: AdminAuth,
        inference: InferenceAuth,
        counter: Any,
        *,
        interval_s: float = 2.0,
    ) -> None:
        """`counter`: the `sluice_key_reloads_total` family (labels kind, outcome)."""
        self._settings = settings
        self._admin = admin
        self._inference = inference
        self._counter = counter
        self.interval_s = interval_s
        self._seen = self._identities()
        self._pending: tuple[Identity, Identity] | None = None
        self._task: asyncio.Task[None] | None = None

    def _identities(self) -> tuple[Identity, Identity]:
        s = self._settings
        return _identity(s.admin_tokens_file), _identity(s.inference_keys_file)

    def reload(self, why: str) -> None:
        """Re-read both lists now; keep the old one of any that fails."""
        self._seen = self._identities()
        loads: list[tuple[str, Callable[[], AdminAuth], AdminAuth]] = [
            ("admin", lambda: AdminAuth.from_settings(self._settings), self._admin),
            ("inference", lambda: InferenceAuth.from_inference_settings(self._settings), self._inference),
        ]
        for kind, load, live in loads:
            try:
                fresh = load()
            except AdminTokenError as exc:
                self._counter.labels(kind, "error").inc()
                log.error("%s keys not reloaded (%s); the previous ones stay in force: %s", kind, why, exc)
                continue
            except Exception as exc:  # one file's surprise must never block the other file's reload
                self._counter.labels(kind, "error").inc()
                log.error(
                    "%s keys not reloaded (%s); the previous ones stay in force: %s", kind, why, type(exc).__name__
                )
                continue
            if live.open_when_empty and live.enabled and not fresh.enabled:
                self._counter.labels(kind, "error").inc()
                log.error(
                    "%s keys not reloaded (%s); the previous ones stay in force: the file holds no keys now, and no "
                    "keys would let every caller in (to serve without keys, restart without the file)",
                    kind,
                    why,
                )
                continue
            live.replace_with(fresh)
            self._counter.labels(kind, "ok").inc()
            log.info("%s keys reloaded (%s): %s", kind, why, ", ".join(live.names) or "none")

    def start(self) -> None:
        if self._task is None and (self._settings.admin_tokens_file or self._settings.inference_keys_file):
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="key-reload")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poll(self) -> bool:
        """Reload if a file changed and has settled since the last poll (True: it reloaded)."""
        current = self._identities()
        if current == self._seen:
            self._pending = None
            return False
        if current != self._pending:
            self._pending = current  # changed: read it at the next poll if it stays so
            return False
        self._pending = None
        self.reload("file changed")
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.poll()
            except Exception:  # never stop watching
                log.exception("key reload failed")
