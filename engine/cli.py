"""``python -m engine COMMAND ...``: one entry point for every job.

Each command lives in its own module with a ``main(argv) -> int``; this table maps names to modules and
imports only the one that runs (so ``--help`` of one command does not pay for the others' imports).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("engine.demo", "synthetic corpus -> shards -> train -> evaluate -> classify, in one go"),
    "train": ("engine.train.cli", "train a model on a shard set (also: accelerate launch -m engine.train)"),
    "evaluate": ("engine.evaluate", "metrics, report and confusion matrix of a checkpoint on a split"),
    "cv": ("engine.cv", "k-fold cross-validation over the shards' folds"),
    "compare": ("engine.compare", "train and evaluate several architectures under the same budget"),
    "classify": ("engine.classify", "classify music files and folders with a checkpoint or an exported model (resumable, JSONL/CSV)"),
    "embed": (
        "engine.embed",
        "embed a shard set's windows with a pretrained model (musicnn:MSD_musicnn) into feature shards for probes",
    ),
    "export": (
        "engine.export",
        "export a checkpoint to torch.export (.pt2), ONNX or TorchScript (waveform in, probabilities out)",
    ),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m engine COMMAND [options]   (python -m engine COMMAND --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}; valid: {', '.join(COMMANDS)}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from engine.logs import setup_logging

    setup_logging()
    return int(module.main(rest) or 0)
