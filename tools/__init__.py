"""Command-line tools: ``python -m tools.make_shards`` (also under ``accelerate launch`` / ``torchrun``),
``python -m tools.make_synthetic``."""
