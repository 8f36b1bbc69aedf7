"""Architecture x recipe comparison: the same data, seed and folds for each row, one table.

``python -m engine compare --models stats,cnn,crnn --config C.yaml --shards DIR --out DIR``: one train/test run per
row (the config's data/optim/run sections, the architecture's example ``configs/<arch>.yaml`` for its model
section unless ``--features`` forces a feature stack).

``python -m engine compare --cv --models stats=configs/stats.yaml,crnn=configs/crnn.yaml,seed=configs/seed_cnn.yaml,
probe=configs/probe.yaml@EMB_DIR --shards DIR --out DIR``: a row named by ``NAME=CONFIG.yaml`` is that whole config
(model, data, optim: an architecture *and* its recipe); ``@SHARDS`` gives the row its own shard set (an embedding set
from ``python -m engine embed``, whose folds are the source's). With ``--cv`` every row is a
:func:`engine.cv.cross_validate` over the shard set's folds, the same folds for every row; the table gives the mean ±
std over folds of track accuracy (``eval.track_aggregate``, mean_prob by default) with the mean_logprob figure
beside it, training time per fold and in total, and parameters.

The classic baseline, ``stats`` (MFCC + chroma mean and std -> logistic regression, ``configs/stats.yaml``), is the
first row of every table on an audio shard set: added when no row is a ``stats`` model, moved to the front when
one is (``--no-baseline``: leave it out). Writes ``comparison.md``, ``comparison.json`` and ``comparison.png``.
Resumable: a row whose results exist is not retrained (with ``--cv``, fold by fold).
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

from engine.checkpoint_format import CheckpointError
from engine.config import CONFIG_DIR, ConfigError, config_json, from_dict, load_yaml
from engine.cv import check_folds, cross_validate, evaluate_best, flatten_metrics
from engine.models import ARCHS, ModelConfig
from engine.train import TrainConfig, config_from_args, saved_state_dir, train
from shards.format import ManifestError, load_manifest
from shards.outputs import cli_errors, prepare_output_dir

COLUMNS = (
    ("segment_accuracy", "seg acc"), ("segment_macro_precision", "seg P"), ("segment_macro_recall", "seg R"),
    ("segment_macro_f1", "seg F1"), ("track_accuracy", "track acc"), ("track_macro_precision", "track P"),
    ("track_macro_recall", "track R"), ("track_macro_f1", "track F1"),
    ("track_map", "track mAP"), ("track_roc_auc", "track ROC-AUC"), ("track_f1_macro", "track F1@0.5"),  # tags
)  # fmt: skip
CV_COLUMNS = (
    ("track_accuracy", "track acc"), ("track_mean_logprob_accuracy", "track acc (mean logprob)"),
    ("track_macro_f1", "track F1"), ("segment_accuracy", "seg acc"),
    ("track_map", "track mAP"), ("track_roc_auc", "track ROC-AUC"), ("segment_map", "seg mAP"),  # multi-label
)  # fmt: skip
BASELINE = ("stats", CONFIG_DIR / "stats.yaml")  # the row every table starts with


@dataclasses.dataclass(frozen=True)
class RowSpec:
    """One row of a comparison: ``name`` (its folder under --out), and either an architecture over the shared
    config (``config`` None) or a whole config file (``config``) with an optional shard set of its own."""

    name: str
    arch: str | None = None
    config: Path | None = None
    shards: str | None = None


def parse_models(text: str | list[str]) -> list[RowSpec]:
    """``"stats,crnn=configs/crnn.yaml,probe=configs/probe.yaml@emb/dir"`` (or the items as a list) -> rows.
    ``NAME`` alone is an architecture; ``NAME=CONFIG`` a whole config; ``NAME=CONFIG@SHARDS`` also its shards."""
    items = [x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip()]
    rows: list[RowSpec] = []
    for item in items:
        if "=" not in item:
            rows.append(RowSpec(name=item, arch=item))
            continue
        name, _, rest = item.partition("=")
        path, _, shards = rest.partition("@")
        if not name.strip() or not path.strip():
            raise ConfigError(f"--models item {item!r}: expected NAME, NAME=CONFIG.yaml or NAME=CONFIG.yaml@SHARDS")
        config = Path(path.strip())
        if not config.is_file():
            raise ConfigError(f"--models item {item!r}: config {config} not found")
        rows.append(RowSpec(name=name.strip(), config=config, shards=shards.strip() or None))
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ConfigError(f"--models: row names must be distinct, got {names}")
    if not rows:
        raise ConfigError(
            f"--models {text!r}: no rows; give architectures ({', '.join(ARCHS.names())}) or NAME=CONFIG.yaml, "
            "comma-separated"
        )
    return rows


def row_configs(
    cfg: TrainConfig,
    rows: list[RowSpec],
    features: list[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    baseline: bool = True,
) -> dict[str, TrainConfig]:
    """Every row's resolved config, in table order (the ``stats`` baseline first), validated before any
    training. A config-file row gets the shared shards (or its own ``@SHARDS``) and the command line's
    ``key=value`` overrides on top of its file; ``--features`` applies to architecture rows only."""
    from engine.config import load_config

    out: dict[str, TrainConfig] = {}
    for row in rows:
        if row.config is None:
            mcfg = model_config_for(row.arch, cfg.model, features)
            out[row.name] = dataclasses.replace(cfg, model=mcfg)
        else:
            shards = row.shards or cfg.data.shards
            extra = [f"data.shards={shards}"] if shards else []
            out[row.name] = load_config(TrainConfig, str(row.config), [*extra, *overrides])
    # a stats head on precomputed embeddings (configs/probe.yaml) is a probe, not the baseline
    is_baseline = [
        n for n, c in out.items() if c.model.arch == BASELINE[0] and "precomputed" not in c.model.features.features
    ]
    audio = cfg.data.shards is not None and load_manifest(cfg.data.shards).get("kind", "audio") == "audio"
    if baseline and not is_baseline and audio:
        extra = [f"data.shards={cfg.data.shards}", *overrides]
        name = BASELINE[0] if BASELINE[0] not in out else "stats_baseline"
        out = {name: load_config(TrainConfig, str(BASELINE[1]), extra), **out}
    elif is_baseline:
        out = {n: out[n] for n in is_baseline[:1]} | {n: c for n, c in out.items() if n != is_baseline[0]}
    return out


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


def compare(
    cfg: TrainConfig,
    models: list[str] | list[RowSpec] | str,
    out_dir: str | Path,
    features: list[str] | None = None,
    *,
    cv: bool = False,
    overrides: list[str] | tuple[str, ...] = (),
    baseline: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate every row (:func:`parse_models`) on the same data; ``cv``: cross-validate each over
    the shard set's folds. Returns the table's rows, the ``stats`` baseline first (see the module docstring)."""
    out_dir = prepare_output_dir(out_dir)
    specs = models if models and isinstance(models, list) and isinstance(models[0], RowSpec) else parse_models(models)
    # validate every row's config before hours of training
    configs = row_configs(cfg, specs, features, overrides, baseline)
    if cv:  # the same folds for every row: an embedding set keeps its source's fold assignment
        folds = {n: int(load_manifest(c.data.shards).get("folds") or 0) for n, c in configs.items()}
        if len(set(folds.values())) != 1:
            raise ConfigError(f"--cv needs the same number of folds in every row's shard set, got {folds}")
        for row_cfg in {c.data.shards: c for c in configs.values()}.values():  # each shard set once
            check_folds(row_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, row_cfg in configs.items():
        done = out_dir / name / "result.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            continue
        row = cv_row(name, row_cfg, out_dir / name) if cv else holdout_row(name, row_cfg, out_dir / name)
        done.write_text(json.dumps(row, indent=2))
        rows.append(row)
    (out_dir / "comparison.json").write_text(
        json.dumps({"config": config_json(cfg), "cv": cv, "rows": rows}, indent=2, allow_nan=False)
    )
    (out_dir / "comparison.md").write_text(comparison_markdown(rows))
    from engine.plots import comparison_chart_png  # matplotlib: only when a table is done

    comparison_chart_png(rows, out_dir / "comparison.png")
    return rows


def holdout_row(name: str, cfg: TrainConfig, row_dir: Path) -> dict[str, Any]:
    """One train/test run: the best checkpoint's metrics on the test split, throughput, wall time."""
    run_dir = row_dir / "run"
    resume = saved_state_dir(run_dir) is not None
    run_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(run_dir), resume=resume))
    t0 = time.perf_counter()
    summary = train(run_cfg)
    wall = time.perf_counter() - t0
    metrics = evaluate_best(cfg, summary["best_checkpoint"], "test", row_dir / "eval")
    history = summary["history"]
    return {
        "model": name,
        "arch": cfg.model.arch,
        "features": "+".join(cfg.model.features.features),
        **flatten_metrics(metrics),
        "parameters": summary["parameters"],
        "train_clips_per_s": sum(h["train_clips_per_s"] for h in history) / max(1, len(history)),
        "inference_clips_per_s": inference_clips_per_s(summary["best_checkpoint"]),
        "wall_seconds": wall,
        "epochs": len(history),
        "checkpoint": summary["best_checkpoint"],
    }


