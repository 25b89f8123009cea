"""Metrics (and, later, alerts and anomaly detection)."""
