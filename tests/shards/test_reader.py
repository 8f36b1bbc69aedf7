"""CropStream and WindowStream on real tar shard sets written here (tarfile + shards.format), real pipes, real processes.

Every track's PCM encodes its identity: sample ``i`` of track ``t`` is ``t * 1024 + i`` (tracks are shorter
than 1024 samples), so any crop or window can be traced back to its track and offset.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from shards import format as fmt
from shards.crop_stream import CropStream
from shards.reader import SplitStream, make_loader
from shards.window_stream import WindowStream
from shards.windows import window_starts

LABELS = ["blues", "jazz", "rock"]
SR = 8000
WORKER = Path(__file__).with_name("_reader_worker.py")


# ------------------------------------------------------------------------------------------ test writer


def track(t: int, length: int, fold: int = -1, key: str | None = None) -> dict:
    """Track ``t`` of ``length`` samples whose PCM is ``t * 1024 + arange(length)``."""
    assert length < 1024 and t < 32
    return {
        "t": t,
        "key": key or f"trk{t:03d}",
        "label_index": t % len(LABELS),
        "fold": fold,
        "pcm": (t * 1024 + np.arange(length)).astype(np.int16),
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_set(
    root: Path,
    splits: dict[str, list[list[dict]]],
    *,
    kind: str = "audio",
    folds: int = 0,
    json_first: bool = True,
    multilabel: bool = False,
) -> Path:
    """A shard set: ``splits[split][i]`` = the tracks of shard ``i``; returns ``root``. ``multilabel``: a
    multi-label set (task ``multilabel``) whose track ``t`` carries the tags :func:`tags_of` ``(t)``."""
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict = {
        "format_version": fmt.FORMAT_VERSION,
        "kind": kind,
        "sample_rate": SR,
        "labels": LABELS,
        "folds": folds,
        "splits": {},
        "skipped": [],
    }
    for split, shards in splits.items():
        entries = []
        for i, tracks in enumerate(shards):
            name = fmt.shard_name(split, i)
            with tarfile.open(root / name, "w", format=tarfile.PAX_FORMAT) as tar:
                for tr in tracks:
                    meta = {
                        "key": tr["key"],
                        "label": LABELS[tr["label_index"]],
                        "label_index": tr["label_index"],
                        "path": f"{tr['key']}.wav",
                        "orig_sample_rate": SR,
                        "channels": 1,
                        "duration": len(tr["pcm"]) / SR,
                        "num_samples": len(tr["pcm"]),
                        "track_id": None,
                        "artist": None,
                        "split": split,
                        "fold": tr["fold"],
                    }
                    if multilabel:
                        idx = tags_of(tr["t"])
                        meta.update(label=None, label_index=-1, label_indices=idx, labels=[LABELS[i] for i in idx])
                    if kind == "audio":
                        data = (f"{tr['key']}.{fmt.PCM_EXT}", fmt.encode_pcm(tr["pcm"] / 32768.0))
                    else:  # features: [N, 2] frames = (track, frame index), exact in float16
                        n = len(tr["pcm"])
                        feats = np.stack([np.full(n, tr["t"]), np.arange(n)], axis=1).astype(np.float32)
                        data = (f"{tr['key']}.{fmt.FEATS_EXT}", fmt.encode_feats(feats))
                    members = [(f"{tr['key']}.{fmt.META_EXT}", fmt.encode_meta(meta)), data]
                    for m in members if json_first else members[::-1]:
                        _add(tar, *m)
            entries.append(
                {"name": name, "samples": len(tracks), "bytes": (root / name).stat().st_size, "sha256": ""}
            )
        manifest["splits"][split] = {
            "tracks": sum(len(s) for s in shards),
            "seconds": sum(len(t["pcm"]) for s in shards for t in s) / SR,
            "per_label": {},
            "shards": entries,
        }
    if kind == "features":
        manifest["feature_dim"] = 2
    if multilabel:
        manifest["task"] = fmt.TASK_MULTI
    (root / fmt.MANIFEST_NAME).write_text(json.dumps(manifest))
    return root


def tags_of(t: int) -> list[int]:
    """The tag indices of track ``t`` in a multi-label test set: every subset of the 3 tags, the empty one too."""
    return [i for i in range(len(LABELS)) if (t % 8) >> i & 1]


def tracks_of(row: np.ndarray) -> tuple[int, int]:
    """(track, offset) of a crop / window from its first value."""
    v = int(row[0])
    return v // 1024, v % 1024


def drain(stream: SplitStream, num_workers: int = 0) -> list[dict]:
    return list(make_loader(stream, num_workers=num_workers, pin_memory=False))


def uneven_set(root: Path, **kw) -> tuple[Path, list[dict]]:
    """3 shards of 2, 5 and 9 tracks, lengths 40..1000 samples."""
    rng = np.random.default_rng(0)
    tracks = [track(t, int(rng.integers(40, 1000)), fold=t % 3) for t in range(16)]
    return write_set(root, {"train": [tracks[:2], tracks[2:7], tracks[7:]]}, folds=3, **kw), tracks


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("json_first", [True, False])
def test_train_crops_have_shape_dtype_and_trace_to_their_track(tmp_path, json_first):
    root, tracks = uneven_set(tmp_path / "set", json_first=json_first)
    seg, bs = 32, 4
    stream = CropStream(root, "train", crop_samples=seg, batch_size=bs, seed=3)
    batches = drain(stream)
    assert len(batches) == len(stream) == 4  # ceil(16 / 4)
    seen = set()
    for b in batches:
        assert set(b) == {"wave", "label"}
        assert b["wave"].dtype == torch.int16 and tuple(b["wave"].shape) == (bs, seg)
        assert b["label"].dtype == torch.int64 and tuple(b["label"].shape) == (bs,)
        for row, label in zip(b["wave"].numpy(), b["label"].tolist()):
            t, off = tracks_of(row)
            n = len(tracks[t]["pcm"])
            assert off + seg <= n  # all tracks are longer than the segment
            np.testing.assert_array_equal(row, tracks[t]["pcm"][off : off + seg])
            assert label == tracks[t]["label_index"]
            seen.add(t)
    assert seen == set(range(16))  # one epoch on one rank covers every track exactly once
    offsets = [tracks_of(r)[1] for b in batches for r in b["wave"].numpy()]
    assert len(set(offsets)) > 8  # random crop offsets, not all at 0


def test_training_and_evaluation_are_separate_stream_types_without_a_train_flag(tmp_path):
    root, _ = uneven_set(tmp_path / "set")
    crops = CropStream(root, "train", crop_samples=16, batch_size=4)
    windows = WindowStream(root, "train", window_samples=16, hop_samples=8, batch_size=4)
    assert isinstance(crops, SplitStream) and isinstance(windows, SplitStream)
    assert not isinstance(crops, WindowStream) and not isinstance(windows, CropStream)
    assert crops.track_keys() == windows.track_keys()  # one shared index of the split
    with pytest.raises(TypeError, match="train"):
        CropStream(root, "train", train=True, crop_samples=16, batch_size=4)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="segment_samples"):
        WindowStream(root, "train", segment_samples=16, batch_size=4)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="hop_samples"):
        CropStream(root, "train", crop_samples=16, hop_samples=8, batch_size=4)  # type: ignore[call-arg]


def test_partial_reads_and_whole_reads_give_identical_crops(tmp_path):
    root, _ = uneven_set(tmp_path / "set")
    kw = dict(crop_samples=50, batch_size=5, seed=1)
    a = drain(CropStream(root, "train", partial_reads=True, **kw))
    b = drain(CropStream(root, "train", partial_reads=False, **kw))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["wave"], y["wave"]) and torch.equal(x["label"], y["label"])


def test_epochs_reshuffle_reproducibly(tmp_path):
    root, _ = uneven_set(tmp_path / "set")

    def epoch_rows(epoch: int, seed: int = 7) -> list[tuple[int, int]]:
        s = CropStream(
            root, "train", crop_samples=20, batch_size=4, seed=seed, shuffle_buffer=8
        )
        s.set_epoch(epoch)
        return [tracks_of(r) for b in drain(s) for r in b["wave"].numpy()]

    e0, e1 = epoch_rows(0), epoch_rows(1)
    assert e0 == epoch_rows(0)  # same (seed, epoch): identical tracks, order and crop offsets
    assert e1 == epoch_rows(1)
    assert e0 != e1
    assert [t for t, _ in e0] != [t for t, _ in e1]  # order differs, not only the crops
    assert sorted(t for t, _ in e0) == sorted(t for t, _ in e1) == list(range(16))
    assert e0 != epoch_rows(0, seed=8)


def test_len_matches_batches_with_two_workers(tmp_path):
    root, _ = uneven_set(tmp_path / "set")
    for train, bs in [(True, 3), (True, 16), (True, 40), (False, 3), (False, 7)]:
        if train:
            s: SplitStream = CropStream(root, "train", crop_samples=64, batch_size=bs, shuffle_buffer=2)
        else:
            s = WindowStream(root, "train", window_samples=64, batch_size=bs)
        batches = drain(s, num_workers=2)
        assert len(batches) == len(s), (train, bs)
        assert all(b["wave"].shape[0] == bs for b in batches)


def test_eval_fills_a_short_track_like_training_looped_or_zero_padded(tmp_path):
    pcm = track(0, 10)["pcm"]
    root = write_set(tmp_path / "set", {"valid": [[track(0, 10)]]})
    for pad, want in [("loop", np.resize(pcm, 64)), ("zero", np.concatenate([pcm, np.zeros(54, np.int16)]))]:
        s = WindowStream(root, "valid", window_samples=64, batch_size=1, pad_mode=pad)
        (b,) = drain(s)
        np.testing.assert_array_equal(b["wave"][0].numpy(), want)


def test_eval_yields_every_window_once_with_track_index_and_padding(tmp_path):
    lengths = [10, 64, 65, 200, 333, 999]
    tracks = [track(t, n) for t, n in enumerate(lengths)]
    root = write_set(tmp_path / "set", {"valid": [tracks[:4], tracks[4:]]})
    seg, hop, bs = 64, 48, 5
    s = WindowStream(root, "valid", window_samples=seg, hop_samples=hop, batch_size=bs)
    assert s.track_keys() == [t["key"] for t in tracks]
    assert s.track_labels() == [t["label_index"] for t in tracks]
    assert s.track_paths() == [f"{t['key']}.wav" for t in tracks]
    # every hop while a window fits; a tail of >= hop/2 gets one end-aligned window (65: a 1-sample tail is
    # left out; 999: a 23-sample tail is, 200 and 333 get one at n - seg); short tracks one looped window
    expected_starts = {0: [0], 1: [0], 2: [0], 3: [0, 48, 96, 136], 4: [0, 48, 96, 144, 192, 240, 269],
                       5: [48 * k for k in range(20)]}  # fmt: skip
    expected_windows = [len(expected_starts[t]) for t in range(len(lengths))]  # [1, 1, 1, 4, 7, 20]
    assert s.num_windows() == expected_windows
    batches = drain(s)
    assert len(batches) == len(s) == -(-sum(expected_windows) // bs)
    seen: dict[int, list[int]] = {}
    for b in batches:
        assert set(b) == {"wave", "label", "track", "valid"}
        assert b["wave"].dtype == torch.int16 and tuple(b["wave"].shape) == (bs, seg)
        assert b["track"].dtype == torch.int64 and b["valid"].dtype == torch.bool
        for row, t, ok, label in zip(b["wave"].numpy(), b["track"].tolist(), b["valid"].tolist(), b["label"]):
            if not ok:
                assert t == -1 and not row.any()
                continue
            pcm = tracks[t]["pcm"]
            start = expected_starts[t][len(seen.setdefault(t, []))]
            seen[t].append(start)
            # a short track: looped from its start, as training fills a short crop
            want = np.resize(pcm, seg) if len(pcm) < seg else pcm[start : start + seg]
            np.testing.assert_array_equal(row, want)
            assert int(label) == tracks[t]["label_index"]
    assert {t: len(v) for t, v in seen.items()} == dict(enumerate(expected_windows))
    n_invalid = sum(int((~b["valid"]).sum()) for b in batches)
    assert n_invalid == len(batches) * bs - sum(expected_windows)


@pytest.mark.parametrize("pad_mode", ["loop", "zero"])
def test_short_tracks_are_looped_or_zero_padded(tmp_path, pad_mode):
    tracks = [track(t, n) for t, n in enumerate([5, 17, 30])]
    root = write_set(tmp_path / "set", {"train": [tracks]})
    seg = 40
    s = CropStream(
        root,
        "train",
        crop_samples=seg,
        batch_size=3,
        pad_mode=pad_mode,
        seed=2,
        shuffle_buffer=0,
    )
    rows = [r for b in drain(s) for r in b["wave"].numpy()]
    assert len(rows) == 3
    for row in rows:
        t, phase = tracks_of(row)
        pcm = tracks[t]["pcm"]
        if pad_mode == "loop":
            want = np.tile(pcm, 20)[phase : phase + seg]
        else:
            assert phase == 0
            want = np.concatenate([pcm, np.zeros(seg - len(pcm), np.int16)])
        np.testing.assert_array_equal(row, want)


def test_fold_filtering_excludes_or_keeps_only_the_holdout_fold(tmp_path):
    root, tracks = uneven_set(tmp_path / "set")
    fold_of = {t["t"]: t["fold"] for t in tracks}
    train = CropStream(root, "train", crop_samples=16, batch_size=2, holdout_fold=1)
    seen = [tracks_of(r)[0] for b in drain(train, num_workers=2) for r in b["wave"].numpy()]
    kept = sorted(t for t, f in fold_of.items() if f != 1)
    # 11 kept tracks, batch 2: ceil(11 / 2) = 6 full batches, the wrap-around repeats one kept track
    assert len(kept) == 11 and len(train) == 6 and len(seen) == 12
    assert set(seen) == set(kept)

    ev = WindowStream(
        root, "train", window_samples=2000, batch_size=4, holdout_fold=1, folds="only"
    )
    only = [t for t, f in fold_of.items() if f == 1]
    assert ev.track_keys() == [tracks[t]["key"] for t in only]
    got = [int(t) for b in drain(ev) for t, ok in zip(b["track"], b["valid"]) if ok]
    assert got == list(range(len(only)))  # track indices index the filtered track list
    with pytest.raises(ValueError, match="holdout_fold"):
        WindowStream(root, "train", window_samples=8, batch_size=2, folds="only")


def test_pipe_url_reads_like_the_local_path(tmp_path):
    root, _ = uneven_set(tmp_path / "set")
    local = fmt.split_shards(fmt.load_manifest(root), "train", root)
    piped = [(f"pipe:cat {p}", n) for p, n in local]
    for train, rank in [(True, 0), (False, 0), (True, 1), (False, 1)]:
        # rank 0 of 2 stops inside a shard: the pipe command is killed early, output still identical
        kw = dict(batch_size=4, rank=rank, world_size=2)
        kw.update(dict(crop_samples=24, seed=5) if train else dict(window_samples=24))
        stream = CropStream if train else WindowStream
        a = drain(stream(local, "train", **kw))
        b = drain(stream(piped, "train", **kw))
        c = drain(stream(root, "train", **kw))
        assert len(a) == len(b) == len(c) > 0
        for x, y, z in zip(a, b, c):
            assert x.keys() == y.keys() == z.keys()
            for k in x:
                assert torch.equal(x[k], y[k]) and torch.equal(x[k], z[k])


def test_failing_pipe_and_corrupt_shard_are_reported_and_counts_hold(tmp_path, caplog):
    root, tracks = uneven_set(tmp_path / "set")
    # corrupt the third shard in its middle: the reader must report it, not crash or hang
    bad = root / fmt.shard_name("train", 2)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2048] = b"\xff" * 2048
    bad.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="shards")
    s = CropStream(root, "train", crop_samples=16, batch_size=4)
    batches = drain(s)
    assert len(batches) == len(s) == 4
    assert any(str(bad) in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)

    caplog.clear()
    ev = WindowStream(root, "train", window_samples=2000, batch_size=4)
    assert 7 <= len(ev.track_keys()) < 16  # the scan dropped the unreadable part, and said so
    assert any(str(bad) in r.getMessage() for r in caplog.records)
    assert sum(int(b["valid"].sum()) for b in drain(ev)) == len(ev.track_keys())

    caplog.clear()
    missing = [(f"pipe:cat {tmp_path}/nope.tar", 3), (str(root / fmt.shard_name("train", 0)), 2)]
    s = CropStream(missing, "train", crop_samples=16, batch_size=5)
    batches = drain(s)
    assert len(batches) == len(s) == 1
    assert {tracks_of(r)[0] for r in batches[0]["wave"].numpy()} <= {0, 1}  # re-used readable samples
    assert any("nope.tar" in r.getMessage() and "status" in r.getMessage() for r in caplog.records)


def test_feature_shards_yield_float16_frame_crops(tmp_path):
    tracks = [track(t, n) for t, n in enumerate([50, 80, 120])]
    root = write_set(tmp_path / "set", {"train": [tracks]}, kind="features")
    s = CropStream(root, "train", crop_samples=30, batch_size=3)
    (b,) = drain(s)
    assert set(b) == {"feats", "label"}
    assert b["feats"].dtype == torch.float16 and tuple(b["feats"].shape) == (3, 30, 2)
    for x in b["feats"].numpy().astype(np.int64):
        t, off = x[0]
        assert (x[:, 0] == t).all() and off + 30 <= len(tracks[t]["pcm"])
        np.testing.assert_array_equal(x[:, 1], off + np.arange(30))
    ev = WindowStream(root, "train", window_samples=64, batch_size=4)
    batches = drain(ev)
    assert tuple(batches[0]["feats"].shape) == (4, 64, 2)
    assert sum(int(b["valid"].sum()) for b in batches) == 1 + 1 + 2  # 80: a 16-frame tail is left out


def test_long_unicode_keys_in_pax_headers(tmp_path):
    key = "ä" * 80 + "_long_key_that_needs_a_pax_header" * 3
    tracks = [track(0, 100, key=key), track(1, 100)]
    root = write_set(tmp_path / "set", {"test": [tracks]})
    s = WindowStream(root, "test", window_samples=100, batch_size=2)
    assert s.track_keys() == [key, "trk001"]
    (b,) = drain(s)
    assert b["track"].tolist() == [0, 1] and b["valid"].all()


def _run_ranks(
    root: Path, tmp_path: Path, world: int = 2, workers: int = 2, bs: int = 3, seg: int = 32, crops: int = 1
):
    procs, outs = [], []
    for rank in range(world):
        out = tmp_path / f"rank{rank}.json"
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), PYTHONPATH=str(Path.cwd()))
        cmd = [sys.executable, str(WORKER), str(root), str(out), str(workers), str(bs), str(seg), str(crops)]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
        outs.append(out)
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    return [json.loads(o.read_text()) for o in outs]


@pytest.mark.slow
@pytest.mark.parametrize("layout,crops", [("uneven3", 1), ("single", 1), ("single", 3)])
def test_two_ranks_two_workers_see_each_track_once_and_equal_batches(tmp_path, layout, crops):
    if layout == "uneven3":
        root, tracks = uneven_set(tmp_path / "set")
    else:
        tracks = [track(t, 100 + 37 * t) for t in range(5)]
        root = write_set(tmp_path / "set", {"train": [tracks]})
    seg, bs = 32, 3
    results = _run_ranks(root, tmp_path, bs=bs, seg=seg, crops=crops)
    assert [r["rank"] for r in results] == [0, 1] and all(r["world_size"] == 2 for r in results)
    n = len(tracks)
    # training: every rank yields len(stream) = ceil(ceil(n * crops / 2) / bs) full batches, both epochs
    want = math.ceil(math.ceil(n * crops / 2) / bs)
    for r in results:
        assert r["train_len"] == want
        for e in (0, 1):
            assert r[f"train_batches_{e}"] == want and r[f"train_rows_{e}"] == want * bs
    for e in (0, 1):
        union = [t for r in results for t in r[f"train_tracks_{e}"]]
        assert set(union) == set(range(n))  # nothing lost across ranks x workers
        assert min(union.count(t) for t in range(n)) == crops  # every crop of every track
    # evaluation: every window of every track exactly once over both ranks, equal batch counts
    windows = sorted(tuple(w) for r in results for w in r["eval_windows"])
    expected = sorted((t, int(w)) for t, tr in enumerate(tracks) for w in window_starts(len(tr["pcm"]), seg))
    assert windows == expected
    assert results[0]["eval_batches"] == results[1]["eval_batches"] == results[0]["eval_len"]
    assert all(r["eval_len"] == r["eval_batches"] for r in results)


def test_crops_do_not_depend_on_the_number_of_workers(tmp_path):
    root, _ = uneven_set(tmp_path / "set")
    kw = dict(crop_samples=40, batch_size=3, seed=11, shuffle_buffer=4)
    rows = {}
    for workers in (0, 2):
        s = CropStream(root, "train", **kw)
        s.set_epoch(2)
        rows[workers] = sorted(tracks_of(r) for b in drain(s, workers) for r in b["wave"].numpy())
    # the same (track, crop offset) multiset: offsets hash (seed, epoch, position), not the worker
    assert rows[0] == rows[2] and len(rows[0]) == 18


@pytest.mark.parametrize("world", [1, 2, 3, 5, 20])
def test_in_process_rank_partition_is_exact_for_any_world_size(tmp_path, world):
    root, tracks = uneven_set(tmp_path / "set")
    seg, bs = 64, 5
    train_rows, windows, lens = [], [], set()
    for rank in range(world):
        kw = dict(batch_size=bs, rank=rank, world_size=world)
        tr = CropStream(root, "train", crop_samples=seg, shuffle_buffer=3, **kw)
        batches = drain(tr)
        lens.add((len(tr), len(batches)))
        train_rows += [tracks_of(r)[0] for b in batches for r in b["wave"].numpy()]
        ev = WindowStream(root, "train", window_samples=seg, **kw)
        batches = drain(ev)
        lens.add(("eval", len(ev), len(batches)))
        for b in batches:
            for row, t, ok in zip(b["wave"].numpy(), b["track"].tolist(), b["valid"].tolist()):
                if ok:
                    assert tracks_of(row)[0] == t
                    windows.append((t, tracks_of(row)[1]))  # (track, window start)
    per_rank = math.ceil(math.ceil(16 / world) / bs)
    eval_lens = {x for x in lens if x[0] == "eval"}
    assert lens - eval_lens == {(per_rank, per_rank)}  # every rank: len == yielded, equal counts
    assert len(eval_lens) == 1 and all(a == b for _, a, b in eval_lens)
    assert set(train_rows) == set(range(16)) and len(train_rows) == world * per_rank * bs
    expected = [(t, int(w)) for t, tr in enumerate(tracks) for w in window_starts(len(tr["pcm"]), seg)]
    assert sorted(windows) == expected  # every window of every track exactly once over all ranks


def _read_from(root, kw: dict, start: int) -> tuple[list[dict], int]:
    """Epoch 0 of a training stream from batch ``start``: its batches and the bytes this process read."""
    s = CropStream(root, "train", **kw)
    s.set_epoch(0, start_batch=start)
    before = _bytes_read()
    batches = drain(s)
    return batches, _bytes_read() - before


def _bytes_read() -> int:
    """Bytes this process has read through read() calls so far (Linux ``/proc/self/io`` ``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_start_batch_yields_exactly_the_rest_of_a_full_pass(tmp_path, num_workers):
    root, _ = uneven_set(tmp_path / "set")
    # a shuffle buffer smaller than a worker's share: batches hold samples drawn at random from it
    kw = dict(crop_samples=24, batch_size=3, seed=9, shuffle_buffer=4)
    full_stream = CropStream(root, "train", **kw)
    full_stream.set_epoch(1)
    full = drain(full_stream, num_workers)
    assert len(full) == 6
    for k in range(len(full) + 1):
        s = CropStream(root, "train", **kw)
        s.set_epoch(1, start_batch=k)
        got = drain(s, num_workers)
        assert len(got) == len(s) == len(full)
        assert got[:k] == [{}] * k  # placeholders: item i is batch i of the epoch, whatever the workers
        for a, b in zip(got[k:], full[k:], strict=True):
            assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["label"], b["label"]), k
        s.set_epoch(2)  # the next epoch starts at its first batch again
        assert len(drain(s, num_workers)) == len(full)
    with pytest.raises(TypeError, match="start_batch"):  # evaluation has no mid-epoch start
        WindowStream(root, "train", window_samples=24, batch_size=3).set_epoch(0, start_batch=1)


