"""The help formatter of the ``python -m engine`` commands (its own module: the commands import it, and
:mod:`engine.cli` names the commands, so it cannot live there without a cycle)."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already states its default, the
    option is required, or the default is None (argparse's own formatter prints ``(default: None)``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.required or action.default is None:
            return text
        return super()._get_help_string(action) or text
