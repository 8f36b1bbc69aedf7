"""The on-disk shard format: one place that says what a sample and a manifest look like.

A shard set is a directory::

    DIR/manifest.json
    DIR/train-000000.tar, DIR/train-000001.tar, ...
    DIR/valid-000000.tar, ...
    DIR/test-000000.tar, ...

Each tar is a WebDataset shard: members grouped by key (``<key>.<ext>``), one sample per key,
members of one sample adjacent. An audio sample has two members:

- ``<key>.pcm``  -- mono int16 little-endian PCM at the manifest's ``sample_rate`` (raw, no header:
  ``np.frombuffer(b, '<i2')`` is the whole decoder; raw PCM was chosen over FLAC because the reader
  must stream >= 1 GB/s per process, which no FLAC decoder does on one core).
- ``<key>.json`` -- per-track metadata (see :data:`SAMPLE_META_FIELDS`).

A feature-sequence sample (Million Song Dataset) has ``<key>.feats.npy`` (float16 ``[N, D]``) instead of
``.pcm``; the manifest's ``kind`` says which (``"audio"`` or ``"features"``).

Keys are unique within a shard set and contain no dots (WebDataset splits key and extension at the
first dot).

Tasks (the manifest's ``task``, :func:`manifest_task`): a ``"singlelabel"`` set gives each track exactly one
label (``label`` / ``label_index`` in its JSON); a ``"multilabel"`` set gives each track a set of tags
(``labels``: tag names, ``label_indices``: sorted ints into the manifest's ``labels``, the tag vocabulary),
and writes ``"label": null``, ``"label_index": -1``. Its split entries' ``per_label`` count, per tag, the
tracks carrying it. A manifest without ``task`` (made before multi-label sets existed) is single-label.
Single-label samples are byte-identical to those of sets made before ``task`` existed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "valid", "test")
PCM_EXT = "pcm"
PCM_SCALE = 32768.0  # float [-1, 1) <-> int16
FEATS_EXT = "feats.npy"
META_EXT = "json"

TASK_SINGLE = "singlelabel"
TASK_MULTI = "multilabel"
TASKS = (TASK_SINGLE, TASK_MULTI)

#: Fields of every sample's JSON. ``artist`` and ``track_id`` may be null; ``fold`` is -1 without folds.
SAMPLE_META_FIELDS = (
    "key",  # str, unique in the shard set
    "label",  # str, label name (multi-label sets: null)
    "label_index",  # int, index into manifest["labels"] (multi-label sets: -1)
    "path",  # str, source path relative to SOURCE
    "orig_sample_rate",  # int, Hz, of the source file
    "channels",  # int, of the source file
    "duration",  # float, seconds of the stored (resampled, trimmed) audio
    "num_samples",  # int, samples of the stored audio
    "track_id",  # str | None
    "artist",  # str | None
    "split",  # "train" | "valid" | "test"
    "fold",  # int, k-fold assignment (0..K-1), -1 when no folds were asked for
)

#: Extra fields of a multi-label sample's JSON (besides :data:`SAMPLE_META_FIELDS`).
MULTILABEL_META_FIELDS = (
    "labels",  # list[str], the track's tags (sorted as in manifest["labels"])
    "label_indices",  # list[int], sorted indices of those tags into manifest["labels"]
)


def shard_name(split: str, index: int) -> str:
    """``train-000003.tar``: the file name of shard ``index`` of ``split``."""
    return f"{split}-{index:06d}.tar"


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    """float waveform in [-1, 1] -> int16 array of the same shape (rounded, clipped; the float dtype is kept
    for the arithmetic: scaling by 2^15 and rounding are exact in float32, so float32 input needs no copy)."""
    return np.clip(np.rint(wave * PCM_SCALE), -32768, 32767).astype(np.int16)


def encode_pcm(wave: np.ndarray) -> bytes:
    """float waveform in [-1, 1] ``(T,)`` -> int16 little-endian bytes (rounded, clipped)."""
    return to_pcm16(np.asarray(wave, dtype=np.float64)).astype("<i2", copy=False).tobytes()


def decode_pcm(data: bytes) -> np.ndarray:
    """int16 little-endian bytes -> int16 array ``(T,)`` (zero-copy view on ``data``)."""
    return np.frombuffer(data, dtype="<i2")


def encode_feats(feats: np.ndarray) -> bytes:
    """``[N, D]`` feature sequence -> ``.npy`` bytes (float16)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(feats, dtype=np.float16), allow_pickle=False)
    return buf.getvalue()


