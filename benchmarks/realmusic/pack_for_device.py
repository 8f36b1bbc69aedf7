#!/usr/bin/env python
"""Pack the real-music set for a lent GPU machine: Ogg Vorbis copies of the clips plus clips.csv (and
clips_tags.csv, the multi-label list), so that the set (304 MB of WAV) travels inside a device call's 64 MiB
working tree (``benchmarks/gpu_smallset.sh``).

Vorbis at ``--quality-level`` 0.4 (soundfile's ``compression_level``: 0 = best) is ~48 MB for the 240 clips,
27 dB median SNR against the WAV; the MFCC-statistics baseline moves from 54.9 +- 3.9 % (WAV) to
53.3 +- 5.1 % on the same folds, so a device table reports every row, baseline included, on the Vorbis copies.

    python benchmarks/realmusic/pack_for_device.py [--src /work/data/realmusic] [--out devdata/realmusic]
"""

from __future__ import annotations

import argparse
import csv
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf


def transcode(job: tuple[Path, Path, float]) -> float:
    """WAV -> Ogg Vorbis at the same rate; returns the SNR (dB) of the decoded copy."""
    src, dst, level = job
    x, sr = sf.read(src, dtype="float32")
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, x, sr, format="OGG", subtype="VORBIS", compression_level=level)
    y, _ = sf.read(dst, dtype="float32")
    if len(y) != len(x):
        raise RuntimeError(f"{dst}: {len(y)} frames decoded, {len(x)} written")
    err = float(((x - y) ** 2).sum())
    return 10 * np.log10(float((x**2).sum()) / max(err, 1e-20))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=Path("/work/data/realmusic"), help="folder with clips.csv")
    p.add_argument("--out", type=Path, default=Path("devdata/realmusic"))
    p.add_argument("--quality-level", type=float, default=0.4, help="soundfile compression_level, 0..1")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with open(args.src / "clips.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    jobs = [(args.src / r["path"], args.out / Path(r["path"]).with_suffix(".ogg"), args.quality_level) for r in rows]
    with ProcessPoolExecutor(args.workers) as ex:
        snr = np.array(list(ex.map(transcode, jobs)))
    for name in ("clips.csv", "clips_tags.csv"):  # single- and multi-label lists (a build before tags: the first)
        if not (args.src / name).is_file():
            continue
        with open(args.src / name, newline="") as f:
            listed = list(csv.DictReader(f))
        with open(args.out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(listed[0]))
            w.writeheader()
            for r in listed:
                w.writerow({**r, "path": str(Path(r["path"]).with_suffix(".ogg"))})
    size = sum(j[1].stat().st_size for j in jobs) / 2**20
    print(f"{len(jobs)} clips -> {args.out}: {size:.1f} MiB, SNR median {np.median(snr):.1f} dB, min {snr.min():.1f}")


if __name__ == "__main__":
    main()
