"""xtalforge.stores."""
