"""Torch device resolution, shared by every stage."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """Return the torch device name for a setting.

    Parameters
    ----------
    device
        ``"auto"`` (``"cuda"`` when a GPU is visible, else ``"cpu"``) or any torch device
        name, returned unchanged.

    Returns
    -------
    str
        The device name.
    """
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