def test_start_batch_does_not_read_the_pcm_of_the_batches_before_it(tmp_path):
    rng = np.random.default_rng(0)
    n, seg, bs = 12, 50_000, 2  # 100-KB crops of 400-KB tracks
    tracks = [
        {"t": t, "key": f"long{t:02d}", "label_index": t % 3, "fold": -1,
         "pcm": rng.integers(-(2**15), 2**15, 200_000).astype(np.int16)}
        for t in range(n)
    ]  # fmt: skip
    root = write_set(tmp_path / "set", {"train": [tracks[:5], tracks[5:]]})
    kw = dict(crop_samples=seg, batch_size=bs, seed=3, shuffle_buffer=5)
    crop_bytes = 2 * seg

    def read(start: int) -> tuple[list[dict], int]:
        return _read_from(root, kw, start)

    full, full_bytes = read(0)
    assert len(full) == 6 and full_bytes >= n * crop_bytes  # every crop read once (and only the crop)
    overhead = full_bytes - n * crop_bytes  # tar headers and .json members
    assert overhead < crop_bytes // 4
    rest, rest_bytes = read(4)
    assert rest[:4] == [{}] * 4
    assert all(torch.equal(a["wave"], b["wave"]) for a, b in zip(rest[4:], full[4:], strict=True))
    # only the 4 crops of batches 4 and 5 are read; the other 8 samples give their headers and .json
    assert 4 * crop_bytes <= rest_bytes <= 4 * crop_bytes + overhead


