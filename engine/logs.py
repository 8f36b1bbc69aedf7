"""Console logging for the command-line jobs: our INFO lines, accelerate's chatter only when it matters."""

from __future__ import annotations

import logging


def setup_logging(level: int = logging.INFO) -> None:
    """INFO for genre-engine, WARNING for accelerate (its per-epoch save_state lines drown the useful ones)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("accelerate", "accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(name).setLevel(logging.WARNING)
