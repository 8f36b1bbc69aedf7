"""One way to make the Accelerator (so every job agrees on what "several processes" means) and to autocast,
and the one precision vocabulary every command takes.

Precision names (train's ``run.precision``; ``--precision`` of evaluate, embed and classify): ``fp32`` (no
autocast), ``bf16`` and ``fp16`` (autocast of the forward pass to that dtype), plus ``auto`` where the command
picks (classify: bf16 on a GPU that has it, else fp32). Older spellings stay readable: accelerate's ``no``
(what ``run.precision`` and evaluate / embed ``--precision`` said before) means ``fp32``.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

PRECISIONS = ("fp32", "bf16", "fp16")
#: Autocast dtype of the forward pass per precision name (None: float32, no autocast).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Older precision names -> the current ones (configs, checkpoints and `.embed/` states written before).
LEGACY_PRECISIONS = {"no": "fp32"}
#: ``Accelerator(mixed_precision=...)`` per precision name (accelerate's own vocabulary).
_ACCELERATE_PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def make_accelerator(*, cpu: bool = False, **kwargs: Any) -> Accelerator:
    """An ``Accelerator`` that sees every process of a ``torchrun`` / ``accelerate launch`` job.

    On a machine without CUDA, accelerate sets up the (gloo) CPU process group only when asked for the
    CPU explicitly; without it each of N launched processes would silently run alone as world size 1.
    Inside a process that already set accelerate up (``cv`` and ``compare`` train, then evaluate, in one
    process) the existing state is shared.
    """
    from accelerate import Accelerator  # noqa: PLC0415 -- importers that only need autocast stay light
    from accelerate.state import PartialState  # noqa: PLC0415

    if PartialState._shared_state:
        return Accelerator(**kwargs)
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=cpu or (multi and not torch.cuda.is_available()), **kwargs)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op context for ``dtype=None`` (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def canonical_precision(name: str) -> str:
    """The current name of a precision: an old spelling (``"no"``) -> ``"fp32"``; anything else unchanged (an
    argparse ``type``: its ``choices`` then reject unknown names)."""
    return LEGACY_PRECISIONS.get(name, name)


def check_precision(name: str, *, auto: bool = False) -> str:
    """:func:`canonical_precision` of ``name``; ValueError unless it is one of :data:`PRECISIONS` (or ``"auto"``
    where the command picks, ``auto=True``)."""
    name = canonical_precision(name)
    choices = (*PRECISIONS, "auto") if auto else PRECISIONS
    if name not in choices:
        raise ValueError(f"precision must be one of {', '.join(choices)}, got {name!r}")
    return name


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of ``precision`` on ``device`` (None: float32). ``"auto"``: bfloat16 on a CUDA device that
    supports it, else None."""
    precision = check_precision(precision, auto=True)
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return AUTOCAST_DTYPES[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """The precision name of an autocast dtype (None: ``"fp32"``)."""
    return next(name for name, d in AUTOCAST_DTYPES.items() if d == dtype)


def accelerate_precision(precision: str) -> str:
    """``Accelerator(mixed_precision=...)`` of a precision name: ``"no"`` for fp32, else the name."""
    return _ACCELERATE_PRECISIONS[check_precision(precision)]
