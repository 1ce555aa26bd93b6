"""The watchdog over a version's runtime calls: a call that never returns must not hold its slot for ever.

Each runtime call (one per batch, never one per request) gets a deadline, the model's
`watchdog.call_timeout_ms`: a timer on the event loop cancels the batch's task when it passes, and the
runtime stops the work on cancellation (ONNX Runtime's terminate flag, a remote call's cancellation), so
the batcher's slot and the runtime's thread are free again. The batch's callers get 504; the hang is
counted (`sluice_runtime_hangs_total`).

`unresponsive_after` hangs in a row make the version not ready (`on_unresponsive`): the router gives a
canary's share back to the stable version, readiness and `sluice_model_ready` say so, and the requests
queued behind the hang are refused at once instead of each waiting out the limit. While it is not ready a
probe (the runtime's warm-up call, a row of zeros, under the same deadline) runs every
`probe_interval_s`; the first that answers in time makes it ready again (`on_recovered`). Any call
that answers in time ends a streak of hangs. Other versions and models are untouched: each has its own
batcher, watchdog and slots.

The cost on the hot path is one timer armed and disarmed per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from runtimes.base import ModelRuntime, RuntimeTimeout

log = logging.getLogger(__name__)


class CallHung(RuntimeTimeout):
    """A runtime call ran past the watchdog's limit and was cancelled (not any one request's fault)."""


class RuntimeWatchdog:
    def __init__(
        self,
        runtime: ModelRuntime,
        limit_s: float,
        *,
        unresponsive_after: int = 3,
        probe_interval_s: float = 5.0,
        name: str = "",
        on_hang: Callable[[], None] = lambda: None,
        on_unresponsive: Callable[[str], None] = lambda _reason: None,
        on_recovered: Callable[[], None] = lambda: None,
    ) -> None:
        self._runtime = runtime
        self.limit_s = limit_s
        self.unresponsive_after = unresponsive_after
        self.probe_interval_s = probe_interval_s
        self._name = name
        self._on_hang = on_hang
        self._on_unresponsive = on_unresponsive
        self._on_recovered = on_recovered
        self.consecutive = 0
        """Hangs in a row, ended by any call that answers in time."""
        self.hangs = 0
        """Hangs since load."""
        self._probe: asyncio.Task[None] | None = None

    @property
    def unresponsive(self) -> bool:
        """True from the hang that marked the version not ready until a probe answers."""
        return self._probe is not None

    async def call(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one batch under the deadline; CallHung when it ran past it (the runtime was told to stop)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        timer = loop.call_later(self.limit_s, expire)
        try:
            result = await self._runtime.infer(inputs, outputs)
        except asyncio.CancelledError:
            if not fired:
                raise  # someone else cancelled the batch (shutdown): not a hang
            task.uncancel()
            self._hung()
            raise CallHung(
                f"the runtime call ran past the watchdog's {self.limit_s * 1000:.0f} ms and was cancelled"
            ) from None
        finally:
            timer.cancel()
        if fired:  # answered in the same turn the timer fired: absorb the cancellation it asked for
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            task.uncancel()
        self.consecutive = 0
        return result

    def _hung(self) -> None:
        self.hangs += 1
        self.consecutive += 1
        log.warning(
            "%s: runtime call hung (%d in a row): cancelled after %.0f ms",
            self._name,
            self.consecutive,
            self.limit_s * 1000,
        )
        self._on_hang()
        if self.consecutive >= self.unresponsive_after and self._probe is None:
            reason = (
                f"{self.consecutive} runtime calls in a row ran past the watchdog's {self.limit_s * 1000:.0f} ms; "
                f"probing every {self.probe_interval_s:g} s"
            )
            log.error("%s: not ready: %s", self._name, reason)
            self._probe = asyncio.get_running_loop().create_task(self._probe_until_answered(), name="watchdog-probe")
            self._on_unresponsive(reason)

    async def _probe_until_answered(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await asyncio.wait_for(self._runtime.warmup(), self.limit_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("%s: probe did not answer in time: %s", self._name, exc or type(exc).__name__)
                continue
            break
        self.consecutive = 0
        self._probe = None
        log.info("%s: a probe answered in time: ready again", self._name)
        self._on_recovered()

    async def close(self) -> None:
        """Stop probing (the version is unloaded or reloaded)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
