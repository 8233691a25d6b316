"""xtalforge.reports."""
