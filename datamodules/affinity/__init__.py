"""affinity family."""
