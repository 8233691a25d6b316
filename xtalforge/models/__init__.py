"""xtalforge.models."""
