"""The ingress deployment: each replica is a whole gateway replica, serving its node's ports itself.

Clients reach Sluice's own HTTP and gRPC servers in the replicas (the same ports on every node; replicas on
one node share them through SO_REUSEPORT), not Ray Serve's proxy: the proxy would add a handle call per
request (tens of milliseconds on a small box), and its gRPC proxy pickles protobuf messages, which
tritonclient's generated classes do not survive unchanged. A load balancer in front of the nodes spreads
clients over them, as it would over `--workers` machines.

The replicas share one PostgreSQL: one of them holds the control plane's lease; the others follow its
changes, publish their window statistics, and forward admin calls to it over their private listeners.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ray import serve

from gateway.observability.logs import configure_logging
from gateway.observability.metrics import MULTIPROCESS_ENV
from gateway.ray.naming import version_app
from gateway.ray.repository import RepositoryRef
from gateway.ray.runtime import RayPlacement, running
from gateway.server import Gateway, tune_gc
from gateway.serving.registry import VersionState
from gateway.settings import GatewaySettings
from gateway.tasks import cancel_and_wait, tick_forever

log = logging.getLogger(__name__)


class IngressServer:
    async def __init__(self, settings: GatewaySettings) -> None:  # type: ignore[misc] # Serve awaits it
        configure_logging(settings.log_level, settings.log_format)
        if MULTIPROCESS_ENV in os.environ:  # this node's replicas share it; it must exist before any metric does
            os.makedirs(os.environ[MULTIPROCESS_ENV], exist_ok=True)
        if settings.advertise_host is None and settings.control_host in ("0.0.0.0", "::"):
            import ray.util

            node = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
            settings = settings.model_copy(update={"advertise_host": node})
        self.gateway = Gateway(
            settings, runtime_factory=RayPlacement(RepositoryRef.of(settings)), reuse_port=True, fetch_artifacts=False
        )
        await self.gateway.start()
        self._reaper = asyncio.get_running_loop().create_task(
            tick_forever(self._remove_unloaded, 2.0, "removing unloaded versions"), name="version-reaper"
        )
        tune_gc(settings.gc_gen0_threshold)
        log.info(
            "ingress replica ready",
            extra={"http_port": self.gateway.http_port, "leader": self.gateway.election.is_leader},
        )

    async def _remove_unloaded(self) -> None:
        """While leading: remove the application of each version whose desired state is "unloaded" (every ingress
        replica has stopped routing to it by then; this one's registry already closed its runtime)."""
        if not self.gateway.election.is_leader:
            return
        models = self.gateway.registry.models
        for row in await asyncio.to_thread(self.gateway.store.versions):
            model = models.get(row["model"])
            served = model.versions.get(row["version"]) if model is not None else None
            if row["desired"] != "unloaded" or (served is not None and served.state is not VersionState.UNLOADED):
                continue  # loaded, or being loaded again (the record follows the load)
            app = version_app(row["model"], row["version"])
            if await asyncio.to_thread(running, app) and (served is None or served.state is VersionState.UNLOADED):
                log.info("removing %s (unloaded)", app)
                await asyncio.to_thread(serve.delete, app)

    async def check_health(self) -> None:
        """Serve restarts a replica whose check raises: one whose servers stopped."""
        if not self.gateway.serving:
            raise RuntimeError("the gateway's servers have stopped")

    def describe(self) -> dict[str, object]:
        """This replica: its pid, ports, private listener and whether it leads (tests and `sluice` read it)."""
        return {
            "pid": os.getpid(),
            "http_port": self.gateway.http_port,
            "grpc_port": self.gateway.grpc_port,
            "admin": self.gateway.control_url,
            "leader": self.gateway.election.is_leader,
        }

    async def __del__(self) -> None:
        await cancel_and_wait(self._reaper)
        await self.gateway.stop()
