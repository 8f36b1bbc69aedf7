"""One way to make the Accelerator, so every job agrees on what "several processes" means."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import PartialState


def make_accelerator(*, cpu: bool = False, **kwargs: Any) -> Accelerator:
    """An ``Accelerator`` that sees every process of a ``torchrun`` / ``accelerate launch`` job.

    On a machine without CUDA, accelerate sets up the (gloo) CPU process group only when asked for the
    CPU explicitly; without it each of N launched processes would silently run alone as world size 1.
    Inside a process that already set accelerate up (``cv`` and ``compare`` train, then evaluate, in one
    process) the existing state is shared.
    """
    if PartialState._shared_state:
        return Accelerator(**kwargs)
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(cpu=cpu or (multi and not torch.cuda.is_available()), **kwargs)
