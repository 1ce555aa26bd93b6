"""Schemathesis against the gateway's own OpenAPI schema: the V2 routes (infer included) and the admin API.

Every operation in /openapi.json gets generated requests, valid and not, with the admin token; every answer
must be below 500, have a documented status and content type, and match its documented schema. The run is
derandomised (the same examples every time), so a failure here is a real regression, not a dice roll.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.cli.demo import build_demo_repository
from tests.helpers import GatewayProcess, gateway_process

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzzed_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway of its own: the admin calls change what it serves."""
    tmp = tmp_path_factory.mktemp("fuzz")
    repo: Path = build_demo_repository(tmp / "models")
    with gateway_process(repo, "--max-body-bytes", str(1024 * 1024), tmp=tmp) as gw:
        yield gw


def test_every_answer_is_documented_and_below_500(fuzzed_gateway: GatewayProcess) -> None:
    """Each operation in turn (schemathesis' own pytest plugin does not run under this pytest), all of them
    tried before failing, so one report lists every operation that broke its promise."""
    gw = fuzzed_gateway
    schema = schemathesis.openapi.from_url(f"{gw.http_url}/openapi.json")
    failures: dict[str, str] = {}
    tried = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        tried += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=gw.http_url, headers=gw.admin_headers, checks=CHECKS)

        try:
            run()
        except BaseException as exc:  # schemathesis reports failures as an exception group
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failures[operation.label] = str(exc)[:2000]
    assert tried >= 25, f"only {tried} operations in the schema"
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())
    assert gw.proc.poll() is None
