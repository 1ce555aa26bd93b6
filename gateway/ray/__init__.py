"""Distributed mode on Ray Serve (`sluice serve --ray`, the `ray` extra): the same gateway, placed on a cluster.

- `ingress`: the ingress deployment. Each replica is a whole gateway replica (`server.Gateway`): Sluice's own
  HTTP and gRPC servers on the node's ports (SO_REUSEPORT, as with `--workers`), router, validation, shadow
  dispatch, prediction log, metrics; one of them holds the control plane's lease in PostgreSQL.
- `version`: one deployment per served model version, hosting the same runtime and batcher as a gateway does.
- `runtime`: the runtime seam's Ray placement: an ingress replica's batcher hands a whole batch to a version
  deployment through a `DeploymentHandle` (a handle call costs milliseconds: never one per request).
- `driver`: starts or joins Ray, deploys, waits for SIGTERM, removes what it deployed.

Nothing here re-implements routing, batching, logging or metrics: those are the gateway's own.
"""
