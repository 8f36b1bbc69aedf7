"""Hostile training requests: every mistake is refused before any work, with one line naming the field or
path, the value and the fix, exit status 2, and nothing written (no run directory, no file).

Also the property of every bounded config field (:mod:`registry.fields`), generated from the fields' metadata
so a new field is covered without a new test: a value at each bound is accepted, one beyond it is refused with
the field's dotted name."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import ConfigError, from_dict
from engine.models import ARCHS
from engine.train import DataConfig, EvalConfig, OptimConfig, RunConfig
from engine.train.cli import main as train_main
from engine.train.data import LOOP_LIMIT, ShardSet, check_window_lengths
from kernels.augment_config import AugmentConfig
from kernels.features import FrontendConfig
from registry.fields import Bounds, bounded_fields, check_bounds
from tests.engine.conftest import shard_copy

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(capsys, argv: list[str], root: Path, snapshot) -> str:
    """Run ``train`` with ``argv``; assert exit status 2, one error line, nothing written under ``root``;
    return stderr."""
    before = snapshot(root)
    rc = train_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert snapshot(root) == before  # no run directory, no config.yaml, no half-written file
    return err


# ------------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize(
    "override, names",
    [
        ("optim.max_steps_per_epoch=-1", ["optim.max_steps_per_epoch", ">= 0", "got -1", "0 = the whole epoch"]),
        ("optim.weight_decay=-1", ["optim.weight_decay", ">= 0", "got -1.0"]),
        ("data.num_workers=-2", ["data.num_workers", ">= -1", "-1 = by core count"]),
        ("model.arch=crnn model.params.dropout=1.5", ["dropout", "in [0, 1)", "got 1.5", "crnn"]),
        ("data.shuffle_buffer=0", ["data.shuffle_buffer", ">= 1", "1 = no shuffling"]),
        ("data.crops_per_track=0", ["data.crops_per_track", ">= 1", "got 0"]),
        ("optim.lr=nan", ["optim.lr", "> 0", "nan"]),
        ("optim.lr=inf", ["optim.lr", "finite", "inf"]),
        ("model.features.n_mels=0", ["model.features.n_mels", ">= 1"]),
        ("model.augment.gain_p=2", ["model.augment.gain_p", "a probability in [0, 1]"]),
    ],
    ids=[
        "negative_max_steps_per_epoch", "negative_weight_decay", "num_workers_below_minus_one", "dropout_above_one",
        "zero_shuffle_buffer", "zero_crops_per_track", "nan_lr", "infinite_lr", "zero_n_mels", "probability_two",
    ],
)  # fmt: skip
def test_an_out_of_range_value_is_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards, override, names):
    err = refused(capsys, ["--shards", synthetic_shards, "--out", tmp_path / "run", *override.split()], tmp_path, snapshot)
    assert err.startswith("config error: ") and err.count("\n") == 1
    for name in names:
        assert name in err


def test_negative_max_steps_per_epoch_is_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards):
    err = refused(
        capsys, ["--shards", synthetic_shards, "--out", tmp_path / "run", "optim.max_steps_per_epoch=-1"], tmp_path, snapshot
    )
    assert "optim.max_steps_per_epoch must be >= 0 (0 = the whole epoch), got -1" in err
    assert not (tmp_path / "run").exists()


def test_minus_one_workers_still_means_by_core_count():
    assert from_dict(DataConfig, {"num_workers": -1}, "data").num_workers == -1


# ------------------------------------------------------------------------------------------- files
def test_out_that_is_a_file_is_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards):
    (tmp_path / "afile").write_text("mine")
    err = refused(capsys, ["--shards", synthetic_shards, "--out", tmp_path / "afile"], tmp_path, snapshot)
    assert f"--out (run.out_dir) {tmp_path / 'afile'}: is a file, not a folder" in err
    assert (tmp_path / "afile").read_text() == "mine"


def test_out_under_a_file_is_refused_before_any_work(capsys, tmp_path, snapshot, synthetic_shards):
    (tmp_path / "afile").write_text("mine")
    err = refused(capsys, ["--shards", synthetic_shards, "--out", tmp_path / "afile" / "run"], tmp_path, snapshot)
    assert "is a file, not a folder, so nothing can be created under it" in err


def test_out_in_a_read_only_folder_is_refused_before_any_work(read_only_cases):
    """``python -m engine train --shards ... --out ro/run run.cpu=true`` unprivileged, ``ro/`` read-only (run with
    the other commands' cases in one subprocess: ``tests.engine.unprivileged_runs``)."""
    case = read_only_cases["train"]
    proc, ro = case.res, case.ro
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{ro / 'run'}: cannot write in {ro}: read-only" in proc.stderr
    assert case.after == case.before


def test_config_file_with_non_utf8_bytes_is_refused_naming_file_and_byte(capsys, tmp_path, snapshot, synthetic_shards):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"optim:\n  lr: caf\xe9\n")
    err = refused(capsys, ["--config", bad, "--shards", synthetic_shards, "--out", tmp_path / "run"], tmp_path, snapshot)
    assert f"{bad}: not UTF-8 text (byte 0xe9 at offset 16, line 2); save the file as UTF-8" in err


