"""xtalforge.screening."""
