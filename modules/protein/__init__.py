"""protein family."""
