"""Input guards: tainted values stopped (or flagged) before they reach a model.

A model's `guards` in config.yaml say, per input tensor, whether NaN and infinities may pass, and per
feature (one column on an input's last axis, named as the monitors name it: `input[3]`, a width-1 input's
own name, or an entry of `monitoring.feature_names`), a value range and/or the allowed categories.
The guards are compiled against the version's signature when it loads (an unknown input or feature fails
that version's load, naming it) and checked on each request after validation, before it is queued.

`action: refuse` answers 400 naming the input, the feature and the value; `action: flag` serves the
request and names the broken features in the response's `flagged_features` parameter. Either way each
broken feature is counted in `sluice_input_guard_violations_total{model,version,feature,action}`, beside
the drift figures on the Monitoring dashboard. A range does not catch NaN (NaN compares false with
everything): refuse it with `allow_nan: false`.

Only models with guards pay for them: a few vectorised numpy reductions per guarded feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.serving.model_config import ConfigError, GuardsSection
from runtimes.tensors import ModelSignature


@dataclass(frozen=True)
class Violation:
    feature: str
    """The feature (or, for NaN and infinities, the input) that broke its guard."""
    message: str


@dataclass(frozen=True)
class _TensorCheck:
    name: str
    allow_nan: bool
    allow_inf: bool


@dataclass(frozen=True)
class _FeatureCheck:
    feature: str
    tensor: str
    column: int | None
    """Index on the last axis; None: the whole tensor (a width-1 input)."""
    low: float | None
    high: float | None
    allowed: np.ndarray | None


class InputGuards:
    def __init__(self, action: str, tensors: tuple[_TensorCheck, ...], features: tuple[_FeatureCheck, ...]) -> None:
        self.action = action
        self._tensors = tensors
        self._features = features

    @property
    def refuse(self) -> bool:
        return self.action == "refuse"

    @classmethod
    def compile(cls, section: GuardsSection, signature: ModelSignature, feature_names: list[str]) -> InputGuards | None:
        """The guards for one version's signature; None when the model has none. ConfigError names what is
        unknown."""
        if not section.enabled:
            return None
        columns = _feature_columns(signature)
        if feature_names and len(feature_names) == len(columns):
            columns.update({name: columns[key] for name, key in zip(feature_names, list(columns), strict=True)})
        tensors = []
        for name, guard in section.inputs.items():
            if name not in signature.by_name:
                raise ConfigError(
                    f"guards.inputs: the model has no input {name!r} (it has {sorted(signature.by_name)})"
                )
            tensors.append(_TensorCheck(name, guard.allow_nan, guard.allow_inf))
        features = []
        for feature, fguard in section.features.items():
            where = columns.get(feature)
            if where is None:
                known = ", ".join(list(columns)[:20])
                raise ConfigError(f"guards.features: no feature {feature!r} (features: {known})")
            allowed = None if fguard.allowed is None else np.unique(np.asarray(fguard.allowed, dtype=np.float64))
            features.append(_FeatureCheck(feature, where[0], where[1], fguard.min, fguard.max, allowed))
        return cls(section.action, tuple(tensors), tuple(features))

    def check(self, inputs: dict[str, np.ndarray]) -> list[Violation]:
        """Every guard the request breaks (one violation per input or feature)."""
        found: list[Violation] = []
        for t in self._tensors:
            array = inputs[t.name]
            if array.dtype.kind not in "fc":
                continue
            if not t.allow_nan and np.isnan(array).any():
                found.append(Violation(t.name, f"input '{t.name}' holds NaN, which this model refuses"))
            elif not t.allow_inf and np.isinf(array).any():
                found.append(Violation(t.name, f"input '{t.name}' holds an infinity, which this model refuses"))
        for f in self._features:
            array = inputs[f.tensor]
            values = array if f.column is None else array[..., f.column]
            if values.size == 0 or values.dtype.kind not in "biuf":
                continue
            what = f"input '{f.tensor}' feature '{f.feature}'"
            if f.low is not None and (low := values.min()) < f.low:
                found.append(Violation(f.feature, f"{what}: {low:g} is below the minimum {f.low:g}"))
            elif f.high is not None and (high := values.max()) > f.high:
                found.append(Violation(f.feature, f"{what}: {high:g} is above the maximum {f.high:g}"))
            elif f.allowed is not None:
                outside = values[~np.isin(values, f.allowed)]
                if outside.size:
                    allowed = ", ".join(f"{v:g}" for v in f.allowed[:10])
                    found.append(
                        Violation(f.feature, f"{what}: {outside.flat[0]:g} is not an allowed value ({allowed})")
                    )
        return found


def _feature_columns(signature: ModelSignature) -> dict[str, tuple[str, int | None]]:
    """Feature name -> (input, column), in the monitors' order: `name[i]` on the last axis of a multi-column
    input, the input's own name for a width-1 one."""
    columns: dict[str, tuple[str, int | None]] = {}
    for spec in signature.inputs:
        width = spec.shape[-1] if len(spec.shape) >= 2 else 1
        if width > 1:
            for i in range(width):
                columns[f"{spec.name}[{i}]"] = (spec.name, i)
        else:
            columns[spec.name] = (spec.name, None)
    return columns
