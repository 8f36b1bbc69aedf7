"""Subprocess body for the multi-rank reader tests: one DDP rank (RANK / WORLD_SIZE from the environment)
iterates a CropStream and a WindowStream through a real multi-worker DataLoader and dumps what it saw as JSON.

Usage: python _reader_worker.py SHARD_DIR OUT.json NUM_WORKERS BATCH_SIZE SEGMENT [CROPS_PER_TRACK]
"""

from __future__ import annotations

import json
import sys

from shards.crop_stream import CropStream
from shards.reader import make_loader
from shards.window_stream import WindowStream


def main() -> None:
    shard_dir, out, num_workers, batch_size, segment = sys.argv[1:6]
    num_workers, batch_size, segment = int(num_workers), int(batch_size), int(segment)
    crops = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    result: dict[str, object] = {}

    train = CropStream(
        shard_dir,
        "train",
        crop_samples=segment,
        batch_size=batch_size,
        shuffle_buffer=4,
        crops_per_track=crops,
    )
    result["rank"], result["world_size"] = train.rank, train.world_size
    result["train_len"] = len(train)
    for epoch in (0, 1):
        train.set_epoch(epoch)
        batches = [b for b in make_loader(train, num_workers=num_workers)]
        result[f"train_batches_{epoch}"] = len(batches)
        result[f"train_rows_{epoch}"] = sum(int(b["wave"].shape[0]) for b in batches)
        # track id of every crop (the tests encode it as value // 1024)
        result[f"train_tracks_{epoch}"] = sorted(int(v) // 1024 for b in batches for v in b["wave"][:, 0])

    ev = WindowStream(shard_dir, "train", window_samples=segment, batch_size=batch_size)
    result["eval_len"] = len(ev)
    batches = list(make_loader(ev, num_workers=num_workers))
    result["eval_batches"] = len(batches)
    result["eval_windows"] = [
        [int(t), int(w[0]) % 1024]  # (track, window start)
        for b in batches
        for t, w, ok in zip(b["track"], b["wave"], b["valid"])
        if ok
    ]
    result["eval_invalid"] = sum(int((~b["valid"]).sum()) for b in batches)
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
