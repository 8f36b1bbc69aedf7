"""Pretrained models by name: ``SCHEME:NAME`` -> an ordinary genre-engine checkpoint file.

``musicnn:MSD_musicnn``, ``musicnn:MTT_musicnn``, ``musicnn:MSD_vgg`` and ``musicnn:MTT_vgg`` are the four
checkpoints of the ``musicnn`` 0.1.0 wheel (:mod:`engine.pretrained.musicnn`), converted on first use into the
cache directory (:func:`cache_dir`). :func:`resolve_checkpoint` is the one entry point: every command that
opens a checkpoint (``train --init-from``, ``classify``, ``evaluate``, ``embed``) goes through
``engine.checkpoint.load_checkpoint``, which calls it; anything that is not ``SCHEME:NAME`` with a known
scheme is returned unchanged as a path.

A converter is imported when its scheme is first resolved (the package itself stays light: ``engine.checkpoint``
imports it). Converters write with :mod:`engine.checkpoint_format` and share :mod:`engine.pretrained.cache`,
so nothing they import leads back here.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from engine.pretrained.cache import PretrainedError, cache_dir

__all__ = ["SCHEMES", "PretrainedError", "cache_dir", "is_pretrained_spec", "pretrained_names", "resolve_checkpoint"]

SCHEMES = {"musicnn": "engine.pretrained.musicnn"}
"""Scheme -> converter module; each module has ``NAMES`` and ``ensure_checkpoint(name) -> Path``."""


def is_pretrained_spec(spec: str | os.PathLike) -> bool:
    """True for ``SCHEME:NAME`` with a known scheme (and no existing file of that literal name)."""
    text = os.fspath(spec)
    scheme, sep, _ = text.partition(":")
    return bool(sep) and scheme in SCHEMES and not Path(text).exists()


def pretrained_names() -> list[str]:
    """Every ``SCHEME:NAME`` that :func:`resolve_checkpoint` provides (``musicnn:MSD_musicnn``, ...), in order."""
    return [f"{scheme}:{name}" for scheme, mod in SCHEMES.items() for name in importlib.import_module(mod).NAMES]


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """``musicnn:MSD_musicnn`` -> the converted checkpoint's path (converting it on first use); any other
    value -> ``Path(spec)`` unchanged. Raises :class:`PretrainedError` with the fix for a missing source."""
    if not is_pretrained_spec(spec):
        return Path(spec)
    scheme, _, name = os.fspath(spec).partition(":")
    module = importlib.import_module(SCHEMES[scheme])
    return module.ensure_checkpoint(name)