# ------------------------------------------------------------------------------------------- data
def test_crop_far_longer_than_every_track_is_refused_naming_the_longest_track(capsys, tmp_path, snapshot, synthetic_shards):
    argv = ["--shards", synthetic_shards, "--out", tmp_path / "run", "data.segment_seconds=1000", "data.eval_segment_seconds=3"]
    err = refused(capsys, [*argv, "run.cpu=true"], tmp_path, snapshot)
    assert "data.segment_seconds: the training crop (1000 s) is more than 2 times the longest track of split 'train' (3 s)" in err
    assert "set data.segment_seconds <= 3" in err


def test_evaluation_window_far_longer_than_every_track_is_refused(capsys, tmp_path, snapshot, synthetic_shards):
    argv = ["--shards", synthetic_shards, "--out", tmp_path / "run", "data.eval_segment_seconds=100", "run.cpu=true"]
    err = refused(capsys, argv, tmp_path, snapshot)
    assert "data.eval_segment_seconds: the evaluation window (100 s)" in err and "split 'valid' (3 s)" in err


def test_a_window_a_little_longer_than_the_tracks_is_looped_and_said_so(caplog):
    streams = SimpleNamespace(track_lengths=lambda: [100, 80])
    shards = ShardSet({}, ["a"], sample_rate=10, segment_samples=150, eval_samples=150, hop_samples=150)
    with caplog.at_level("WARNING"):
        check_window_lengths(DataConfig(shards="x"), shards, streams, streams)
    assert "tracks are looped to fill it" in caplog.text and "longest 10 s" in caplog.text
    shards = dataclasses.replace(shards, segment_samples=int(LOOP_LIMIT * 100) + 1, eval_samples=10)
    with pytest.raises(ConfigError, match=r"training crop \(20.1 s\) is more than 2 times"):
        check_window_lengths(DataConfig(shards="x"), shards, streams, streams)


@pytest.mark.parametrize("split", ["train", "valid"])
def test_a_split_with_no_tracks_is_refused_naming_the_fix(capsys, tmp_path, snapshot, synthetic_shards, split):
    def empty(m):
        m["splits"][split].update(tracks=0, per_label=dict.fromkeys(m["labels"], 0), shards=[])

    shards = shard_copy(synthetic_shards, tmp_path / "s", empty)
    err = refused(capsys, ["--shards", shards, "--out", tmp_path / "run"], tmp_path, snapshot)
    assert f"split '{split}' (data.{split}_split) has no tracks" in err and "--split-ratios" in err


