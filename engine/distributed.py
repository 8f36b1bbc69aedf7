"""One way to make the Accelerator (so every job agrees on what "several processes" means) and to autocast."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator


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
