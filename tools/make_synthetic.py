"""Write the built-in synthetic genre corpus: ``python tools/make_synthetic.py OUT [options]`` (``--help``).

The generator lives in :mod:`shards.synthetic`; this file is only its command line.
"""

from __future__ import annotations

import sys

from shards.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
