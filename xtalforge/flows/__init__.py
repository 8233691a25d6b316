"""xtalforge.flows."""
