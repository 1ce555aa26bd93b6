from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.demo import build_demo_repository
from tests.helpers import GatewayProcess, gateway_process


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("demo") / "models")


@pytest.fixture(scope="session")
def demo_gateway(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One `sluice serve` process on the demo repository, shared by the protocol tests."""
    with gateway_process(
        demo_repo, "--max-body-bytes", str(4 * 1024 * 1024), tmp=tmp_path_factory.mktemp("logs")
    ) as gw:
        yield gw
