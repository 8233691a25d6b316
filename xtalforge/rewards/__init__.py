"""xtalforge.rewards."""