# ------------------------------------------------------------------------------------------- every bounded field
def _configs() -> list[tuple[type, str]]:
    out = [(DataConfig, "data"), (OptimConfig, "optim"), (RunConfig, "run"), (EvalConfig, "eval"),
           (FrontendConfig, "model.features"), (AugmentConfig, "model.augment")]  # fmt: skip
    out += [(ARCHS.get(a).Config, f"model.params ({a})") for a in ARCHS.names()]
    return out


CASES = [
    pytest.param(cls, where, f, b, id=f"{where}.{f.name}")
    for cls, where in _configs()
    for f, b in bounded_fields(cls)
]


def test_every_numeric_config_field_declares_its_range():
    for cls, where in _configs():
        hints = typing.get_type_hints(cls)
        bounded = {f.name for f, _ in bounded_fields(cls)}
        numeric = {n for n, h in hints.items() if re.search(r"\b(int|float)\b", str(h)) and n != "seed"}
        assert numeric <= bounded, f"{where}: {sorted(numeric - bounded)} declare no range (registry.fields.bounded)"


def _is_int(cls: type, name: str) -> bool:
    hint = str(typing.get_type_hints(cls)[name])
    return "int" in hint and "float" not in hint


def _fill(cls: type, f: dataclasses.Field, value):
    """The field's default with every number replaced by ``value`` (a scalar field: ``value``)."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()

    def leaf(x):
        return type(x)(leaf(v) for v in x) if isinstance(x, (list, tuple)) else value

    if isinstance(default, (list, tuple)):
        return leaf(default) if default else [value]
    return value


def _edges(b: Bounds, integer: bool) -> list:
    """Values exactly at each bound that the range allows."""
    step = (lambda v, d: v + d) if integer else (lambda v, d: math.nextafter(v, d * math.inf))
    out = []
    if b.ge is not None:
        out.append(b.ge)
    if b.gt is not None:
        out.append(step(b.gt, 1))
    if b.le is not None:
        out.append(b.le)
    if b.lt is not None:
        out.append(step(b.lt, -1))
    return out


def _beyond(b: Bounds, integer: bool) -> st.SearchStrategy:
    """Values just outside the range (and, for finite floats, the infinities)."""
    num = st.integers if integer else (lambda **kw: st.floats(allow_nan=False, allow_infinity=False, **kw))
    parts = []
    if b.ge is not None:
        parts.append(num(max_value=b.ge - 1) if integer else num(max_value=b.ge, exclude_max=True))
    if b.gt is not None:
        parts.append(num(max_value=math.floor(b.gt)) if integer else num(max_value=b.gt))
    if b.le is not None:
        parts.append(num(min_value=b.le + 1) if integer else num(min_value=b.le, exclude_min=True))
    if b.lt is not None:
        parts.append(num(min_value=math.ceil(b.lt)) if integer else num(min_value=b.lt))
    if not integer and b.finite:
        parts.append(st.sampled_from([math.inf, -math.inf, math.nan]))
    return st.one_of(parts) if parts else st.nothing()


@pytest.mark.parametrize("cls, where, f, b", CASES)
def test_a_value_at_each_bound_is_accepted(cls, where, f, b):
    integer = _is_int(cls, f.name)
    for v in _edges(b, integer):
        check_bounds(cls(**{f.name: _fill(cls, f, v)}), where)
    if "None" in str(typing.get_type_hints(cls)[f.name]):
        check_bounds(cls(**{f.name: None}), where)


@pytest.mark.parametrize("cls, where, f, b", [c for c in CASES if _beyond(c.values[3], _is_int(c.values[0], c.values[2].name)) is not st.nothing()])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_a_value_beyond_a_bound_is_refused_with_the_field_name(cls, where, f, b, data):
    value = data.draw(_beyond(b, _is_int(cls, f.name)))
    with pytest.raises(ConfigError) as err:
        from_dict(cls, {f.name: _fill(cls, f, value)}, where)
    assert str(err.value).startswith(f"{where}.{f.name}"), str(err.value)
    assert " must be " in str(err.value)
