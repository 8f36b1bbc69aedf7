"""What every pretrained converter shares: the cache directory of converted checkpoints and the error for a
model that cannot be provided. (Its own module: :mod:`engine.pretrained` names the converters, so they cannot
import these from the package without a cycle.)"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "PretrainedError", "cache_dir"]

CACHE_ENV = "GENRE_ENGINE_CACHE"


class PretrainedError(FileNotFoundError):
    """A pretrained model that cannot be provided (unknown name, source package missing, bad source file)."""


def cache_dir() -> Path:
    """Where converted pretrained checkpoints live: ``$GENRE_ENGINE_CACHE/pretrained`` if the variable is set,
    else ``$XDG_CACHE_HOME/genre-engine/pretrained`` (default ``~/.cache/genre-engine/pretrained``)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "pretrained"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "genre-engine" / "pretrained"
