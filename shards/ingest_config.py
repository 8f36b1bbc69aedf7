"""What an ingest (``tools/make_shards.py``) is asked to do: :class:`IngestConfig`, its checks, its fingerprint.

:meth:`IngestConfig.validate` refuses a bad configuration before any file is read (the messages name the
command-line flag); :meth:`IngestConfig.settings` is the resume fingerprint saved in ``DIR/.ingest/plan.json``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from registry.fields import bounded, check_bounds
from shards.layouts import FMA_SUBSETS, LAYOUTS, LayoutOptions
from shards.offline_augment import OfflineAugment
from shards.outputs import OutputError, is_utf8_path, prepare_output_dir, printable_path
from shards.outsink import SinkError, is_pipe, open_sink
from shards.tags_fma import FMA_LABEL_COLUMNS
from shards.tags_jamendo import JAMENDO_SUBSETS

__all__ = [
    "GROUP_BY",
    "MAX_SAMPLE_RATE",
    "MAX_WORKERS",
    "MIN_SAMPLE_RATE",
    "SPLIT_METHODS",
    "IngestConfig",
    "IngestError",
    "ShardSize",
    "parse_shard_size",
]

SPLIT_METHODS = ("stratified", "official", "gtzan-filtered")
GROUP_BY = ("auto", "artist", "none")
MIN_SAMPLE_RATE = 1000  # Hz: below, nothing of music is left
MAX_SAMPLE_RATE = 384_000  # Hz: the highest rate audio files are made at
MAX_WORKERS = 1024  # decode processes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flag(field: str) -> str:
    """The command-line flag of an :class:`IngestConfig` field: ``sample_rate`` -> ``--sample-rate``."""
    return "--" + field.replace("_", "-")


def _is_finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


ShardSize = tuple[str, int]  # ("bytes", max bytes per shard) or ("count", max samples per shard)


class IngestError(Exception):
    """A configuration or input problem that stops the job (clear message, non-zero exit)."""


def parse_shard_size(text: str) -> ShardSize:
    """``"256MB"`` -> ``("bytes", 256_000_000)``; ``"1000"`` -> ``("count", 1000)``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise IngestError(f"--shard-size {text!r}: expected a sample count like 1000 or a size like 256MB")
    num, unit = float(m.group(1)), (m.group(2) or "").upper()
    if not unit:
        if num != int(num):
            raise IngestError(f"--shard-size {text!r}: a sample count must be an integer")
        return "count", int(num)
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    if int(num * mult) < 1:
        raise IngestError(f"--shard-size {text!r}: under one byte; use a size like 256MB")
    return "bytes", int(num * mult)


