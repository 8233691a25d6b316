"""xtalforge.makers."""
