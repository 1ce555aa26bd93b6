"""Turn dashboard queries into what Grafana sends Prometheus, for the live test and the previews.

Grafana substitutes template variables before a query leaves it: a variable set to All becomes its
`allValue` (`.+`), `$__rate_interval` becomes a window of at least four scrape intervals. Variable
queries `label_values(<selector>, <label>)` become Prometheus' label values API with a `match[]`.
"""

from __future__ import annotations

import re

from dashboards.build import ALL, Dashboard

_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)$")


def substitute(expr: str, d: Dashboard, rate_interval: str, values: dict[str, str] | None = None) -> str:
    """`expr` with every variable of `d` replaced (All unless `values` names a regex) and the interval set."""
    out = expr.replace("$__rate_interval", rate_interval)
    for v in sorted(d.variables, key=lambda v: -len(v.name)):  # $version before a hypothetical $v
        out = out.replace(f"${v.name}", (values or {}).get(v.name, ALL))
    if "$" in out:
        raise ValueError(f"an unknown variable is left in {out!r}")
    return out


def label_values_call(query: str) -> tuple[str, str]:
    """(label, series selector) of a `label_values(selector, label)` variable query."""
    m = _LABEL_VALUES.match(query.strip())
    if m is None:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return m.group("label"), m.group("match")
