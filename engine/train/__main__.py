"""``python -m engine.train`` (what ``accelerate launch -m engine.train`` and ``torchrun -m engine.train`` run)."""

import sys

from engine.train.cli import main

sys.exit(main())
