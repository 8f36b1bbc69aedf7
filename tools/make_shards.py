#!/usr/bin/env python
"""Music collection -> WebDataset tar shards + manifest.json. Thin CLI over :mod:`shards.ingest`.

    python tools/make_shards.py --layout {auto,gtzan,fma,folder,csv,jamendo,mtat,tags} SOURCE --out DIR [options]
    python tools/make_shards.py --layout msd MSD_ROOT --labels msd_tagtraum_cd2c.cls --out DIR  # features
    # multi-label sets (each track a set of tags):
    python tools/make_shards.py --layout jamendo MTG_JAMENDO_ROOT --subset genre --split-index 0 --out DIR
    python tools/make_shards.py --layout mtat MTAT_ROOT --top-tags 50 --out DIR
    python tools/make_shards.py --layout fma FMA_ROOT --labels genres_all --out DIR
    python tools/make_shards.py --layout tags MUSIC_FOLDER --label-map map.yaml --min-count 20 --out DIR
    python tools/make_shards.py list.csv --out DIR   # a csv with a 'labels' column (tags split by --label-sep)

Run with --help for every option.
"""

import sys

from shards.ingest import main

if __name__ == "__main__":
    sys.exit(main())