def decode_feats(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> ``[N, D]`` float16 array."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_meta(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def decode_meta(data: bytes) -> dict[str, Any]:
    return json.loads(data.decode("utf-8"))


class ManifestError(ValueError):
    """``DIR/manifest.json`` exists but is not a readable manifest of this format."""


#: Keys every consumer of a manifest reads (the reader, train, evaluate).
MANIFEST_REQUIRED = ("sample_rate", "labels", "splits")


def load_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Read ``DIR/manifest.json``; a clear error if it is missing or not a shard set.

    Manifest keys: ``format_version``, ``kind`` ("audio" | "features"), ``task`` ("singlelabel" |
    "multilabel"; absent in sets made before it: single-label, see :func:`manifest_task`), ``sample_rate``
    (Hz), ``labels`` (sorted list of class names / the tag vocabulary; label_index and label_indices index
    it), ``splits`` ({split: {tracks, seconds, per_label: {label: tracks with it}, shards: [{name, samples,
    bytes, sha256}]}}), ``skipped``
    ([{path, reason}]: audio files not stored, and why), ``ignored`` ({".jpg": n, ...}: the non-audio files
    the layout walked past, by ``shards.audio.ignored_key``), ``source``, ``layout``, ``command``, ``folds`` (K or 0), ``feature_dim``
    (features kind only).
    """
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no shard set at {shard_dir}: {path} does not exist "
            "(make one with `python tools/make_shards.py SOURCE --out DIR`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path} is not valid JSON ({err}); remake the shard set with make_shards.py") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {version!r}, this reader understands {FORMAT_VERSION}")
    missing = [k for k in MANIFEST_REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{path} lacks {', '.join(missing)}: an interrupted or hand-edited manifest?")
    return manifest


def manifest_task(manifest: dict[str, Any]) -> str:
    """``"singlelabel"`` or ``"multilabel"``: the manifest's ``task`` (absent: ``"singlelabel"``, the only
    task of sets made before multi-label sets existed). Raises :class:`ManifestError` on another value."""
    task = manifest.get("task", TASK_SINGLE)
    if task not in TASKS:
        raise ManifestError(f"manifest task {task!r}: this reader understands {', '.join(TASKS)}")
    return task


def multi_hot(label_indices: Any, num_labels: int, dtype: Any = np.uint8) -> np.ndarray:
    """``[K]`` vector with 1 at each of ``label_indices`` (ints < ``num_labels``), 0 elsewhere."""
    out = np.zeros(num_labels, dtype=dtype)
    out[np.asarray(list(label_indices), dtype=np.int64)] = 1
    return out


def split_shards(manifest: dict[str, Any], split: str, shard_dir: str | Path) -> list[tuple[str, int]]:
    """``[(path_or_url, num_samples), ...]`` of ``split``, in manifest order."""
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in shard set (has {sorted(manifest['splits'])})")
    entries = manifest["splits"][split]["shards"]
    return [(str(Path(shard_dir) / e["name"]), int(e["samples"])) for e in entries]


def add_shard_record(entry: dict[str, Any], rec: dict[str, Any], skipped: list) -> None:
    """Add one written shard's record (``shard``, ``seconds``, ``per_label``, ``skipped``) to a manifest split
    ``entry`` (``tracks``, ``seconds``, ``per_label``, ``shards``) and its skips to ``skipped``; a record whose
    shard holds nothing (``shard`` None) adds only its skips. Shared by ingest and embed."""
    skipped.extend(rec["skipped"])
    if rec["shard"] is None:
        return
    entry["shards"].append(rec["shard"])
    entry["tracks"] += rec["shard"]["samples"]
    entry["seconds"] += rec["seconds"]
    for lab, n in rec["per_label"].items():
        entry["per_label"][lab] = entry["per_label"].get(lab, 0) + n
