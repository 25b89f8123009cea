"""Storage: traces persisted off the hot path."""
