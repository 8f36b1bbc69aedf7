"""Architecture comparison: the same data, seed and budget for each model, one table.

``python -m engine compare --models cnn,rnn,crnn,resnet [--features logmel] --config C.yaml --shards DIR --out DIR``

For each architecture: train (the config's data/optim/run sections, the architecture's own example config
``configs/<arch>.yaml`` for its model section unless ``--features`` forces a feature stack), evaluate the
best checkpoint on the test split, time inference, and write ``comparison.md``, ``comparison.json`` and
``comparison.png``: accuracy, macro precision/recall/F1 at segment and track level, parameters, training
and inference clips/s, wall time. Resumable: a model whose results exist is not retrained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import CheckpointError
from engine.config import ConfigError, config_json, from_dict, load_yaml
from engine.cv import evaluate_best, flatten_metrics
from engine.models import ModelConfig
from engine.train import TrainConfig, config_from_args, saved_state_dir, train
from shards.format import ManifestError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
COLUMNS = (
    ("segment_accuracy", "seg acc"), ("segment_macro_precision", "seg P"), ("segment_macro_recall", "seg R"),
    ("segment_macro_f1", "seg F1"), ("track_accuracy", "track acc"), ("track_macro_precision", "track P"),
    ("track_macro_recall", "track R"), ("track_macro_f1", "track F1"),
)  # fmt: skip


def model_config_for(arch: str, base: ModelConfig, features: list[str] | None) -> ModelConfig:
    """The architecture's example model section (``configs/<arch>.yaml``) or the base config with its name."""
    path = CONFIG_DIR / f"{arch}.yaml"
    if base.arch == arch or not path.is_file():
        cfg = dataclasses.replace(base, arch=arch, params=base.params if base.arch == arch else {})
    else:
        cfg = from_dict(ModelConfig, load_yaml(path).get("model", {}), "model")
    if features:
        cfg = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, features=list(features)))
    cfg.validate()  # dataclasses.replace does not: an unknown arch must fail before any model trains
    return cfg


@torch.no_grad()
def inference_clips_per_s(checkpoint: str | Path, batch_size: int = 32, repeats: int = 3) -> float:
    """Eval-mode clips/s of a checkpoint on random int16 windows of its own length (model alone, no I/O)."""
    from engine.checkpoint import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, ckpt = load_model(checkpoint, device=device)
    wave = torch.randint(-8000, 8000, (batch_size, ckpt["segment_samples"]), dtype=torch.int16, device=device)
    if getattr(model, "input_kind", "wave") == "features":  # MSD models: [B, frames, D] float16 sequences
        dim = model.frontend.feature_dim
        wave = torch.randn(batch_size, ckpt["segment_samples"], dim, device=device).half()
    model(wave)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        model(wave)
    if device == "cuda":
        torch.cuda.synchronize()
    return batch_size * repeats / (time.perf_counter() - t0)


def compare(cfg: TrainConfig, models: list[str], out_dir: str | Path, features: list[str] | None = None) -> list[dict[str, Any]]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # validate every model config before hours of training
    configs = {arch: model_config_for(arch, cfg.model, features) for arch in models}
    rows = []
    for arch, mcfg in configs.items():
        done = out_dir / arch / "result.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        run_dir = out_dir / arch / "run"
        resume = saved_state_dir(run_dir) is not None
        arch_cfg = dataclasses.replace(cfg, model=mcfg, run=dataclasses.replace(cfg.run, out_dir=str(run_dir), resume=resume))
        t0 = time.perf_counter()
        summary = train(arch_cfg)
        wall = time.perf_counter() - t0
        metrics = evaluate_best(cfg, summary["best_checkpoint"], "test", out_dir / arch / "eval")
        history = summary["history"]
        row = {
            "model": arch,
            "features": "+".join(mcfg.features.features),
            **flatten_metrics(metrics),
            "parameters": summary["parameters"],
            "train_clips_per_s": sum(h["train_clips_per_s"] for h in history) / max(1, len(history)),
            "inference_clips_per_s": inference_clips_per_s(summary["best_checkpoint"]),
            "wall_seconds": wall,
            "epochs": len(history),
            "checkpoint": summary["best_checkpoint"],
        }
        done.write_text(json.dumps(row, indent=2))
        rows.append(row)
    (out_dir / "comparison.json").write_text(json.dumps({"config": config_json(cfg), "rows": rows}, indent=2, allow_nan=False))
    (out_dir / "comparison.md").write_text(comparison_markdown(rows))
    from engine.plots import comparison_chart_png  # matplotlib: only when a table is done

    comparison_chart_png(rows, out_dir / "comparison.png")
    return rows


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    cols = [(k, name) for k, name in COLUMNS if any(k in r for r in rows)]
    head = ["model", "features"] + [name for _, name in cols] + ["params", "train clips/s", "infer clips/s", "wall s"]
    lines = ["# Architecture comparison", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [r["model"], r["features"]] + [f"{100 * r[k]:.1f}%" if k in r else "-" for k, _ in cols]
        cells += [f"{r['parameters']:,}", f"{r['train_clips_per_s']:.0f}", f"{r['inference_clips_per_s']:.0f}", f"{r['wall_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from engine.train import build_parser

    parser: argparse.ArgumentParser = build_parser()
    parser.prog = "python -m engine compare"
    parser.description = "Train and evaluate several architectures on the same data, seed and budget. " + (parser.description or "")
    parser.add_argument("--models", default="cnn,rnn,crnn,resnet", help="comma-separated architectures")
    parser.add_argument("--features", help="force one feature stack for all, e.g. logmel or mfcc,chroma")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before and after options
    if not args.out:
        parser.error("--out DIR is required")
    out = args.out
    args.out = None
    try:
        cfg = config_from_args(args)
        features = [f for f in args.features.split(",") if f] if args.features else None
        rows = compare(cfg, [m.strip() for m in args.models.split(",") if m.strip()], out, features)
    except (ConfigError, CheckpointError, ManifestError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(comparison_markdown(rows))
    print(f"results: {Path(out) / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
