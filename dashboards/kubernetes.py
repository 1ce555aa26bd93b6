"""The alert rules and dashboards as Kubernetes objects, generated so they never drift from dashboards/.

`python -m dashboards.kubernetes` (also run by `make dashboards`) writes two files of deploy/kubernetes:
- `prometheusrule.yaml`: a Prometheus Operator PrometheusRule whose `spec.groups` is `alerts.yml`'s
  `groups`, copied as text (comments, block scalars and all) so a diff of the two reads the same;
- `dashboards-configmap.yaml`: a ConfigMap holding every `dashboards/*.json`, labelled for Grafana's
  dashboard sidecar (`grafana_dashboard: "1"`).
tests/test_deploy_kubernetes.py fails when the committed files differ from what this module writes.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEPLOY = HERE.parent / "deploy" / "kubernetes"
NAME = "sluice"
LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "monitoring"}
SIDECAR_LABEL = ("grafana_dashboard", "1")
"""The label Grafana's dashboard sidecar (kiwigrid k8s-sidecar, as kube-prometheus-stack sets it up) watches for."""


def _header(source: str) -> str:
    return f"# Generated from {source} by `python -m dashboards.kubernetes` (make dashboards): do not edit.\n"


def _metadata(name: str, extra_labels: dict[str, str]) -> str:
    labels = {**LABELS, **extra_labels}
    lines = ["metadata:", f"  name: {name}", "  labels:"]
    lines += [f'    {key}: "{value}"' for key, value in labels.items()]
    return "\n".join(lines) + "\n"


def prometheus_rule(alerts: str) -> str:
    """alerts.yml's `groups:` (and all below it) indented under a PrometheusRule's `spec:`."""
    lines = alerts.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise ValueError("dashboards/alerts.yml: no top-level 'groups:' key")
    if any(line and not line.startswith((" ", "#")) for line in lines[start + 1 :]):
        raise ValueError("dashboards/alerts.yml: 'groups:' must be its last top-level key")
    body = "\n".join(("  " + line) if line else "" for line in lines[start:])
    return (
        _header("dashboards/alerts.yml")
        + "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\n"
        + _metadata(NAME, {})
        + "spec:\n"
        + body
        + "\n"
    )


def dashboards_config_map(dashboards: dict[str, str]) -> str:
    """Each dashboard's JSON as a literal block under its file name (the sidecar writes it to that file)."""
    parts = [
        _header("dashboards/*.json"),
        "apiVersion: v1\nkind: ConfigMap\n",
        _metadata(f"{NAME}-dashboards", {SIDECAR_LABEL[0]: SIDECAR_LABEL[1]}),
        "data:\n",
    ]
    for name, text in sorted(dashboards.items()):
        if not text.endswith("\n") or text.endswith("\n\n") or any(line != line.rstrip() for line in text.splitlines()):
            raise ValueError(f"dashboards/{name}: a literal block needs one final newline and no trailing spaces")
        parts.append(f"  {name}: |\n")
        parts.extend(f"    {line}\n" if line else "\n" for line in text.splitlines())
    return "".join(parts)


def generate(source: Path = HERE) -> dict[str, str]:
    """File name in deploy/kubernetes -> its content, from the dashboards folder `source`."""
    dashboards = {p.name: p.read_text() for p in sorted(source.glob("*.json"))}
    return {
        "prometheusrule.yaml": prometheus_rule((source / "alerts.yml").read_text()),
        "dashboards-configmap.yaml": dashboards_config_map(dashboards),
    }


def main(argv: list[str] | None = None) -> int:
    """Write the generated files to deploy/kubernetes (or to the folder given)."""
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEPLOY
    for name, text in generate().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
