"""On-device layers: feature front end (:mod:`kernels.features`, :mod:`kernels.functional`), augmentation
(:mod:`kernels.augment`) and the name registries (:mod:`kernels.registry`).

Names are imported lazily: ``shards`` uses :class:`Registry` and must not pay torch's import time (seconds)
in every ingest CLI start and worker process.
"""

from __future__ import annotations

import importlib
from typing import Any

from kernels.registry import Registry

_LAZY = {
    "FEATURES": "kernels.features",
    "Frontend": "kernels.features",
    "FrontendConfig": "kernels.features",
    "build_frontend": "kernels.features",
    "estimate_norm_stats": "kernels.features",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")


__all__ = ["FEATURES", "Frontend", "FrontendConfig", "Registry", "build_frontend", "estimate_norm_stats"]
