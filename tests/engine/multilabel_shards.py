"""A hand-made multi-label shard set (the s17 shards contract), .

The set: 3 tags whose presence is audible -- ``low`` (a 220 Hz tone), ``high`` (a 2.5 kHz tone), ``noisy``
(white noise) -- each track a random non-empty subset, 1-s clips at 8 kHz; splits train / valid / test,
2 folds over train. Sample JSON as the contract says: ``labels`` / ``label_indices`` the track's tags,
``label`` null, ``label_index`` -1; manifest ``task: "multilabel"``, ``labels`` the tag vocabulary, ``per_label``
the tracks of each tag per split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shards import format as fmt
from shards.writer import ShardWriter

TAGS = ["low", "high", "noisy"]
SR = 8000
SPLIT_TRACKS = {"train": 24, "valid": 8, "test": 8}


def _wave(tags: list[str], rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = 0.01 * rng.standard_normal(t.size)
    if "low" in tags:
        x += 0.3 * np.sin(2 * np.pi * 220 * t + rng.uniform(0, 6.28))
    if "high" in tags:
        x += 0.3 * np.sin(2 * np.pi * 2500 * t + rng.uniform(0, 6.28))
    if "noisy" in tags:
        x += 0.2 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def make_multilabel_shards(root: Path, folds: int = 2, per_shard: int = 6, names: dict[str, str] | None = None) -> Path:
    """Write the set into ``root``; returns it. Every tag has positives and negatives in every split.
    ``names``: the tags' names in the set (``{"low": "guitar"}``; the audio is the same), in :data:`TAGS` order."""
    tag_name = {t: (names or {}).get(t, t) for t in TAGS}
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    subsets = [[TAGS[j] for j in range(3) if (m >> j) & 1] for m in range(1, 8)]  # the 7 non-empty subsets
    splits: dict[str, Any] = {}
    n = 0
    for split, count in SPLIT_TRACKS.items():
        samples = []
        for i in range(count):
            tags = subsets[(i + n) % len(subsets)]
            key = f"{split}{i:03d}"
            meta = {
                "key": key, "label": None, "label_index": -1, "labels": [tag_name[t] for t in tags],
                "label_indices": [TAGS.index(t) for t in tags], "path": f"{key}.wav", "orig_sample_rate": SR,
                "channels": 1, "duration": 1.0, "num_samples": SR, "track_id": None, "artist": None, "split": split,
                "fold": i % folds if (folds and split == "train") else -1,
            }  # fmt: skip
            samples.append((key, fmt.encode_pcm(_wave(tags, rng)), meta))
        n += count
        entries = []
        for s in range(0, len(samples), per_shard):
            name = fmt.shard_name(split, s // per_shard)
            with ShardWriter(root / name) as writer:
                for key, pcm, meta in samples[s : s + per_shard]:
                    writer.add(key, {fmt.PCM_EXT: pcm, fmt.META_EXT: fmt.encode_meta(meta)})
                entries.append(writer.close().to_dict())
        per_label = {tag_name[t]: sum(tag_name[t] in m["labels"] for _, _, m in samples) for t in TAGS}
        splits[split] = {"tracks": len(samples), "seconds": float(len(samples)), "per_label": per_label, "shards": entries}
    manifest = {
        "format_version": fmt.FORMAT_VERSION, "kind": "audio", "task": "multilabel", "sample_rate": SR,
        "labels": [tag_name[t] for t in TAGS], "splits": splits, "skipped": [], "source": "hand-made tags", "layout": "test",
        "command": "", "folds": folds,
    }  # fmt: skip
    (root / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root
