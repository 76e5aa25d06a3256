"""Observability: Prometheus metrics and OpenTelemetry traces. Imports only the base modules."""
