"""Shared engine fixtures: a real shard set made from the synthetic corpus by the real ingest."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Four genres whose recipes differ most, so a few CPU epochs learn them.
GENRES = ("classical", "metal", "reggae", "hiphop")


def make_synthetic_shards(root: Path, *, clips_per_genre: int, duration: float, folds: int = 0) -> Path:
    from shards.ingest import IngestConfig, run_ingest
    from shards.synthetic import make_corpus

    corpus = root / "corpus"
    make_corpus(corpus, clips_per_genre=clips_per_genre, duration=duration, genres=GENRES,
                formats=("wav", "flac"), seed=0, workers=1, progress=False)  # fmt: skip
    out = root / "shards"
    run_ingest(IngestConfig(source=corpus, out=out, layout="folder", seed=0, folds=folds, workers=1, progress=False))
    return out


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 genres x 12 clips x 3 s, stratified 70/15/15 (32/8/8 tracks... by ingest's rounding), 3 folds."""
    return make_synthetic_shards(tmp_path_factory.mktemp("synth"), clips_per_genre=12, duration=3.0, folds=3)
