"""The ports tests and benchmarks give their servers: outside the range outgoing connections draw from."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from loadtests.ports import bindable, ephemeral_start, free_port
from tests import helpers


@pytest.mark.skipif(ephemeral_start() < 21000, reason="needs Linux's ephemeral range above Ray's worker ports")
def test_a_picked_port_is_below_the_ephemeral_range_and_above_rays_workers() -> None:
    # A port in the ephemeral range can be taken by any client's connect between the pick and the server's
    # bind (CI lost a gateway's gRPC port that way); Ray's workers bind 10002-19999.
    start = ephemeral_start()
    ports = {free_port() for _ in range(200)}
    assert all(20000 <= port < start for port in ports), sorted(p for p in ports if not 20000 <= p < start)
    assert len(ports) > 150  # spread out, so two servers started one after the other rarely meet


def test_a_listening_port_is_not_picked_again() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        taken = listener.getsockname()[1]
        assert not bindable(taken)
        assert taken not in {free_port() for _ in range(300)}


def test_the_ephemeral_range_is_read_from_the_kernel_setting(tmp_path: Path) -> None:
    setting = tmp_path / "ip_local_port_range"
    setting.write_text("40000\t60999\n")
    assert ephemeral_start(setting) == 40000
    assert ephemeral_start(tmp_path / "missing") == 0


@pytest.mark.parametrize("taken", ["http", "grpc"])
def test_a_gateway_whose_port_was_taken_first_starts_again_on_new_ports(
    taken: str, demo_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race CI lost: another process binds the picked port before the gateway does.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port()))
        squatter.listen()
        held = squatter.getsockname()[1]
        picks = iter([held, free_port()] if taken == "http" else [free_port(), held])
        monkeypatch.setattr(helpers, "free_port", lambda: next(picks, None) or free_port())
        with helpers.gateway_process(demo_repo, tmp=tmp_path) as gw:
            assert held not in (gw.http_port, gw.grpc_port)
            assert httpx.get(f"{gw.http_url}/v2/health/ready", timeout=5).status_code == 200
        (first_log,) = [p for p in tmp_path.glob("gateway-*.log") if p.name != gw.log_path.name]
        assert "already in use" in first_log.read_text().lower()
