"""Every failure a user can cause raises a subclass of `NeurocodecError`.

The CLI catches exactly this base class and prints its message; anything else
escaping is a bug in neurocodec, not in the user's input.
"""

from __future__ import annotations

__all__ = [
    "NeurocodecError",
    "BitstreamError",
    "ModelMismatchError",
    "InputError",
    "VideoIOError",
]


class NeurocodecError(Exception):
    """Base class of all errors neurocodec raises on purpose."""


class BitstreamError(NeurocodecError):
    """A .ncv stream is truncated, corrupt, of an unknown version or absurdly sized."""


class ModelMismatchError(NeurocodecError):
    """A stream names a model, or weights, that this installation does not have."""


class InputError(NeurocodecError):
    """Frames or parameters handed to the API are of the wrong shape, type or range."""


class VideoIOError(NeurocodecError):
    """A video file cannot be read or written (missing, unreadable, unsupported)."""