@dataclass
class IngestConfig:
    source: Path
    out: Path | str  # a folder, or a "pipe:CMD {name}" template (shards.outsink)
    layout: str = "auto"
    subset: str | None = None  # fma: small (default) | medium | large | full; jamendo: genre (default) | ...
    labels: Path | str | None = None  # msd: genre annotation file (TRACK_ID<TAB>genre); fma: a FMA_LABEL_COLUMNS name
    sample_rate: int = bounded(22050, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE, unit="Hz")  # of the stored audio
    max_seconds: float | None = bounded(None, gt=0, unit="s")  # keep at most this much of each track's start
    peak_normalize: bool = False
    trim_silence: float | None = bounded(None, gt=0, unit="dB below the peak")  # None = no trimming
    split: str | None = None  # None: "official" for fma (or a csv with a split column), else "stratified"
    split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    folds: int = bounded(0, ge=0, note="0 = no folds, else K >= 2")
    group_by: str = "auto"  # "auto" (artist when artists are known) | "artist" | "none"
    shard_size: str = "256MB"  # "<n>MB" / "<n>GB" / "<n>KB" by size, a bare integer by sample count
    offline_augment: tuple[OfflineAugment, ...] = ()  # one extra copy of every training track per variant
    workers: int | None = bounded(None, ge=1, le=MAX_WORKERS, none="one per CPU")
    overwrite: bool = False
    progress: bool | None = None  # None: tqdm decides (bars on a terminal only)
    command: str = ""
    # multi-label layouts (each left at its default by every other layout)
    label_sep: str = ";"  # csv: separator inside a ``labels`` cell
    split_index: int = bounded(0, ge=0)  # jamendo: the official split-N
    top_tags: int = bounded(50, ge=1)  # mtat: the N most frequent tags
    genre_ancestors: bool = False  # fma --labels genres / genres_all: add each genre's parents
    label_map: Path | None = None  # tags: raw genre -> canonical map (YAML / CSV)
    min_count: int = bounded(1, ge=1)  # tags: drop tags fewer files carry

    #: layout -> the multi-label options it takes, with their defaults (any other layout refuses them)
    _LAYOUT_ONLY = {  # noqa: RUF012 -- a constant, not a field (no annotation)
        "label_sep": (";", ("csv",)),
        "split_index": (0, ("jamendo",)),
        "top_tags": (50, ("mtat",)),
        "genre_ancestors": (False, ("fma",)),
        "label_map": (None, ("tags",)),
        "min_count": (1, ("tags",)),
    }
    state_dir: Path | None = None  # a pipe: out's local resume state (None: shards.outsink.default_state_dir)
    # K > 1: the train split in a multiple of K shards (the training run's processes x loader workers)
    shards_for_ranks: int = bounded(0, ge=0, note="0 = off; e.g. 32 for 8 GPUs x 4 workers")
    rank_timeout: float = bounded(1800.0, gt=0, unit="s")  # a process of a multi-process ingest waits on another

    def validate(self) -> ShardSize:
        """Raise :class:`IngestError` on the first setting that cannot work; returns ``--shard-size`` parsed.

        ``out`` is checked with :func:`shards.outputs.prepare_output_dir` (nothing is created: the ingest
        makes the folder and its missing parents when it first writes). Only what is known before the layout is: :meth:`validate_layout` checks the rest once it is. Each
        message starts with the option (or SOURCE) and its value and says what would work."""
        source = Path(self.source)
        if not is_utf8_path(source):
            raise IngestError(
                f"SOURCE {printable_path(source)}: the path is not valid UTF-8; rename it, or pass a UTF-8 "
                "symbolic link to it"
            )
        if not source.exists():
            raise IngestError(f"SOURCE {source} does not exist")
        if source.is_dir() and not os.access(source, os.R_OK | os.X_OK):
            raise IngestError(f"SOURCE {source}: cannot read this folder (permission denied); make it readable")
        if source.is_dir() and not any(p for p in source.iterdir() if not p.name.startswith(".")):
            raise IngestError(f"SOURCE {source} is empty")
        try:  # before any work: a file, a read-only folder or a file in the way of a missing folder
            if is_pipe(self.out):
                prepare_output_dir(open_sink(self.out, self.state_dir).root, flag="--state-dir")
            else:
                prepare_output_dir(self.out, flag="--out")
        except (OutputError, SinkError) as err:
            raise IngestError(str(err)) from None
        self._validate_numbers()
        if self.subset is not None and self.subset not in (*FMA_SUBSETS, *JAMENDO_SUBSETS):
            raise IngestError(
                f"--subset {self.subset!r}: valid are {', '.join(FMA_SUBSETS)} (fma) and "
                f"{', '.join(JAMENDO_SUBSETS)} (jamendo)"
            )
        if self.split is not None and self.split not in SPLIT_METHODS:
            raise IngestError(f"--split {self.split!r}: valid are {', '.join(SPLIT_METHODS)}")
        if self.group_by not in GROUP_BY:
            raise IngestError(f"--group-by {self.group_by!r}: valid are {', '.join(GROUP_BY)}")
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

    def _validate_numbers(self) -> None:
        """The numeric options: their types, then each against the range declared on its field
        (:func:`registry.fields.check_bounds`, the one range check of every config), then the cross checks."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "int | None") and value is not None and not _is_int(value):
                raise IngestError(f"{_flag(f.name)} {value!r}: must be an integer")
            if f.type in ("float | None", "float") and value is not None and not _is_number(value):
                raise IngestError(f"{_flag(f.name)} {value!r}: must be a number")
        try:
            check_bounds(self, flag=_flag)
        except ValueError as err:
            raise IngestError(str(err)) from None
        if self.folds == 1:
            raise IngestError("--folds 1: use 0 (no folds) or K >= 2")
        ratios = tuple(self.split_ratios)
        if len(ratios) != 3 or not all(_is_finite(r) and r >= 0 for r in ratios) or sum(ratios) <= 0:
            raise IngestError(
                f"--split-ratios {','.join(map(str, ratios))}: expected three non-negative numbers like 0.7,0.15,0.15"
            )
        if ratios[0] == 0 and (self.folds or self.offline_augment):
            why = "--folds draws its folds from" if self.folds else "--offline-augment copies the tracks of"
            raise IngestError(
                f"--split-ratios {','.join(map(str, ratios))}: {why} the train split, which would be empty; "
                "give train a share (e.g. 0.7,0.15,0.15)"
            )

    def validate_layout(self, layout: str) -> None:
        """Raise :class:`IngestError` when a setting does not fit ``layout`` (the resolved layout name)."""
        if self.labels is not None and layout == "fma" and str(self.labels) not in FMA_LABEL_COLUMNS:
            raise IngestError(f"--labels {self.labels}: the fma layout takes {', '.join(FMA_LABEL_COLUMNS)}")
        if self.labels is not None and layout not in ("msd", "fma"):
            raise IngestError(
                f"--labels is for the msd layout (a genre annotation file) and the fma layout (genre_top, genres, "
                f"genres_all); layout is {layout!r}"
            )
        if self.subset is not None and layout == "fma" and self.subset not in FMA_SUBSETS:
            raise IngestError(f"--subset {self.subset!r}: the fma layout takes {', '.join(FMA_SUBSETS)}")
        if self.subset is not None and layout == "jamendo" and self.subset not in JAMENDO_SUBSETS:
            raise IngestError(f"--subset {self.subset!r}: the jamendo layout takes {', '.join(JAMENDO_SUBSETS)}")
        for name, (default, layouts) in self._LAYOUT_ONLY.items():
            if getattr(self, name) != default and layout not in layouts:
                flag = "--" + name.replace("_", "-")
                raise IngestError(f"{flag} is for the {' / '.join(layouts)} layout; layout is {layout!r}")
        if self.genre_ancestors and str(self.labels or "genre_top") == "genre_top":
            raise IngestError("--genre-ancestors adds parents to genre lists: use it with --labels genres or genres_all")
        kind = LAYOUTS.get(layout).kind
        if self.offline_augment and kind != "audio":
            raise IngestError(f"--offline-augment stretches audio; layout {layout!r} stores {kind}")

    def layout_options(self, layout: str) -> LayoutOptions:
        """What the resolved ``layout``'s scan is given."""
        fma = layout == "fma"
        return LayoutOptions(
            subset=self.subset,
            labels=None if fma or self.labels is None else Path(self.labels),
            fma_labels=str(self.labels) if fma and self.labels is not None else "genre_top",
            genre_ancestors=self.genre_ancestors,
            label_sep=self.label_sep,
            split_index=self.split_index,
            top_tags=self.top_tags,
            label_map=None if self.label_map is None else Path(self.label_map),
            min_count=self.min_count,
        )

    def _multilabel_settings(self, layout: str) -> dict[str, Any]:
        """The multi-label options that differ from their defaults (a set made without them keeps its
        fingerprint), the label map by path and content digest."""
        out: dict[str, Any] = {}
        for name, (default, _) in self._LAYOUT_ONLY.items():
            value = getattr(self, name)
            if value != default:
                out[name] = str(Path(value).resolve()) if name == "label_map" else value
        if self.label_map is not None:
            try:
                out["label_map_sha256"] = hashlib.sha256(Path(self.label_map).read_bytes()).hexdigest()
            except OSError:
                out["label_map_sha256"] = None  # the scan reports the unreadable map
        if layout == "jamendo":
            out["subset"] = self.subset or "genre"
        return out

    def settings(self, layout: str, shard_size: ShardSize) -> dict[str, Any]:
        """Everything that changes the output bytes (the resume fingerprint), for the resolved ``layout`` and
        the parsed ``shard_size``."""
        return {
            "source": str(Path(self.source).resolve()),
            "layout": layout,
            "subset": (self.subset or "small") if layout == "fma" else None,
            "labels": (
                str(self.labels) if layout == "fma" else str(Path(self.labels).resolve())
            ) if self.labels else None,
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
            **self._multilabel_settings(layout),
            **({"shards_for_ranks": self.shards_for_ranks} if self.shards_for_ranks > 1 else {}),
        }
