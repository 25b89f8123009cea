"""Admin HTTP: health and metrics now; the REST API grows here."""
