"""`sluice serve --ray`: start (or join) Ray, deploy the gateway on Ray Serve, and remove it on SIGTERM.

1. Refuse SQLite: every replica, on every node, shares the state, so it is PostgreSQL (SLUICE_DATABASE_URL).
2. Start a local Ray of this process's own (`--ray-num-cpus`, no dashboard, a small object store, on the
   gateway's host address), even where a `ray start` runs on the machine, or join a running cluster with
   `--ray-address` (which refuses the options that size a local Ray); Serve's own HTTP proxy stays off (clients
   reach the ingress replicas' own servers).
3. Bring the schema up to date; refuse (a local Ray) or warn (a joined cluster) when the deployments' CPUs and
   GPUs at start exceed the cluster's (`capacity`: Serve would wait for ever); deploy each model version the
   repository selects (and that was not unloaded) as its own Serve application, with replicas, autoscaling,
   CPUs and GPUs from its config.yaml.
4. Deploy the ingress application: `--ray-ingress-replicas` gateway replicas on the given ports.
5. Wait for SIGTERM or SIGINT. (The leader deploys a version loaded through the admin API before it records
   it as loaded, and removes the application of a version unloaded: `gateway.ray.ingress`.)
6. On the signal: remove the ingress (its replicas drain, flush their logs and give the lease up) and its
   metrics directory, then the versions; stop Serve and, if this process started Ray, Ray itself: nothing is
   left running, nor a metrics directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class RayModeError(RuntimeError):
    """Ray mode cannot start as asked (the message says why and what to change)."""


def check_settings(settings: GatewaySettings) -> str:
    """The PostgreSQL URL Ray mode keeps its state in; RayModeError for anything else."""
    url = settings.database_url.get_secret_value() if settings.database_url else ""
    if not url.startswith(("postgresql", "postgres")):
        raise RayModeError(
            "Ray mode keeps the gateway's state in PostgreSQL, shared by every replica on every node: set "
            "SLUICE_DATABASE_URL=postgresql+psycopg://user@host/db (SQLite is one machine's file)"
        )
    if settings.http_port == 0 or settings.grpc_port == 0:
        raise RayModeError("Ray mode needs fixed ports (every ingress replica binds the same ones): not 0")
    if settings.ray_address is not None:
        refused = [
            name
            for name, given in (
                ("--ray-num-cpus (SLUICE_RAY_NUM_CPUS)", settings.ray_num_cpus is not None),
                ("SLUICE_RAY_OBJECT_STORE_MB", "ray_object_store_mb" in settings.model_fields_set),
            )
            if given
        ]
        if refused:
            raise RayModeError(
                f"--ray-address joins a running cluster ({settings.ray_address}), which refuses the options that size "
                f"a new Ray: drop {' and '.join(refused)} (or drop --ray-address to start a Ray of this process's own)"
            )
    return url


def run_ray(
    settings: GatewaySettings,
    *,
    address: str | None,
    ingress_replicas: int,
    num_cpus: int | None,
    ingress_cpus: float,
    object_store_mb: int,
    on_ready: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    url = check_settings(settings)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from gateway.ray.app import ingress_application
    from gateway.ray.capacity import shortfall, starting_demand
    from gateway.ray.metrics_dir import new_metrics_dir, remove_metrics_dir
    from gateway.ray.naming import INGRESS_APP, VERSION_APP_PREFIX, version_app
    from gateway.ray.repository import RepositoryRef
    from gateway.ray.runtime import deploy_version, version_application
    from gateway.serving.repository import scan_repository
    from gateway.storage.store import Store

    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    started_ray = address is None
    if started_ray:
        # A Ray of this process's own, always: with no address, ray.init() would join the cluster a `ray start`
        # recorded on this machine (or RAY_ADDRESS names), which refuses the options below, and which SIGTERM
        # must not stop. "local" starts one whatever is recorded; RAY_ADDRESS goes, so nothing it starts joins.
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=object_store_mb * 1024 * 1024,
            _node_ip_address=settings.host if settings.host not in ("0.0.0.0", "::") else None,
            namespace="sluice",
            log_to_driver=False,
        )
    else:
        try:
            ray.init(address=address, namespace="sluice", log_to_driver=False)
        except (ValueError, ConnectionError) as exc:  # a malformed address, or nothing answering there
            raise RayModeError(f"cannot join the Ray cluster at --ray-address {address}: {exc}") from None
    # After ray.init: Ray's own failure handler would take SIGTERM and end the process with nothing cleaned up.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    store = Store(url)
    serve_started = False
    metrics_dir = new_metrics_dir()
    try:
        store.upgrade()
        unloaded = {(r["model"], r["version"]) for r in store.versions() if r["desired"] == "unloaded"}
        repository = RepositoryRef.of(settings)
        listing = repository.open()
        listing.refresh()  # RepositoryUnavailable: an object store away, with no listing in the cache
        wanted = [
            (source, v)
            for source in scan_repository(listing)
            if not source.error and source.config.runtime.kind == "onnx"
            for v in source.versions
            if (source.name, v.version) not in unloaded
        ]
        demand = starting_demand(((s.name, v.version, s.config) for s, v in wanted), ingress_replicas, ingress_cpus)
        if (problem := shortfall(demand, ray.cluster_resources())) is not None:  # type: ignore[no-untyped-call]
            if started_ray:
                raise RayModeError(problem)
            log.warning("%s; waiting, in case the cluster adds nodes", problem)
        serve.start(proxy_location="Disabled")
        serve_started = True
        applications = [(s, v, version_application(repository, s, v)) for s, v in wanted]
        with ThreadPoolExecutor(4) as pool:  # each waits for its application to run
            list(pool.map(lambda sva: deploy_version(repository, *sva), applications))
        ingress = ingress_application(settings, replicas=ingress_replicas, cpus=ingress_cpus, metrics_dir=metrics_dir)
        serve.run(ingress, name=INGRESS_APP, route_prefix=None)
        cluster = ray.get_runtime_context().gcs_address
        log.info("serving on Ray", extra={"ray_address": cluster, "ingress_replicas": ingress_replicas})
        if on_ready is not None:
            versions = [version_app(s.name, v.version) for s, v in wanted]
            on_ready({"versions": versions, "ingress": ingress_replicas, "ray_address": cluster})
        while not stopping:
            time.sleep(0.5)
        log.info("stopping: removing the ingress (its replicas drain), then the versions")
        serve.delete(INGRESS_APP)
        remove_metrics_dir(metrics_dir, every_node=not started_ray)
        if not started_ray:  # a cluster of someone else's: remove only what this run deployed
            versions = [app for app in serve.status().applications if app.startswith(VERSION_APP_PREFIX)]
            for app in versions:
                serve.delete(app, _blocking=False)
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline and set(versions) & set(serve.status().applications):
                time.sleep(0.5)
        return 0
    finally:
        store.close()
        if started_ray and serve_started:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        if started_ray:  # every replica has stopped, however the run ended
            shutil.rmtree(metrics_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
