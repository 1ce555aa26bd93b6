"""Locust scenario for Sluice's KServe V2 JSON endpoint.

Run it headless through the locust CLI, in its own process, against a running gateway:

    locust -f loadtests/locustfile.py --headless -u 64 -r 16 -t 30s --host http://127.0.0.1:8000

Pick one user class by naming it last (both run, weighted 3:1, when none is named):

    locust -f loadtests/locustfile.py --headless -u 64 -r 16 -t 30s --host http://127.0.0.1:8000 V2InferUser
    SLUICE_ROWS=8 locust -f loadtests/locustfile.py --headless -u 16 -r 16 -t 30s \
        --host http://127.0.0.1:8000 V2BatchUser

Add `--csv bench-results/locust` for per-request CSVs, `--processes -1` for one worker per core.

Environment:
    SLUICE_MODEL   model name (default: mlp)
    SLUICE_ROWS    rows per request for V2BatchUser (default: 1)
    SLUICE_WAIT_S  think time between a user's requests, seconds (default: 0, a closed loop like wrk)

Why locust as well as wrk (loadtests/bench.py): wrk gives the throughput figures that compare with the
peers, but it replays one fixed request. Locust checks every answer (status 200, an `outputs` list with
one row per input row), mixes in health probes, and is easy to extend into mixed-traffic scenarios. It
costs far more client CPU per request than wrk, so on a small box its req/s says more about locust than
about the gateway; read its failure counts and latency, and take throughput from bench.py.

Never import this file (or locust) into a process that also imports ray, or anything using gRPC's
threads: locust monkey-patches the standard library with gevent at import time, which breaks them. Keep
locust in its own process, as above.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import orjson
from locust import FastHttpUser, constant, task

MODEL = os.environ.get("SLUICE_MODEL", "mlp")
ROWS = max(1, int(os.environ.get("SLUICE_ROWS", "1")))
WAIT_S = float(os.environ.get("SLUICE_WAIT_S", "0"))
INFER_PATH = f"/v2/models/{MODEL}/infer"


def v2_body(rows: int) -> bytes:
    """`rows` rows of 32 float32 from default_rng(42): for rows=1 exactly the reference request_b1.json.

    Built once at import, so the client spends its CPU on sending, not on encoding.
    """
    x = np.random.default_rng(42).standard_normal((rows, 32)).astype(np.float32)
    payload = {"inputs": [{"name": "input", "shape": [rows, 32], "datatype": "FP32", "data": x.ravel()}]}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


HEADERS = {"Content-Type": "application/json"}
# locust annotates `data` as str | dict, but its docstring and geventhttpclient take bytes too; sending the
# prebuilt bytes saves an encode per request, hence the `type: ignore[arg-type]` at the two posts below.


def check_v2_response(response: Any, rows: int) -> None:
    """Fail the sample unless it is a 200 whose body holds an `outputs` list with `rows` rows.

    A fast 4xx/5xx would otherwise count as throughput.
    """
    if response.status_code != 200:
        response.failure(f"status {response.status_code}: {(response.text or '')[:200]}")
        return
    try:
        doc = orjson.loads(response.content or b"")
    except orjson.JSONDecodeError as exc:
        response.failure(f"response is not JSON: {exc}")
        return
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        response.failure("response has no `outputs` list")
        return
    shape = outputs[0].get("shape") if isinstance(outputs[0], dict) else None
    if not shape or shape[0] != rows:
        response.failure(f"expected {rows} output row(s), got shape {shape}")
        return
    response.success()


class V2InferUser(FastHttpUser):
    """The reference request (one row), with an occasional readiness probe as a load balancer would."""

    weight = 3
    wait_time = constant(WAIT_S)
    network_timeout = 10.0
    connection_timeout = 10.0
    body = v2_body(1)

    @task(20)
    def infer_one_row(self) -> None:
        with self.client.post(
            INFER_PATH,
            data=self.body,  # type: ignore[arg-type]
            headers=HEADERS,
            name=f"{INFER_PATH} [rows=1]",
            catch_response=True,
        ) as response:
            check_v2_response(response, 1)

    @task(1)
    def health_ready(self) -> None:
        with self.client.get("/v2/health/ready", name="/v2/health/ready", catch_response=True) as response:
            if response.status_code == 200:
                response.success()
            else:
                response.failure(f"not ready: status {response.status_code}")


class V2BatchUser(FastHttpUser):
    """Client-side batches of SLUICE_ROWS rows: exercises the gateway's splitting and merging of
    multi-row requests inside its dynamic batches."""

    weight = 1
    wait_time = constant(WAIT_S)
    network_timeout = 10.0
    connection_timeout = 10.0
    body = v2_body(ROWS)

    @task
    def infer_batch(self) -> None:
        with self.client.post(
            INFER_PATH,
            data=self.body,  # type: ignore[arg-type]
            headers=HEADERS,
            name=f"{INFER_PATH} [rows={ROWS}]",
            catch_response=True,
        ) as response:
            check_v2_response(response, ROWS)
