"""On-device layers: feature front end (:mod:`kernels.features`, :mod:`kernels.functional`), augmentation
(:mod:`kernels.augment`) and the name registries (:mod:`kernels.registry`)."""

from kernels.features import FEATURES, Frontend, FrontendConfig, build_frontend, estimate_norm_stats
from kernels.registry import Registry

__all__ = ["FEATURES", "Frontend", "FrontendConfig", "Registry", "build_frontend", "estimate_norm_stats"]
