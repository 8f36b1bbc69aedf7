"""``python -m engine train`` (also ``accelerate launch -m engine.train``, ``torchrun -m engine.train``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from engine.checkpoint_format import CheckpointError
from engine.config import ConfigError, load_config, to_dict
from engine.logs import setup_logging
from engine.train.config import TrainConfig, yaml_dump
from engine.train.solvers import train
from shards.format import ManifestError
from shards.outputs import cli_errors

__all__ = ["build_parser", "config_from_args", "main", "print_config"]


def build_parser() -> argparse.ArgumentParser:
    sections = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
    p = argparse.ArgumentParser(
        prog="python -m engine train",
        description="Train a genre model on a shard set. Any config field can be overridden as section.key=value "
        "(e.g. optim.lr=3e-4 model.arch=crnn data.batch_size=64).",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides (sections: {sections})")
    p.add_argument("--config", help="YAML config (see configs/*.yaml); overrides apply on top")
    p.add_argument("--shards", help="shard-set directory (= data.shards)")
    p.add_argument("--out", help="run directory (= run.out_dir)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved state")
    p.add_argument("--init-from", help="start from this checkpoint's weights (= run.init_from)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    for flag, key in (("shards", "data.shards"), ("out", "run.out_dir"), ("init_from", "run.init_from")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.resume:
        overrides.append("run.resume=true")
    return load_config(TrainConfig, args.config, overrides)


def print_config(args: argparse.Namespace) -> int:
    """``--print-config``: the resolved config (file + overrides) as YAML on stdout; exit status 0, or 2 with
    the config error (train and cv)."""
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print(yaml_dump(to_dict(cfg)))
    return 0


@cli_errors("python -m engine train")
def main(argv: list[str] | None = None) -> int:
    """Exit status 0; 2 for a mistake (a config error, an unusable --out or input file: one line on stderr,
    nothing written); 3 when out of memory."""
    setup_logging()
    args = build_parser().parse_intermixed_args(argv)  # key=value overrides before and after options
    if args.print_config:
        return print_config(args)
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg)
    except (ConfigError, CheckpointError, ManifestError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError as err:
        print(
            f"error: out of memory ({err}). Lower data.batch_size (now {cfg.data.batch_size}), use "
            "optim.grad_accum to keep the effective batch, or run.precision=bf16.",
            file=sys.stderr,
        )
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"]
        print(f"run: {summary['run_dir']}")
        print(f"checkpoint: {summary['best_checkpoint']}")
        if best:
            print(f"valid track accuracy: {100 * best['valid_track_acc']:.1f}% (epoch {summary['best_epoch']})")
    return 0
