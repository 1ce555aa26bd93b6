"""Free ports for the servers that tests and benchmarks start on 127.0.0.1.

The port the kernel hands out for `bind(port 0)` comes from its ephemeral range, the range every outgoing
connection also draws its local port from. Between the probe and the server's own bind, a client connection
(the test suite opens thousands) can take it, and the server dies with "address already in use": CI lost a
whole module's gateway that way, its gRPC port taken. Ports between Ray's worker ports (10002-19999 by
default) and the ephemeral range are never handed out by the kernel on its own, so only another explicit
bind can race for one, and a random pick among twelve thousand makes that rare.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 20000
"""Above Ray's default worker ports (10002-19999), which a local Ray binds as its workers start."""

_rng = random.SystemRandom()


def ephemeral_start(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port of the kernel's ephemeral range (0 where it cannot be read: not Linux)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listening socket could take `port` now (without SO_REUSEADDR: a port in TIME_WAIT counts
    as taken, which errs on the safe side)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, outside the ephemeral range where the kernel allows it."""
    top = ephemeral_start()
    if top - _LOWEST >= 1000:
        for _ in range(100):
            port = _rng.randrange(_LOWEST, top)
            if bindable(port, host):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
