"""``python -m xtalforge`` runs the command line."""

from xtalforge.cli import app

app()
