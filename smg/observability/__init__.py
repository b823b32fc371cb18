"""Prometheus metrics, log formatting and request ids."""