def cv_row(name: str, cfg: TrainConfig, row_dir: Path) -> dict[str, Any]:
    """One cross-validation: every metric's mean (under its own name) and std (``<metric>_std``) over the
    folds, the per-fold track accuracies and training seconds, their total, and the parameters."""
    result = cross_validate(cfg, row_dir / "cv")
    summary, folds = result["summary"], result["folds"]
    row: dict[str, Any] = {"model": name, "arch": cfg.model.arch, "features": "+".join(cfg.model.features.features)}
    for key, ms in summary.items():
        if key in ("best_epoch", "parameters", "train_seconds"):
            continue
        row[key], row[f"{key}_std"] = ms["mean"], ms["std"]
    row.update(
        parameters=folds[0].get("parameters"),  # None: folds from a cv run that predates the field
        folds=len(folds),
        fold_track_accuracy=[f.get("track_accuracy") for f in folds],
        fold_train_seconds=[f.get("train_seconds") for f in folds],
        train_seconds_per_fold=summary["train_seconds"]["mean"] if "train_seconds" in summary else None,
        train_seconds_total=result["train_seconds_total"],
        shards=cfg.data.shards,
    )
    return row


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """The table: test-split rows (segment and track metrics, throughput, wall time) or cross-validation rows
    (mean ± std over folds, per-fold accuracies, training time per fold and in total), one per model."""
    if rows and "folds" in rows[0]:
        return cv_comparison_markdown(rows)
    cols = [(k, name) for k, name in COLUMNS if any(k in r for r in rows)]
    head = ["model", "features"] + [name for _, name in cols] + ["params", "train clips/s", "infer clips/s", "wall s"]
    lines = ["# Architecture comparison", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        cells = [r["model"], r["features"]] + [f"{100 * r[k]:.1f}%" if k in r else "-" for k, _ in cols]
        cells += [f"{r['parameters']:,}", f"{r['train_clips_per_s']:.0f}", f"{r['inference_clips_per_s']:.0f}", f"{r['wall_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cv_comparison_markdown(rows: list[dict[str, Any]]) -> str:
    cols = [(k, name) for k, name in CV_COLUMNS if any(k in r for r in rows)]
    head = ["model", "arch", "features"] + [f"{name} (mean ± std)" for _, name in cols]
    head += ["track acc per fold", "params", "train s per fold", "train s total"]
    k = max(r["folds"] for r in rows)
    lines = [f"# Comparison, {k}-fold cross-validation (same folds for every row)", "", "| " + " | ".join(head) + " |"]
    lines.append("|---" * len(head) + "|")
    for r in rows:
        cells = [r["model"], r["arch"], r["features"]]
        cells += [f"{100 * r[c]:.1f} ± {100 * r[c + '_std']:.1f}%" if c in r else "-" for c, _ in cols]
        cells.append(" / ".join("-" if a is None else f"{100 * a:.1f}" for a in r["fold_track_accuracy"]))
        cells.append("-" if r["parameters"] is None else f"{r['parameters']:,}")
        cells.append(" / ".join("-" if t is None else f"{t:.0f}" for t in r["fold_train_seconds"]))
        cells.append("-" if None in r["fold_train_seconds"] else f"{r['train_seconds_total']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@cli_errors("python -m engine compare")
def main(argv: list[str] | None = None) -> int:
    from engine.train import build_parser

    parser: argparse.ArgumentParser = build_parser()
    parser.prog = "python -m engine compare"
    parser.description = (
        "Train and evaluate several architectures x recipes on the same data, seed and folds; the stats baseline "
        "(MFCC + chroma statistics -> logistic regression) is the first row. "
    ) + (parser.description or "")
    parser.epilog = (
        "example: python -m engine compare --cv --shards shards/mine --out runs/cmp --models "
        "stats=configs/stats.yaml,crnn=configs/crnn.yaml,seed=configs/seed_cnn.yaml,probe=configs/probe.yaml@emb/mine"
    )
    parser.add_argument(
        "--models",
        default="cnn,rnn,crnn,resnet",
        help="comma-separated rows: NAME = an architecture over --config (its model section from configs/NAME.yaml); "
        "NAME=CONFIG.yaml = that whole config (architecture and recipe); NAME=CONFIG.yaml@SHARDS = also its own "
        "shard set, e.g. probe=configs/probe.yaml@EMB_DIR for embeddings from `python -m engine embed` "
        "(default: cnn,rnn,crnn,resnet)",
    )
    parser.add_argument("--features", help="force one feature stack for the architecture rows, e.g. logmel or mfcc,chroma")
    parser.add_argument(
        "--cv",
        action="store_true",
        help="cross-validate every row over the shard set's folds (mean ± std, time per fold) instead of one train/test run",
    )
    parser.add_argument("--no-baseline", action="store_true", help="do not add the stats baseline row")
    args = parser.parse_intermixed_args(argv)  # key=value overrides before and after options
    if args.print_config:  # rows resolve their own configs: one row's config is `cv --config ... --print-config`
        parser.error("--print-config prints one config: use it with `train` or `cv` and that row's --config")
    if not args.out:
        parser.error("--out DIR is required")
    out = args.out
    args.out = None
    try:
        cfg = config_from_args(args)
        features = [f for f in args.features.split(",") if f] if args.features else None
        rows = compare(
            cfg, args.models, out, features, cv=args.cv, overrides=list(args.overrides), baseline=not args.no_baseline
        )
    except (ConfigError, CheckpointError, ManifestError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(comparison_markdown(rows))
    print(f"results: {Path(out) / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
