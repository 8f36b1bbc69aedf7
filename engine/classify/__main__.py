"""``python -m engine.classify ...`` and ``accelerate launch -m engine.classify ...``."""

import sys

from engine.classify.cli import main

sys.exit(main())
