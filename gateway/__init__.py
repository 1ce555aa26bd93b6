"""Sluice gateway: protocol adapters, data plane, batching, model registry and the CLI.

The public surface is small: `Gateway` (the composition root) and `GatewaySettings`.
"""

from gateway.settings import GatewaySettings

__all__ = ["GatewaySettings"]
