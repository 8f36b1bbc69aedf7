"""A split cut into a number of shards that a training run's readers share evenly (``--shards-for-ranks K``).

A training run with P processes x W loader workers reads a split as K = P x W streams; when the split's
shard count is a multiple of K every stream opens the same number of whole shards and none idles at the end of
an epoch waiting on another's last shard.
"""

from __future__ import annotations

from typing import Any

from shards.format import shard_name

__all__ = ["cut_for_ranks"]


def cut_for_ranks(
    shards: list[dict[str, Any]], split: str, multiple: int, warnings: list[str]
) -> list[dict[str, Any]]:
    """``shards`` (the plan's ``{"name", "split", "start", "stop"}`` ranges, splits contiguous) with ``split``
    re-cut (unless its count is one already) into the least multiple of ``multiple`` shards at or above its count, of equal track counts (+-1);
    the tracks and their order are unchanged. ``multiple <= 1``: unchanged. Fewer tracks than ``multiple``:
    unchanged, with a warning appended to ``warnings``."""
    mine = [s for s in shards if s["split"] == split]
    if multiple <= 1 or not mine or len(mine) % multiple == 0:
        return shards
    start, stop = mine[0]["start"], mine[-1]["stop"]
    n_tracks = stop - start
    if n_tracks < multiple:
        warnings.append(
            f"--shards-for-ranks {multiple}: the {split} split has only {n_tracks} samples, fewer than "
            f"{multiple} shards; its {len(mine)} shard(s) are kept"
        )
        return shards
    count = min(-(-len(mine) // multiple) * multiple, n_tracks // multiple * multiple)
    cut = [
        {"name": shard_name(split, j), "split": split, "start": start + j * n_tracks // count,
         "stop": start + (j + 1) * n_tracks // count}
        for j in range(count)
    ]  # fmt: skip
    first = shards.index(mine[0])
    return shards[:first] + cut + [s for s in shards[first:] if s["split"] != split]
