"""What the ``python -m engine`` commands share in their parsers: the help formatter and the argparse
``type=`` checks of numbers (its own module: the commands import it, and :mod:`engine.cli` names the
commands, so it cannot live there without a cycle).

The number checks turn a value out of range into argparse's usual refusal, before any work: one line
naming the option, the value and the allowed range, exit status 2::

    python -m engine classify: error: argument --top-k: 0 is out of range: must be an integer >= 1
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from registry.fields import Bounds

__all__ = ["HelpFormatter", "float_above", "float_at_least", "float_in", "int_at_least"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already states its default, the
    option is required, or the default is None (argparse's own formatter prints ``(default: None)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default is None:
            return text
        return super()._get_help_string(action) or text


def _number(text: str, kind: type, what: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(kind: type, bounds: Bounds) -> Callable[[str], int | float]:
    """An argparse ``type=``: a finite ``kind`` (int or float) within ``bounds`` (the same
    :class:`registry.fields.Bounds` config fields declare), refused with the allowed range."""
    integer = kind is int

    def parse(text: str) -> int | float:
        value = _number(text, kind, "an integer" if integer else "a number")
        if not bounds.allows(value):
            note = f" ({bounds.note})" if bounds.note else ""
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bounds.range_text(integer)}{note}")
        return value

    parse.__name__ = bounds.range_text(integer)
    return parse


def int_at_least(low: int, hint: str = "") -> Callable[[str], int]:
    """An argparse ``type=``: an integer ``>= low``; ``hint`` (e.g. "0: decode in this process") is added
    to the refusal."""
    return _bounded(int, Bounds(ge=low, what="an integer", note=hint))


def float_above(low: float, hint: str = "") -> Callable[[str], float]:
    """An argparse ``type=``: a finite number ``> low``."""
    return _bounded(float, Bounds(gt=low, what="a number", note=hint))


def float_at_least(low: float, hint: str = "") -> Callable[[str], float]:
    """An argparse ``type=``: a finite number ``>= low``."""
    return _bounded(float, Bounds(ge=low, what="a number", note=hint))


def float_in(low: float, high: float, hint: str = "") -> Callable[[str], float]:
    """An argparse ``type=``: a finite number in ``[low, high]``."""
    return _bounded(float, Bounds(ge=low, le=high, what="a number", note=hint))
