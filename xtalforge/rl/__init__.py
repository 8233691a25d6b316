"""xtalforge.rl."""
