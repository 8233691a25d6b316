"""xtalforge: RL-guided crystal discovery campaigns as provenance-tracked jobflow workflows."""

from __future__ import annotations

__version__ = "0.1.0"
