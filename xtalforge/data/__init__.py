"""xtalforge.data."""
