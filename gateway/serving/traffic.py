"""A model's traffic policy and the routing decision it implies. Pure: no I/O, no clock, no randomness.

Weights use a low-discrepancy sequence (the golden-ratio Weyl sequence) over a per-model
request counter: over any run of n requests the canary's share is within O(log n / n) of its
weight, yet there is no short period a client's own request pattern could line up with.

A sticky key (a header or a V2 parameter) is hashed to a fixed point in [0, 1); the canary
takes the keys below its weight. The same key therefore lands on the same version while the
weights stay, and raising the weight moves only the keys between the old and new weight.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

_GOLDEN = 0.6180339887498949  # frac(phi)
_SQRT2 = 0.41421356237309515  # frac(sqrt 2): an independent sequence for shadow sampling


class Route(str, enum.Enum):
    STABLE = "stable"
    CANARY = "canary"
    PINNED = "pinned"
    SHADOW = "shadow"


@dataclass(frozen=True)
class TrafficPolicy:
    """Live settings: every change applies to the next request, no reload."""

    stable: str | None = None
    """Version serving the rest of the traffic; None: the newest ready version."""
    canary: str | None = None
    canary_weight: float = 0.0
    """Percent of traffic (0-100) to the canary."""
    shadows: tuple[str, ...] = ()
    """Versions that get a copy of requests; their answers never reach the caller."""
    shadow_sample_rate: float = 1.0
    """Share (0-1) of requests copied to the shadows."""
    sticky_header: str | None = None
    """Header (gRPC: metadata key) whose value keeps a caller on one version."""
    sticky_parameter: str | None = None
    """V2 request parameter that does the same; used when the header is absent."""

    def problems(self) -> list[str]:
        """What is wrong with this policy by itself (the caller checks versions exist and are loaded)."""
        issues = []
        if not 0.0 <= self.canary_weight <= 100.0:
            issues.append(f"canary_weight {self.canary_weight} is outside 0-100")
        if not 0.0 <= self.shadow_sample_rate <= 1.0:
            issues.append(f"shadow_sample_rate {self.shadow_sample_rate} is outside 0-1")
        if self.canary_weight > 0 and self.canary is None:
            issues.append("canary_weight is set but there is no canary version")
        if self.canary is not None and self.canary == self.stable:
            issues.append(f"version {self.canary} cannot be both stable and canary")
        if self.canary is not None and self.canary in self.shadows:
            issues.append(f"version {self.canary} cannot be both canary and shadow")
        if len(set(self.shadows)) != len(self.shadows):
            issues.append("shadow versions repeat")
        return issues


@dataclass(frozen=True)
class RouteDecision:
    route: Route
    version: str | None
    """None for STABLE when the policy names no stable version: the newest ready one serves."""
    shadows: tuple[str, ...] = field(default=())


def sticky_point(key: str) -> float:
    """A key's fixed place in [0, 1)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def sequence_point(n: int, step: float = _GOLDEN) -> float:
    return (n * step) % 1.0


def decide_route(policy: TrafficPolicy, sequence: int, sticky_key: str | None = None) -> RouteDecision:
    """Where request number `sequence` of this model goes, and which shadows get a copy."""
    weight = policy.canary_weight / 100.0
    point = sticky_point(sticky_key) if sticky_key is not None else sequence_point(sequence)
    version: str | None
    if policy.canary is not None and point < weight:
        route, version = Route.CANARY, policy.canary
    else:
        route, version = Route.STABLE, policy.stable
    shadows: tuple[str, ...] = ()
    if policy.shadows and sequence_point(sequence, _SQRT2) < policy.shadow_sample_rate:
        shadows = tuple(s for s in policy.shadows if s != version)
    return RouteDecision(route, version, shadows)
