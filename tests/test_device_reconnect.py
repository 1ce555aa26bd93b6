"""A worker's connection to its runtime process comes back whatever its first tries to reconnect fail with.

Real parts: the supervisor's `DeviceHosts` starts a real runtime process (spawned, ONNX Runtime on the CPU), the
worker's side is the real `HostClient` and `DeviceRuntime` in the test's event loop. The process is killed,
and while it is down its socket's folder cannot be reached (connect fails with ENOTDIR, not "refused"), then the
restarted process cannot load the version for a while (its file is away): the worker keeps trying both, and
the version answers again, from the new process, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gateway.cli.demo import build_reference_mlp
from gateway.serving.device_hosts import DeviceHosts
from gateway.serving.device_runtime import DeviceRuntime, HostClient, version_key
from gateway.serving.repository import scan_repository

CONFIG = "runtime: {placement: device, execution_providers: [cpu]}\n"


def move(source: Path, target: Path) -> None:
    source.rename(target)


async def eventually(predicate: Callable[[], bool], timeout: float, what: str, tend: DeviceHosts | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        if tend is not None:
            tend.tend()  # the supervisor's loop, here
        await asyncio.sleep(0.05)


async def test_a_worker_reconnects_and_reloads_whatever_its_first_tries_fail_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gateway.serving.device_runtime")
    repo = tmp_path / "models"
    build_reference_mlp(repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.yaml").write_text(CONFIG)
    (source,) = scan_repository(repo)
    version = source.versions[0]
    hosts = DeviceHosts(["cpu"], workers=1, log_format="text")
    hosts.start()
    sockets = hosts.hosts.sockets
    assert sockets is not None
    client = HostClient("cpu", sockets["cpu"])
    try:
        await client.connect(120)
        runtime = DeviceRuntime(client, version_key(source, version), source, version)
        await runtime.reload()
        client.runtimes.add(runtime)
        row = {"input": np.ones((1, 32), dtype=np.float32)}
        before = await runtime.infer(row)
        first = hosts.pids()["cpu"]
        assert first is not None and runtime.info.parameters["device_pid"] == str(first)

        folder = Path(client.path).parent
        away = folder.with_name(folder.name + ".away")
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: not client.connected.is_set(), 30, "the loss seen")
        folder.rename(away)
        folder.write_text("")  # connecting now fails with NotADirectoryError
        tried = "connecting to the runtime process for cpu failed ([Errno 20] Not a directory"
        await eventually(lambda: caplog.text.count(tried) >= 2, 30, "two tries refused with ENOTDIR")
        assert not runtime.loaded
        folder.unlink()
        away.rename(folder)
        # The restarted process cannot load the version at first (its file is away): the worker tries again.
        artifact = Path(version.artifact or "")
        move(artifact, artifact.with_suffix(".away"))
        failed = "reload on the restarted runtime process failed"
        await eventually(lambda: caplog.text.count(failed) >= 2, 120, "two failed loads", tend=hosts)
        assert not runtime.loaded
        move(artifact.with_suffix(".away"), artifact)

        await eventually(lambda: runtime.loaded, 60, "the version loaded again", tend=hosts)
        second = hosts.pids()["cpu"]
        assert second not in (None, first)
        assert runtime.info.parameters["device_pid"] == str(second)
        after = await runtime.infer(row)
        np.testing.assert_array_equal(after["output"], before["output"])
    finally:
        await client.close()
        hosts.stop()


def test_a_call_sent_after_the_runtime_process_hung_up_but_before_the_worker_noticed_is_a_503(tmp_path: Path) -> None:
    """The runtime process is gone and uvloop has closed the connection's transport, but the reader has not seen the
    end yet: a batch sent in that moment fails as `RuntimeUnavailable` (503), like those in flight, not with uvloop's
    RuntimeError ("unable to perform operation on <UnixTransport closed=True>": a 500 that blamed the request)."""
    import uvloop

    from runtimes.base import RuntimeUnavailable

    async def scenario() -> None:
        path = str(tmp_path / "host.sock")
        server = await asyncio.start_unix_server(lambda r, w: w.close(), path)
        client = HostClient("cpu:9", path)
        _, writer = await asyncio.open_unix_connection(path)
        client._writer = writer
        client.connected.set()
        writer.transport.abort()  # the hang-up, before the reader task would call _lost
        for _ in range(3):  # uvloop closes the transport's handle on the next turns of the loop
            await asyncio.sleep(0)
        with pytest.raises(RuntimeUnavailable, match="cpu:9"):
            client.send("infer", "k")
        assert not client._pending
        server.close()
        await server.wait_closed()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
