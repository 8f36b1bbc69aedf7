"""The run directory and the training state: what makes a resumed run compute what the uninterrupted one would.

Data order, augmentation and dropout are seeded from ``(seed, epoch, rank)`` (:func:`epoch_seed`). The state --
``Accelerator.save_state`` (model, optimiser, scheduler, EMA, RNG) plus each rank's augmentation streams and the
loop's own :class:`TrainState` (``train_state.json``, written last) -- is saved into ``state.new/`` and swapped
in (``state/``, briefly ``state.old/``), so a kill at any moment leaves one complete state to resume from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from engine.config import ConfigError, to_dict
from engine.train.config import TrainConfig, yaml_dump
from kernels.augment import augment_rng_state, set_augment_rng_state

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = get_logger(__name__)

__all__ = [
    "RESUME_FIXED", "TrainState", "check_resume_config", "epoch_seed", "open_run_dir", "resume_train_state",
    "save_train_state", "saved_state_dir", "seed_everything",
]  # fmt: skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """One seed per (run seed, epoch, rank): what makes a resumed epoch equal the uninterrupted one."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31 - 1)


@dataclass
class TrainState:
    """What the loop needs to continue; saved with ``Accelerator.save_state``."""

    epoch: int = 0  # next epoch to run
    step: int = 0  # optimiser steps so far
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # mid-epoch position (save_every_steps): batches of `epoch` done, and the epoch's running sums so far
    epoch_step: int = 0
    epoch_loss: float = 0.0  # sum of batch losses, averaged over ranks
    epoch_correct: float = 0.0  # correct training predictions, summed over ranks
    epoch_seen: int = 0  # training clips per rank

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


#: Settings a resumed run must share with the run it continues (the rest -- epochs, workers, logging -- may change).
RESUME_FIXED = ("model", "data.shards", "data.train_split", "data.valid_split", "data.segment_seconds",
                "data.crops_per_track", "data.batch_size", "data.holdout_fold", "optim.ema_decay", "run.seed")  # fmt: skip


def check_resume_config(saved_path: Path, cfg: TrainConfig) -> None:
    """ConfigError when ``cfg`` changes what the run in ``saved_path``'s directory was trained with (a
    changed model or data setting would silently mix two runs in one history and checkpoint)."""
    if not saved_path.is_file():
        return  # state saved by an older version without config.yaml: nothing to compare
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = to_dict(cfg)
    changed = []
    for key in RESUME_FIXED:
        a, b = saved, now
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if key == "data.shards" and isinstance(a, str) and isinstance(b, str):
            a, b = os.path.realpath(a), os.path.realpath(b)  # the same directory spelled differently
        if a != b:
            changed.append(key)
    if changed:
        raise ConfigError(
            f"run.resume: {', '.join(changed)} differ from the run in {saved_path.parent} ({saved_path.name}); "
            "resume with the same settings (optim, workers and logging may change) or start a new --out"
        )


def saved_state_dir(run_dir: str | Path) -> Path | None:
    """The newest complete training state of a run, or None.

    ``state/`` normally; ``state.old/`` when a run was killed between the two renames of
    :func:`save_train_state`. A ``state.new/`` is never complete until renamed (``train_state.json`` is
    written into it last), so a kill while saving leaves the previous state intact.
    """
    for name in ("state", "state.old"):
        d = Path(run_dir) / name
        if (d / "train_state.json").is_file():
            return d
    return None


def open_run_dir(cfg: TrainConfig, accelerator: Accelerator) -> tuple[Path, Path | None]:
    """The run directory (``run.out_dir``, else ``runs/<arch>-<time>`` chosen on the main process: the same on
    every rank) and its saved state (None: a new run). Checks that a resume has a state with the same settings
    and that a new run does not overwrite one; writes ``config.yaml``."""
    run_dir = [cfg.run.out_dir or f"runs/{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if accelerator.num_processes > 1:
        broadcast_object_list(run_dir)
    run_dir = Path(run_dir[0])
    state_dir = saved_state_dir(run_dir)
    if cfg.run.resume and state_dir is None:
        raise ConfigError(f"run.resume: no saved state in {run_dir / 'state'} (nothing to resume; drop --resume to start)")
    if cfg.run.resume:
        check_resume_config(run_dir / "config.yaml", cfg)
    elif (run_dir / "last.pt").exists():  # checked on every rank: one rank raising alone would hang the rest
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml_dump(to_dict(cfg)))
    accelerator.wait_for_everyone()
    return run_dir, state_dir


def save_train_state(accelerator: Accelerator, run_dir: Path, state: TrainState, net: torch.nn.Module) -> None:
    """``Accelerator.save_state`` into ``state.new/``, then swap it in: a kill at any moment leaves one
    complete state (model, optimiser, scheduler, RNG and loop state from the *same* epoch) to resume from."""
    new, cur, old = run_dir / "state.new", run_dir / "state", run_dir / "state.old"
    if accelerator.is_main_process:
        shutil.rmtree(new, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(new))  # every rank writes its own RNG state into it
    # each rank's augmentation streams (seeded per rank): what a mid-epoch resume needs to draw the same
    torch.save(augment_rng_state(net), new / f"augment_rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (new / "train_state.json").write_text(json.dumps(state.state_dict()))  # last: marks it complete
        shutil.rmtree(old, ignore_errors=True)
        if cur.exists():
            os.replace(cur, old)
        os.replace(new, cur)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def resume_train_state(accelerator: Accelerator, state_dir: Path, net: torch.nn.Module) -> TrainState:
    """Load the saved state of ``state_dir`` into the prepared objects (model, optimiser and what was registered
    for checkpointing) and ``net``'s augmentation streams (mid-epoch); returns the loop's :class:`TrainState`."""
    try:
        accelerator.load_state(str(state_dir))
    except (RuntimeError, KeyError) as err:
        raise ConfigError(f"cannot resume from {state_dir}: it was saved by a different model/config ({err})") from err
    state = TrainState()
    state.load_state_dict(json.loads((state_dir / "train_state.json").read_text()))
    if state.epoch_step:  # stopped mid-epoch: the augmentation streams continue where they were
        aug_file = state_dir / f"augment_rng_{accelerator.process_index}.pt"
        if not aug_file.is_file():
            raise ConfigError(
                f"cannot resume mid-epoch: {aug_file} is missing (saved by {accelerator.num_processes} process(es)?)"
            )
        set_augment_rng_state(net, torch.load(aug_file, weights_only=False))
    logger.info(f"resumed {state_dir.parent} at epoch {state.epoch}", main_process_only=True)
    return state
