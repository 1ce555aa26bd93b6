"""Metrics (every name defined once), OpenTelemetry tracing and structured logs."""
