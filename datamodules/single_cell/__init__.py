"""single-cell family."""
