"""The data plane: everything between a socket and a runtime.

Adapters (HTTP, gRPC) decode the wire format into one `InferRequest`; the router picks a version
from the read-only policy view; validation, the batcher and the runtime answer it. Nothing here
writes the traffic policy or imports the control plane.
"""