def test_start_batch_after_an_unreadable_sample_still_matches_the_full_pass(tmp_path, caplog):
    root, _ = uneven_set(tmp_path / "set")
    bad = root / fmt.shard_name("train", 2)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2048] = b"\xff" * 2048  # a bad header checksum mid-shard
    bad.write_bytes(bytes(data))
    kw = dict(crop_samples=16, batch_size=3, seed=1, shuffle_buffer=4)
    full = drain(CropStream(root, "train", **kw))
    caplog.set_level(logging.WARNING, logger="shards")
    for k in range(len(full) + 1):
        s = CropStream(root, "train", **kw)
        s.set_epoch(0, start_batch=k)
        got = drain(s)
        assert len(got) == len(full) and got[:k] == [{}] * k
        assert all(torch.equal(a["wave"], b["wave"]) for a, b in zip(got[k:], full[k:], strict=True))
    assert any("reading the" in r.getMessage() and "in full" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------ crops per track


def _crops(batches: list[dict]) -> list[tuple[int, int]]:
    return [tracks_of(r) for b in batches for r in b["wave"].numpy()]


@pytest.mark.parametrize("partial_reads", [True, False])
def test_crops_per_track_gives_k_distinct_crops_of_every_track_per_epoch(tmp_path, partial_reads):
    root, tracks = uneven_set(tmp_path / "set")
    k, seg, bs = 3, 32, 4
    kw = dict(crop_samples=seg, batch_size=bs, seed=5, shuffle_buffer=10, crops_per_track=k)
    s = CropStream(root, "train", partial_reads=partial_reads, **kw)
    assert len(s) == 16 * k // bs == 12  # an epoch is k crops of each of the 16 tracks
    for epoch in (0, 1):
        s.set_epoch(epoch)
        batches = drain(s)
        assert len(batches) == len(s)
        per_track: dict[int, list[int]] = {}
        for b in batches:
            for row, label in zip(b["wave"].numpy(), b["label"].tolist()):
                t, off = tracks_of(row)
                np.testing.assert_array_equal(row, tracks[t]["pcm"][off : off + seg])
                assert label == tracks[t]["label_index"]
                per_track.setdefault(t, []).append(off)
        assert sorted(per_track) == list(range(16))
        for t, offs in per_track.items():
            assert len(offs) == k and len(set(offs)) == k, (t, offs)  # k distinct crops of every track
            span = len(tracks[t]["pcm"]) - seg + 1  # possible starts, cut in k equal parts: one crop in each
            assert sorted(o * k // span for o in offs) == list(range(k)), (t, offs, span)
        # the shuffle buffer mixes tracks: a track's crops are not all in one batch
        assert sum(len({tracks_of(r)[0] for r in b["wave"].numpy()}) for b in batches) > len(batches) * 2
    # crop offsets are random per epoch, and the partial and whole reads give the same batches
    s.set_epoch(0)
    e0 = _crops(drain(s))
    s.set_epoch(1)
    assert sorted(e0) != sorted(_crops(drain(s)))
    other = CropStream(root, "train", partial_reads=not partial_reads, **kw)
    assert _crops(drain(other)) == e0


@pytest.mark.parametrize("world", [2, 3])
def test_crops_per_track_gives_equal_batch_counts_on_every_rank(tmp_path, world):
    root, _ = uneven_set(tmp_path / "set")
    k, bs = 3, 5
    lens, crops = set(), []
    for rank in range(world):
        by_workers = []
        for workers in (0, 2):
            s = CropStream(root, "train", crop_samples=24, batch_size=bs, seed=2, shuffle_buffer=6,
                            rank=rank, world_size=world, crops_per_track=k)  # fmt: skip
            batches = drain(s, workers)
            lens.add((len(s), len(batches)))
            by_workers.append(_crops(batches))
        assert sorted(by_workers[0]) == sorted(by_workers[1])  # the same crops whatever the workers
        crops += by_workers[0]
    per_rank = math.ceil(math.ceil(16 * k / world) / bs)
    assert lens == {(per_rank, per_rank)}  # every rank yields len(stream) batches, the same number
    assert len(crops) == world * per_rank * bs
    # k crops of every track over the ranks, plus the few that fill the last batches (wrap-around)
    counts = [sum(1 for c in crops if c[0] == t) for t in range(16)]
    assert min(counts) == k and sum(counts) - 16 * k < world * bs


@pytest.mark.parametrize("num_workers", [0, 2])
def test_crops_per_track_start_batch_yields_exactly_the_rest_of_a_full_pass(tmp_path, num_workers):
    root, _ = uneven_set(tmp_path / "set")
    kw = dict(crop_samples=24, batch_size=3, seed=4, shuffle_buffer=5, crops_per_track=3)
    full_stream = CropStream(root, "train", **kw)
    full_stream.set_epoch(1)
    full = drain(full_stream, num_workers)
    assert len(full) == 16
    for k in (1, 5, 9, 15, 16):
        s = CropStream(root, "train", **kw)
        s.set_epoch(1, start_batch=k)
        got = drain(s, num_workers)
        assert len(got) == len(full) and got[:k] == [{}] * k
        for a, b in zip(got[k:], full[k:], strict=True):
            assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["label"], b["label"]), k


def test_crops_per_track_reads_each_track_once_and_skips_the_pcm_before_the_start_batch(tmp_path):
    rng = np.random.default_rng(1)
    n, seg, bs, k = 6, 20_000, 3, 3  # 3 crops of 40 KB from each 400-KB track
    tracks = [
        {"t": t, "key": f"long{t:02d}", "label_index": t % 3, "fold": -1,
         "pcm": rng.integers(-(2**15), 2**15, 200_000).astype(np.int16)}
        for t in range(n)
    ]  # fmt: skip
    root = write_set(tmp_path / "set", {"train": [tracks]})
    kw = dict(crop_samples=seg, batch_size=bs, seed=3, shuffle_buffer=4, crops_per_track=k)

    def read(start: int) -> tuple[list[dict], int]:
        return _read_from(root, kw, start)

    full, full_bytes = read(0)
    assert len(full) == n * k // bs == 6
    # one read per track of the span its 3 crops cover (at most the whole track), not 3 reads
    assert full_bytes <= n * 2 * 200_000 + 20_000
    rest, rest_bytes = read(5)
    assert all(torch.equal(a["wave"], b["wave"]) for a, b in zip(rest[5:], full[5:], strict=True))
    # batch 5 holds 3 crops, of at most 3 tracks: those are read, the others only give their headers
    assert rest_bytes <= 3 * 2 * 200_000 + 20_000 < full_bytes


# ------------------------------------------------------------------------------------------ multi-label


def test_multilabel_crop_batches_carry_multi_hot_targets_of_their_tracks(tmp_path):
    root, tracks = uneven_set(tmp_path / "s", multilabel=True)
    stream = CropStream(root, "train", crop_samples=32, batch_size=4, seed=1)
    assert stream.task == "multilabel" and stream.num_targets == 3
    batches = drain(stream)
    assert batches
    for b in batches:
        assert "label" not in b and b["targets"].dtype == torch.float32 and b["targets"].shape == (4, 3)
        for row, target in zip(b["wave"].numpy(), b["targets"].numpy()):
            t, _ = tracks_of(row)
            assert target.tolist() == [float(i in tags_of(t)) for i in range(3)]


def test_multilabel_crop_targets_survive_start_batch_and_refill(tmp_path):
    root, _ = uneven_set(tmp_path / "s", multilabel=True)
    full = drain(CropStream(root, "train", crop_samples=32, batch_size=3, seed=2, shuffle_buffer=4))
    part = CropStream(root, "train", crop_samples=32, batch_size=3, seed=2, shuffle_buffer=4)
    part.set_epoch(0, start_batch=2)
    rest = [b for b in drain(part) if b]
    assert len(rest) == len(full) - 2
    for a, b in zip(full[2:], rest):
        assert torch.equal(a["wave"], b["wave"]) and torch.equal(a["targets"], b["targets"])


def test_multilabel_window_batches_and_track_targets(tmp_path):
    root, tracks = uneven_set(tmp_path / "s", multilabel=True)
    stream = WindowStream(root, "train", window_samples=100, batch_size=8)
    targets = stream.track_targets()
    keys = stream.track_keys()
    assert targets.dtype == np.uint8 and targets.shape == (len(keys), 3)
    by_key = {tr["key"]: tr["t"] for tr in tracks}
    for key, row in zip(keys, targets):
        assert row.tolist() == [int(i in tags_of(by_key[key])) for i in range(3)]
    padding = 0
    for b in drain(stream):
        assert "label" not in b and b["targets"].shape == (8, 3) and b["targets"].dtype == torch.float32
        for tr, ok, target in zip(b["track"].tolist(), b["valid"].tolist(), b["targets"].numpy()):
            if not ok:
                padding += 1
                assert tr == -1 and not target.any()
            else:
                assert target.tolist() == targets[tr].astype(np.float32).tolist()
    assert padding > 0


def test_single_label_sets_keep_label_batches_and_refuse_track_targets(tmp_path):
    root, _ = uneven_set(tmp_path / "s")
    stream = WindowStream(root, "train", window_samples=100, batch_size=8)
    assert stream.task == "singlelabel" and stream.num_targets is None  # a manifest without "task"
    b = next(iter(drain(stream)))
    assert "targets" not in b and b["label"].dtype == torch.int64
    with pytest.raises(ValueError, match="single-label"):
        stream.track_targets()


def test_multilabel_rows_refilled_after_a_corrupt_shard_keep_their_own_targets(tmp_path, caplog):
    root, _ = uneven_set(tmp_path / "s", multilabel=True)
    big = root / fmt.shard_name("train", 2)
    big.write_bytes(big.read_bytes()[:2000])  # truncated: most of its 9 tracks unreadable
    stream = CropStream(root, "train", crop_samples=32, batch_size=4, seed=0)
    with caplog.at_level(logging.ERROR):
        batches = drain(stream)
    assert len(batches) == len(stream) and "re-using samples" in caplog.text
    for b in batches:
        for row, target in zip(b["wave"].numpy(), b["targets"].numpy()):
            t, _ = tracks_of(row)
            assert target.tolist() == [float(i in tags_of(t)) for i in range(3)]
