"""On-device layers: feature front end (:mod:`kernels.features`, :mod:`kernels.functional`), the front end of
precomputed feature sequences (:mod:`kernels.precomputed`) and augmentation (:mod:`kernels.augment`).

Registration happens here: every module that registers entries (``FEATURES``, ``AUGMENTATIONS``) is imported
below, one line per module, so the registries are full whichever part of ``kernels`` is imported first.
Adding a feature is one file plus one line here. (``shards`` does not import ``kernels``: the registry class
lives in the top-level :mod:`registry`.)
"""

from __future__ import annotations

from kernels import augment as augment  # AUGMENTATIONS: gain, polarity, shift, noise, time/freq masks, ...
from kernels import features as features  # FEATURES: logmel, mfcc, chroma, cqt
from kernels import musicnn_input as musicnn_input  # FEATURES: musicnn (pretrained musicnn input, 16 kHz)
from kernels.features import FEATURES, Frontend, FrontendConfig, build_frontend, estimate_norm_stats

__all__ = ["FEATURES", "Frontend", "FrontendConfig", "build_frontend", "estimate_norm_stats"]
