#!/usr/bin/env python
"""Music collection -> WebDataset tar shards + manifest.json. Thin CLI over :mod:`shards.ingest`.

    python tools/make_shards.py --layout {auto,gtzan,fma,folder,csv} SOURCE --out DIR [options]
    python tools/make_shards.py --layout msd MSD_ROOT --labels msd_tagtraum_cd2c.cls --out DIR  # features

Run with --help for every option.
"""

import sys

from shards.ingest import main

if __name__ == "__main__":
    sys.exit(main())
