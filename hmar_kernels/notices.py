"""Warnings said once per process: why a faster path was skipped (the "no silent slow fallbacks" rule)."""
import warnings

_said: set = set()


def warn_once(message: str, stacklevel: int = 4):
    """``warnings.warn(message)`` the first time this message comes up, nothing after."""
    if message not in _said:
        _said.add(message)
        warnings.warn(message, stacklevel=stacklevel)
