"""PNG previews of the dashboards' main panels, drawn with matplotlib from a real Prometheus.

The live test (tests/test_dashboards_live.py) drives a real gateway through its scenario with a real
Prometheus scraping it, then calls `render` with the very queries the dashboards hold, so a preview shows
what Grafana would. `make dashboards-previews` reruns that test with SLUICE_PREVIEWS_DIR=docs/previews.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dashboards.build import Dashboard, Panel, overview, rollouts
from dashboards.queries import substitute

MAIN_PANELS = {
    "sluice-overview": (
        "Requests per second by outcome",
        "Error ratio by version",
        "Request latency p50 / p95 / p99",
        "Queue wait p50 / p99",
        "Mean rows and requests per batch",
        "Load shed (429) and timeouts per second",
    ),
    "sluice-rollouts": (
        "Traffic weight by version",
        "Error ratio by version",
        "p99 latency by version",
        "Rollout step",
        "Shadow agreement",
        "Shadow copies per second by outcome",
    ),
}


class RangeQuery(Protocol):
    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]: ...


def _legend(template: str, labels: dict[str, str]) -> str:
    if not labels:
        return "none yet (or on() vector(0))"
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return text if template and template != "__auto" else ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _scale(unit: str) -> tuple[float, str]:
    """Factor and axis label that show a Grafana unit in human terms."""
    return {
        "s": (1000.0, "milliseconds"),
        "percentunit": (100.0, "percent"),
        "percent": (1.0, "percent"),
        "reqps": (1.0, "requests / s"),
        "ops": (1.0, "per second"),
        "bytes": (1 / 2**20, "MiB"),
    }.get(unit, (1.0, unit))


def render_dashboard(
    prom: RangeQuery, d: Dashboard, titles: Sequence[str], start: float, end: float, out: Path, rate_interval: str
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[Panel] = [p for t in titles for p in d.panels if p.title == t]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.3 * rows), squeeze=False)
    step = max(1.0, (end - start) / 300)
    for ax, panel in zip((a for row in axes for a in row), panels, strict=False):
        factor, label = _scale(panel.unit)
        for target in panel.targets:
            expr = substitute(target.expr, d, rate_interval)
            for series in prom.query_range(expr, start, end, step):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) * factor for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=_legend(target.legend, series["metric"])[:40])
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel("seconds into the test scenario", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.6)
    for ax in [a for row in axes for a in row][len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{d.title} (main panels, from a real Prometheus scraping a real gateway)", fontsize=11)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{d.uid}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def render(prom: RangeQuery, start: float, end: float, out: Path, rate_interval: str = "5s") -> list[Path]:
    """Write one PNG per previewed dashboard (Overview, Rollouts) into `out`."""
    makers: tuple[Callable[[], Dashboard], ...] = (overview, rollouts)
    return [
        render_dashboard(prom, d, MAIN_PANELS[d.uid], start, end, out, rate_interval) for d in (m() for m in makers)
    ]
