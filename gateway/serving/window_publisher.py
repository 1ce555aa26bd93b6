"""A replica's window statistics, handed to the state store about once a second.

The control plane judges rollouts on every replica's traffic: each replica drains its recorder
(`window_stats`) and stores the summaries, one row per (model, version, routing revision). A
publish that fails is kept and carried by the next one, so a database hiccup delays figures but
does not lose them; only the work is off the event loop (a worker thread), never the draining.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from gateway.serving.window_stats import WindowKey, WindowRecorder, WindowSummary

log = logging.getLogger(__name__)


class WindowSink(Protocol):
    def publish_windows(self, replica: str, summaries: Sequence[tuple[WindowKey, WindowSummary]]) -> None: ...


class WindowPublisher:
    def __init__(self, recorder: WindowRecorder, sink: WindowSink, replica: str) -> None:
        self._recorder = recorder
        self._sink = sink
        self.replica = replica
        self._lock = asyncio.Lock()

    async def publish(self) -> None:
        """Store what was recorded since the last publish; on failure keep it for the next one."""
        async with self._lock:
            drained = self._recorder.drain()
            if not drained:
                return
            try:
                await asyncio.to_thread(self._sink.publish_windows, self.replica, drained)
            except Exception as exc:
                self._recorder.restore(drained)
                log.warning("could not publish window statistics (kept for the next try): %s", exc)
