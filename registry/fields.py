"""Allowed ranges of numeric config fields, declared next to the field and checked in one place.

A config dataclass declares a field's range where the field is::

    @dataclass
    class OptimConfig:
        lr: float = bounded(1e-3, gt=0)
        max_steps_per_epoch: int = bounded(0, ge=0, note="0 = the whole epoch")

and :func:`check_bounds` checks every such field of an object, raising ``ValueError`` with the field's
dotted name, the allowed range and the value given::

    optim.max_steps_per_epoch must be >= 0 (0 = the whole epoch), got -1

``engine.config.from_dict`` runs it on every dataclass it builds, before the dataclass's own ``validate()``
(which keeps the checks that involve several fields). A ``None`` value is always allowed (the field's type
says whether ``None`` may occur; ``none=`` says what it means). A list or tuple is checked item by item
(nested ones too), the item's index named. Floats must also be finite unless ``finite=False``; NaN never passes.

Here (a top-level package importing nothing of ours) so that ``kernels``, ``shards`` and ``engine`` configs all
declare their ranges the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["BOUNDS_KEY", "Bounds", "bounded", "bounded_fields", "check_bounds", "field_bounds"]

BOUNDS_KEY = "bounds"
"""The key of a field's ``metadata`` that holds its :class:`Bounds`."""

Number = int | float


def _num(v: Number) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Bounds:
    """The allowed range of a numeric field (or of each number of a list / tuple field).

    ``ge`` / ``gt``: lower bound (inclusive / exclusive), ``le`` / ``lt``: upper bound; ``unit`` (e.g. ``"Hz"``,
    ``"s"``) and ``what`` (e.g. ``"a probability"``) only shape the message; ``note`` says what special values
    mean (``"0 = off"``); ``none`` what ``null`` means, when the field may be null; ``finite``: refuse
    +-inf; ``together``: names of sibling fields under the same rule, named with this one in the message."""

    ge: Number | None = None
    gt: Number | None = None
    le: Number | None = None
    lt: Number | None = None
    unit: str = ""
    what: str = ""
    note: str = ""
    none: str = ""
    finite: bool = True
    together: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ge is not None and self.gt is not None or self.le is not None and self.lt is not None:
            raise ValueError("give one lower bound (ge or gt) and one upper bound (le or lt)")

    @property
    def low(self) -> Number | None:
        return self.ge if self.ge is not None else self.gt

    @property
    def high(self) -> Number | None:
        return self.le if self.le is not None else self.lt

    def allows(self, value: Number) -> bool:
        """Whether the number ``value`` is in range (NaN never is)."""
        if isinstance(value, float) and (math.isnan(value) or (self.finite and math.isinf(value))):
            return False
        return not (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        )

    def range_text(self, integer: bool = False) -> str:
        """``"in [0, 1)"``, ``">= 1"``, ``"0, 1 or 2"`` (a short range of integers), ``"within +-24"``,
        ``"finite"`` (no bound), then the unit."""
        lo, hi = self.low, self.high
        if integer and self.ge is not None and self.le is not None and 0 <= self.le - self.ge <= 3:
            values = [_num(v) for v in range(int(self.ge), int(self.le) + 1)]
            text = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]
        elif self.ge is not None and self.le is not None and self.ge == -self.le != 0:
            text = f"within +-{_num(self.le)}"
        elif lo is not None and hi is not None:
            text = f"in {'[' if self.ge is not None else '('}{_num(lo)}, {_num(hi)}{']' if self.le is not None else ')'}"
        elif lo is not None:
            text = f"{'>=' if self.ge is not None else '>'} {_num(lo)}"
        elif hi is not None:
            text = f"{'<=' if self.le is not None else '<'} {_num(hi)}"
        else:
            text = "finite"
        return f"{self.what} {text}".strip() + (f" {self.unit}" if self.unit else "")

    def message(self, name: str, value: Any, integer: bool = False, siblings: tuple[str, ...] = ()) -> str:
        """``"optim.lr must be > 0, got -1.0"``: the field (and ``siblings``, the dotted names of
        ``together``), the range, what special values and null mean, the value given. A command-line flag as
        ``name`` (``"--workers"``) reads as the command line does: ``"--workers 0: must be in [1, 1024]"``."""
        extra = " and finite" if isinstance(value, float) and not math.isfinite(value) else ""
        extra += f" ({self.note})" if self.note else ""
        extra += f" (or null: {self.none})" if self.none else ""
        if name.startswith("--"):
            return f"{name} {value!r}: must be {self.range_text(integer)}{extra}"
        names = " and ".join((name, *siblings))
        got = f"{name}={value!r}" if siblings else repr(value)
        return f"{names} must be {self.range_text(integer)}{extra}, got {got}"


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: Number | None = None,
    gt: Number | None = None,
    le: Number | None = None,
    lt: Number | None = None,
    unit: str = "",
    what: str = "",
    note: str = "",
    none: str = "",
    finite: bool = True,
    together: tuple[str, ...] = (),
) -> Any:
    """A :func:`dataclasses.field` whose metadata carries its :class:`Bounds` (see the module doc)."""
    bounds = Bounds(ge, gt, le, lt, unit, what, note, none, finite, tuple(together))
    return dataclasses.field(default=default, default_factory=default_factory, metadata={BOUNDS_KEY: bounds})


def field_bounds(f: dataclasses.Field) -> Bounds | None:
    """The :class:`Bounds` declared on field ``f``, or None."""
    return f.metadata.get(BOUNDS_KEY)


def bounded_fields(cls_or_obj: Any) -> list[tuple[dataclasses.Field, Bounds]]:
    """``[(field, bounds), ...]`` of a dataclass's bounded fields, in declaration order."""
    return [(f, b) for f in dataclasses.fields(cls_or_obj) if (b := field_bounds(f)) is not None]


def _numbers(value: Any, name: str) -> Iterator[tuple[str, Any]]:
    """``(dotted name with [i] indices, leaf)`` of every leaf of a (nested) list / tuple, or the value itself."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{name}[{i}]")
    else:
        yield name, value


def check_bounds(obj: Any, where: str = "", *, flag: Callable[[str], str] | None = None) -> None:
    """Raise ``ValueError`` for the first bounded field of dataclass ``obj`` whose value (or one of whose
    numbers) is out of its range; ``where``: the dotted name of ``obj`` in its config (``"optim"``); ``flag``:
    the command-line flag of a field instead (``"sample_rate" -> "--sample-rate"``) for a command's options."""
    prefix = f"{where}." if where else ""
    for f, bounds in bounded_fields(obj):
        shown = flag(f.name) if flag is not None else prefix + f.name
        for name, v in _numbers(getattr(obj, f.name), shown):
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue  # null is the type's business; non-numbers are the type checker's
            if not bounds.allows(v):
                siblings = tuple(prefix + s for s in bounds.together)
                raise ValueError(bounds.message(name, v, integer=isinstance(v, int), siblings=siblings))
