"""What an ingest (``tools/make_shards.py``) is asked to do: :class:`IngestConfig`, its checks, its fingerprint.

:meth:`IngestConfig.validate` refuses a bad configuration before any file is read (the messages name the
command-line flag); :meth:`IngestConfig.settings` is the resume fingerprint saved in ``DIR/.ingest/plan.json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shards.layouts import FMA_SUBSETS, LAYOUTS
from shards.offline_augment import OfflineAugment

SPLIT_METHODS = ("stratified", "official", "gtzan-filtered")

__all__ = ["SPLIT_METHODS", "IngestConfig", "IngestError", "ShardSize", "parse_shard_size"]

ShardSize = tuple[str, int]  # ("bytes", max bytes per shard) or ("count", max samples per shard)


class IngestError(Exception):
    """A configuration or input problem that stops the job (clear message, non-zero exit)."""


def parse_shard_size(text: str) -> ShardSize:
    """``"256MB"`` -> ``("bytes", 256_000_000)``; ``"1000"`` -> ``("count", 1000)``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise IngestError(f"--shard-size {text!r}: expected a sample count like 1000 or a size like 256MB")
    num, unit = float(m.group(1)), (m.group(2) or "").upper()
    if not unit:
        if num != int(num):
            raise IngestError(f"--shard-size {text!r}: a sample count must be an integer")
        return "count", int(num)
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return "bytes", int(num * mult)


@dataclass
class IngestConfig:
    source: Path
    out: Path
    layout: str = "auto"
    subset: str = "small"  # fma only
    labels: Path | None = None  # msd only: genre annotation file (TRACK_ID<TAB>genre)
    sample_rate: int = 22050  # Hz of the stored audio
    max_seconds: float | None = None  # keep at most this many seconds from the start of each track
    peak_normalize: bool = False
    trim_silence: float | None = None  # dB below peak; None = no trimming
    split: str | None = None  # None: "official" for fma (or a csv with a split column), else "stratified"
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    folds: int = 0
    group_by: str = "auto"  # "auto" (artist when artists are known) | "artist" | "none"
    shard_size: str = "256MB"  # "<n>MB" / "<n>GB" / "<n>KB" by size, a bare integer by sample count
    offline_augment: tuple[OfflineAugment, ...] = ()  # one extra copy of every training track per variant
    workers: int | None = None  # None: os.cpu_count()
    overwrite: bool = False
    progress: bool | None = None  # None: tqdm decides (bars on a terminal only)
    command: str = ""

    def validate(self) -> ShardSize:
        """Raise :class:`IngestError` on the first setting that cannot work; returns ``--shard-size`` parsed.

        Only what is known before the layout is: :meth:`validate_layout` checks the rest once it is."""
        source = Path(self.source)
        if not source.exists():
            raise IngestError(f"SOURCE {source} does not exist")
        if source.is_dir() and not any(p for p in source.iterdir() if not p.name.startswith(".")):
            raise IngestError(f"SOURCE {source} is empty")
        if self.sample_rate <= 0:
            raise IngestError(f"--sample-rate {self.sample_rate}: must be positive")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise IngestError(f"--max-seconds {self.max_seconds}: must be positive")
        if self.folds < 0 or self.folds == 1:
            raise IngestError(f"--folds {self.folds}: use 0 (no folds) or K >= 2")
        if self.subset not in FMA_SUBSETS:
            raise IngestError(f"--subset {self.subset!r}: valid are {', '.join(FMA_SUBSETS)}")
        if self.split is not None and self.split not in SPLIT_METHODS:
            raise IngestError(f"--split {self.split!r}: valid are {', '.join(SPLIT_METHODS)}")
        shard_size = parse_shard_size(self.shard_size)
        if self.offline_augment and self.folds:
            raise IngestError(
                "--offline-augment with --folds: cross-validation tests on folds of the training split, where the "
                "augmented copies are; make a shard set for cross-validation without --offline-augment"
            )
        if len(set(self.offline_augment)) != len(self.offline_augment):
            raise IngestError("--offline-augment lists the same RATE:SEMITONES twice")
        if self.layout != "auto" and self.layout not in LAYOUTS:
            raise IngestError(f"unknown layout {self.layout!r}; valid: auto, {', '.join(LAYOUTS.names())}")
        return shard_size

    def validate_layout(self, layout: str) -> None:
        """Raise :class:`IngestError` when a setting does not fit ``layout`` (the resolved layout name)."""
        if self.labels is not None and layout != "msd":
            raise IngestError(f"--labels is for the msd layout (a genre annotation file); layout is {layout!r}")
        kind = LAYOUTS.get(layout).kind
        if self.offline_augment and kind != "audio":
            raise IngestError(f"--offline-augment stretches audio; layout {layout!r} stores {kind}")

    def settings(self, layout: str, shard_size: ShardSize) -> dict[str, Any]:
        """Everything that changes the output bytes (the resume fingerprint), for the resolved ``layout`` and
        the parsed ``shard_size``."""
        return {
            "source": str(Path(self.source).resolve()),
            "layout": layout,
            "subset": self.subset if layout == "fma" else None,
            "labels": str(Path(self.labels).resolve()) if self.labels else None,
            "sample_rate": self.sample_rate,
            "max_seconds": self.max_seconds,
            "peak_normalize": self.peak_normalize,
            "trim_silence": self.trim_silence,
            "split": self.split,
            "split_ratios": list(self.split_ratios),
            "seed": self.seed,
            "folds": self.folds,
            "group_by": self.group_by,
            "shard_size": list(shard_size),
            # only when used: shard sets made without it keep the fingerprint they were made with (resume)
            **({"offline_augment": [a.to_dict() for a in self.offline_augment]} if self.offline_augment else {}),
        }
