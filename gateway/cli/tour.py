"""`sluice demo`'s tour: bounded traffic that walks the demo model `churn` through what the console shows.

It is a client of the gateway like any other (V2 infer, the feedback route and the admin API with the
demo's token), run in a thread beside it, in six acts of a few minutes in all:

1. version 2 shadows the stable version 1 (shadow agreement);
2. a canary of version 3, which fails on about a fifth of its inputs, is rolled back by the controller
   (the console shows the failing error_ratio check and its figures);
3. a canary of version 2 goes through its steps and is promoted;
4. labels arrive for most predictions a few seconds late, so accuracy, coverage and lag are measured;
5. a drift episode: four features shift for a minute, the scheduled drift runs see it and the
   `input-drift` trigger fires; then the traffic goes back to normal;
6. a delivery: a retrained version 4 is written into the (local) repository and a sync finds it; churn's
   delivery policy shadows it behind the gate, rolls it out and promotes it, with nothing done by hand.

Then the traffic stops; the gateway keeps serving. Every loop is bounded by time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.cli.demo import CHURN_FEATURES, CHURN_TRUTH, TOUR_VERSION, build_churn

MODEL = "churn"
RATE = 25.0
"""churn requests per second (one row each); mlp and classifier get a trickle beside it."""
LABEL_DELAY_S = 3.0
LABEL_SHARE = 0.7
SHIFTED = 4
"""The drift episode moves the first this many features by DRIFT_SHIFT standard deviations."""
DRIFT_SHIFT = 1.5


class Traffic:
    """churn requests at RATE, their labels a little later, and a trickle to mlp and classifier."""

    def __init__(self, base_url: str, seed: int = 7) -> None:
        self.base_url = base_url
        self.rng = np.random.default_rng(seed)
        self.shift = 0.0
        self.sent = 0
        self.labeled = 0
        self._pending: deque[tuple[float, str, int]] = deque()

    def run(self, stop: threading.Event, deadline: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            tick = 0
            next_at = time.monotonic()
            while not stop.is_set() and time.monotonic() < deadline:
                self._churn(http)
                if tick % 5 == 0:
                    self._trickle(http)
                if tick % 50 == 0:
                    self._labels(http)
                tick += 1
                next_at += 1.0 / RATE
                stop.wait(max(0.0, next_at - time.monotonic()))

    def _churn(self, http: httpx.Client) -> None:
        row = self.rng.standard_normal(len(CHURN_FEATURES)).astype(np.float32)
        row[:SHIFTED] += self.shift
        body = {"inputs": [{"name": "features", "shape": [1, len(row)], "datatype": "FP32", "data": row.tolist()}]}
        try:
            answer = http.post(f"/v2/models/{MODEL}/infer", json=body)
        except httpx.HTTPError:
            return
        self.sent += 1
        if answer.status_code == 200 and self.rng.random() < LABEL_SHARE:
            truth = int(float(row @ CHURN_TRUTH) > 0)
            if self.rng.random() < 0.05:
                truth = 1 - truth  # the world is noisy: no model is right every time
            self._pending.append((time.monotonic(), answer.json()["id"], truth))

    def _trickle(self, http: httpx.Client) -> None:
        row = self.rng.standard_normal(32).astype(np.float32).tolist()
        for model in ("mlp", "classifier"):
            body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": row}]}
            with contextlib.suppress(httpx.HTTPError):
                http.post(f"/v2/models/{model}/infer", json=body)

    def _labels(self, http: httpx.Client) -> None:
        """Label the predictions older than LABEL_DELAY_S (the prediction log stores them in batches first)."""
        ripe = []
        while self._pending and time.monotonic() - self._pending[0][0] > LABEL_DELAY_S:
            ripe.append(self._pending.popleft())
        if not ripe:
            return
        labels = [{"id": pid, "value": truth} for _, pid, truth in ripe]
        try:
            answer = http.post(f"/v2/models/{MODEL}/feedback", json={"labels": labels})
        except httpx.HTTPError:
            return
        if answer.status_code == 200:
            self.labeled += len(labels)


class Tour:
    def __init__(self, base_url: str, token: str, say: Callable[[str], None] = print, repo: Path | None = None) -> None:
        """`repo`: the demo's local model repository, where the last act writes a new version (None: no such act)."""
        self.repo = repo
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.say = say
        self.traffic = Traffic(base_url)

    def run(self, stop: threading.Event, *, max_s: float = 900.0) -> None:
        """The whole tour; returns when it is over, when `stop` is set, or after `max_s` at most."""
        deadline = time.monotonic() + max_s
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as admin:
            if not self._wait(stop, deadline, lambda: admin.get("/v2/health/ready").status_code == 200, 120):
                self.say("tour: the gateway did not get ready; no tour")
                return
            self._reset(admin)
            feeder = threading.Thread(target=self.traffic.run, args=(stop, deadline), name="tour-traffic", daemon=True)
            feeder.start()
            try:
                self._acts(admin, stop, deadline)
            finally:
                stop.set()
                feeder.join(15)
        self.say(
            f"tour: finished ({self.traffic.sent} churn requests, {self.traffic.labeled} labels); "
            "the gateway keeps serving until Ctrl-C"
        )

    def _acts(self, admin: httpx.Client, stop: threading.Event, deadline: float) -> None:
        self.say("tour 1/6: version 2 of churn shadows the stable version 1 (shadow agreement)")
        if not self._pause(stop, 30):
            return
        self.say("tour 2/6: a canary of version 3, which fails on a fifth of its inputs; the controller rolls it back")
        self._rollout(
            admin, "3", [{"name": "error_ratio", "threshold": 1.5}, {"name": "latency_p99_ratio", "threshold": 3}]
        )
        phase = self._until_finished(admin, stop, deadline, 150)
        self.say(f"tour: the canary of version 3 ended {phase}")
        admin.post(f"/admin/models/{MODEL}/shadow", json={"versions": []})
        self.say("tour 3/6: a canary of version 2 (shadow agreement, errors, latency), promoted when every step passes")
        self._rollout(
            admin,
            "2",
            [
                {"name": "error_ratio", "threshold": 1.5},
                # lenient: on a small shared machine one busy second moves a p99 of 25 requests a second a lot
                {"name": "latency_p99_ratio", "threshold": 5},
                {"name": "shadow_agreement", "threshold": 0.7},
            ],
            failure_threshold=3,
        )
        phase = self._until_finished(admin, stop, deadline, 200)
        self.say(f"tour: the canary of version 2 ended {phase}; labels keep arriving (act 4/6: accuracy by version)")
        if not self._pause(stop, 20):
            return
        self.say(
            f"tour 5/6: a drift episode: {SHIFTED} features move by {DRIFT_SHIFT} standard deviations for a minute"
        )
        self.traffic.shift = DRIFT_SHIFT
        if not self._pause(stop, 60):
            return
        self.traffic.shift = 0.0
        self.say("tour: the drift episode is over; normal traffic for half a minute")
        if not self._pause(stop, 30):
            return
        self.delivery_act(admin, stop, deadline)

    def delivery_act(self, admin: httpx.Client, stop: threading.Event, deadline: float) -> None:
        """Act 6: what a retraining job does (write the next version into the repository), then a sync; churn's
        delivery policy does the rest."""
        if self.repo is None:
            return
        self.say(
            f"tour 6/6: a retrained version {TOUR_VERSION} lands in the repository; churn's delivery policy "
            "shadows it, rolls it out and promotes it (sluice repo delivery churn)"
        )
        build_churn(self.repo / MODEL / TOUR_VERSION / "model.onnx", TOUR_VERSION)
        answer = admin.post("/admin/repository/sync")
        if answer.status_code != 200:
            self.say(f"tour: the repository sync failed: {answer.text}")
            return
        phase = "unknown"

        def finished() -> bool:
            nonlocal phase
            doc = admin.get(f"/admin/models/{MODEL}/delivery").json().get("delivery") or {}
            if doc.get("version") == TOUR_VERSION:
                phase = doc.get("phase", phase)
            return phase in ("promoted", "rolled_back", "rejected", "passed", "superseded")

        self._wait(stop, deadline, finished, 240)
        self.say(f"tour: the delivery of version {TOUR_VERSION} ended {phase}")

    def _reset(self, admin: httpx.Client) -> None:
        """Start from version 1 as the stable with version 2 as its shadow, whatever an earlier run left."""
        rollout = admin.get(f"/admin/models/{MODEL}/rollout")
        if rollout.status_code == 200 and rollout.json()["phase"] in ("progressing", "paused"):
            admin.post(f"/admin/models/{MODEL}/rollout/abort")
        policy = {"stable": "1", "canary": None, "canary_weight": 0, "shadows": ["2"], "shadow_sample_rate": 1.0}
        answer = admin.put(f"/admin/models/{MODEL}/traffic", json=policy)
        if answer.status_code != 200:
            self.say(f"tour: cannot set churn's traffic: {answer.text}")

    def _rollout(
        self, admin: httpx.Client, version: str, checks: list[dict[str, Any]], failure_threshold: int = 2
    ) -> None:
        spec = {
            "canary": version,
            "steps": [10, 25, 50, 100],
            "interval_s": 15,
            "failure_threshold": failure_threshold,
            "checks": checks,
        }
        answer = admin.post(f"/admin/models/{MODEL}/rollout", json=spec)
        if answer.status_code != 201:
            self.say(f"tour: the rollout of version {version} was refused: {answer.text}")

    def _until_finished(self, admin: httpx.Client, stop: threading.Event, deadline: float, limit_s: float) -> str:
        phase = "unknown"

        def finished() -> bool:
            nonlocal phase
            answer = admin.get(f"/admin/models/{MODEL}/rollout")
            phase = answer.json().get("phase", phase) if answer.status_code == 200 else phase
            return phase in ("promoted", "rolled_back", "aborted")

        self._wait(stop, deadline, finished, limit_s)
        return phase

    @staticmethod
    def _pause(stop: threading.Event, seconds: float) -> bool:
        return not stop.wait(seconds)

    @staticmethod
    def _wait(stop: threading.Event, deadline: float, condition: Callable[[], bool], limit_s: float) -> bool:
        until = min(deadline, time.monotonic() + limit_s)
        while not stop.is_set() and time.monotonic() < until:
            try:
                if condition():
                    return True
            except httpx.HTTPError:
                pass
            stop.wait(1.0)
        return False


def start_tour(
    base_url: str, token: str, say: Callable[[str], None] = print, repo: Path | None = None
) -> threading.Event:
    """Run the tour in a daemon thread; set the returned event to end it early. `repo`: see `Tour`."""
    stop = threading.Event()
    tour = Tour(base_url, token, say, repo)
    threading.Thread(target=tour.run, args=(stop,), name="tour", daemon=True).start()
    return stop
