"""Name -> class registries: features, augmentations, layouts and architectures are looked up by name.

Adding a thing is one file plus one decorator line::

    @FEATURES.register("logmel")
    class LogMel(nn.Module): ...

plus one import line in its package's ``__init__`` (so the entry is registered whatever is imported first).
An unknown name is an error that lists the valid ones.

A top-level package of its own, importing nothing of ours, so that ``kernels`` (torch), ``shards`` (no torch)
and ``engine`` can all hold registries without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of classes (or factories) with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise KeyError(f"unknown {self.kind} {name!r}; valid: {valid}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
