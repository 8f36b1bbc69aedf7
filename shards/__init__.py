"""Files -> shards -> batches: decoding, collection layouts, splits, the tar writer and the streaming reader.

Registration happens here: every module that registers collection layouts (``shards.layouts.LAYOUTS``) is
imported below, one line per module, so the registry is full whichever part of ``shards`` is imported
first. Importing ``shards`` never imports torch (ingest CLIs and their worker processes start fast).
"""

from __future__ import annotations

from shards import layouts as layouts  # LAYOUTS: folder, gtzan, fma, csv
from shards import layouts_tags as layouts_tags  # LAYOUTS: jamendo, mtat, tags (multi-label)
from shards import msd as msd  # LAYOUTS: msd (Million Song Dataset HDF5 feature files)
