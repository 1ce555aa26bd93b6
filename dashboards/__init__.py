"""Grafana dashboards and Prometheus rules for Sluice; `python -m dashboards.build` writes the JSON."""
