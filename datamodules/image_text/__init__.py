"""image-text family."""
