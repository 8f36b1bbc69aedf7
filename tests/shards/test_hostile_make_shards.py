"""make_shards under user mistakes: each is refused with one line naming the option (or path), the value and
the fix, exit status 2, no traceback, and no file created or changed; or, for what a collection may hold
(unreadable folders, names that are not UTF-8, a CSV listing a file twice with two labels), the run goes on
and records it in the manifest's ``skipped`` and the summary.

Most cases call ``shards.ingest.main`` in-process (what tools/make_shards.py runs); permission cases run the
tool in a subprocess without CAP_DAC_OVERRIDE (``run_unprivileged``), since the tests run as root.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shards.ingest import main
from shards.ingest_config import MAX_SAMPLE_RATE, MAX_WORKERS, MIN_SAMPLE_RATE, IngestConfig, IngestError

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "make_shards.py"
LABELS = ("blues", "jazz", "rock")


@pytest.fixture
def corpus(tmp_path, clip_writer) -> Path:
    """``tmp_path/corpus/<label>/c<i>.wav``: 3 labels x 3 short clips."""
    for lab in LABELS:
        for i in range(3):
            clip_writer(tmp_path / "corpus" / lab / f"c{i}.wav", seconds=0.3)
    return tmp_path / "corpus"


def _main(capsys, *args) -> tuple[int, str, str]:
    rc = main([*map(str, args), "--no-progress", "--workers", "1"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_refused(rc: int, err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if not ln.startswith("layout: auto")]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("make_shards: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


# --------------------------------------------------------------------------------------------- --out
def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, corpus, capsys, snapshot):
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    rc, _, err = _main(capsys, corpus, "--out", tmp_path / "afile")
    _assert_refused(rc, err, f"--out {tmp_path / 'afile'}: is a file, not a folder", "name a folder")
    assert snapshot(tmp_path) == before


def test_out_under_a_file_is_refused_before_any_work(tmp_path, corpus, capsys, snapshot):
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    rc, _, err = _main(capsys, corpus, "--out", tmp_path / "afile" / "shards")
    _assert_refused(rc, err, f"{tmp_path / 'afile'} is a file, not a folder")
    assert snapshot(tmp_path) == before


def test_out_in_a_missing_folder_is_created_with_its_parents(tmp_path, corpus, capsys):
    rc, out, err = _main(capsys, corpus, "--out", tmp_path / "new" / "deep" / "shards")
    assert rc == 0, err
    assert (tmp_path / "new" / "deep" / "shards" / "manifest.json").is_file()


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_out_read_only_is_refused_before_any_work(where, tmp_path, corpus, run_unprivileged, snapshot):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    out = ro / "shards" if where == "inside" else ro
    before = snapshot(tmp_path)
    try:
        proc = run_unprivileged([sys.executable, TOOL, corpus, "--out", out, "--no-progress"])
    finally:
        os.chmod(ro, 0o755)
    _assert_refused(proc.returncode, proc.stderr, f"--out {out}: cannot write in", "read-only", "choose a folder")
    assert snapshot(tmp_path) == before


def test_out_with_a_damaged_plan_is_refused_naming_the_fix(tmp_path, corpus, capsys, snapshot):
    (tmp_path / "o" / ".ingest").mkdir(parents=True)
    (tmp_path / "o" / ".ingest" / "plan.json").write_bytes(b"{not json\xe9")
    before = snapshot(tmp_path)
    rc, _, err = _main(capsys, corpus, "--out", tmp_path / "o")
    _assert_refused(rc, err, "plan.json is damaged", "--overwrite")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--folds", "-1"], "--folds -1: must be >= 0 (0 = no folds, else K >= 2)"),
        (["--folds", "1"], "--folds 1:"),
        (["--split-ratios", "0.5,0.5"], "--split-ratios '0.5,0.5': expected three"),
        (["--split-ratios", "a,b,c"], "--split-ratios 'a,b,c': expected three numbers"),
        (["--split-ratios", "nan,1,1"], "--split-ratios 'nan,1,1'"),
        (["--split-ratios", "0,0,0"], "--split-ratios '0,0,0'"),
        (["--split-ratios=-1,1,1"], "--split-ratios '-1,1,1'"),
        (["--split-ratios", "0,0.5,0.5", "--folds", "3"], "the train split, which would be empty"),
        (["--split-ratios", "0,0.5,0.5", "--offline-augment", "0.9:0"], "--offline-augment copies the tracks of"),
        (["--sample-rate", "0"], f"--sample-rate 0: must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz"),
        (["--sample-rate", "-22050"], "--sample-rate -22050:"),
        (["--sample-rate", "100000000"], "--sample-rate 100000000:"),
        (["--shard-size", "0"], "--shard-size '0':"),
        (["--shard-size", "abc"], "--shard-size 'abc':"),
        (["--shard-size", "0.0001KB"], "--shard-size '0.0001KB': under one byte"),
        (["--max-seconds", "-1"], "--max-seconds -1.0: must be > 0 s"),
        (["--max-seconds", "nan"], "--max-seconds nan:"),
        (["--max-seconds", "0"], "--max-seconds 0.0:"),
        (["--workers", "-1"], f"--workers -1: must be in [1, {MAX_WORKERS}] (or null: one per CPU)"),
        (["--workers", "0"], "--workers 0:"),
        (["--trim-silence", "-5"], "--trim-silence -5.0: must be > 0 dB below the peak"),
        (["--trim-silence", "inf"], "--trim-silence inf:"),
        (["--offline-augment", "fast"], "--offline-augment 'fast': expected RATE:SEMITONES"),
        (["--offline-augment", "0.9:0", "--offline-augment", "0.9:0"], "--offline-augment lists the same"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_out_of_range_option_is_refused_naming_it_and_nothing_is_written(
    args, needle, tmp_path, corpus, capsys, snapshot
):
    before = snapshot(tmp_path)
    rc = main([str(corpus), "--out", str(tmp_path / "o"), "--no-progress", *args])
    err = capsys.readouterr().err
    _assert_refused(rc, err, needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args", [["--sample-rate", "abc"], ["--folds", "x"], ["--workers", "1.5"]])
def test_option_that_is_not_a_number_is_refused_by_the_parser(args, tmp_path, corpus, capsys, snapshot):
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main([str(corpus), "--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2 and "invalid" in capsys.readouterr().err and args[0] in "".join(args)
    assert snapshot(tmp_path) == before


def test_folds_more_than_tracks_is_refused_before_decoding(tmp_path, corpus, capsys, snapshot):
    before = snapshot(tmp_path)
    rc, _, err = _main(capsys, corpus, "--out", tmp_path / "o", "--folds", "1000")
    _assert_refused(rc, err, "--folds 1000: only 9 tracks to fill 1000 folds; use --folds 9 or fewer")
    assert snapshot(tmp_path) == before


def test_folds_more_than_artists_is_refused_naming_artists(tmp_path, corpus, capsys, snapshot):
    rows = ["path,label,artist"] + [
        f"{p.relative_to(tmp_path)},{p.parent.name},{'ann' if i % 2 else 'bob'}"
        for i, p in enumerate(sorted(corpus.rglob("*.wav")))
    ]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    before = snapshot(tmp_path)
    rc, _, err = _main(capsys, tmp_path / "list.csv", "--out", tmp_path / "o", "--folds", "3")
    _assert_refused(rc, err, "--folds 3: only 2 artists, whose tracks stay in one fold,", "use --folds 2 or fewer")
    assert snapshot(tmp_path) == before


def test_folds_more_than_decodable_tracks_is_refused_after_the_probe(tmp_path, clip_writer, corrupt_writer, capsys):
    for i in range(2):
        clip_writer(tmp_path / "src" / "rock" / f"ok{i}.wav", seconds=0.3)
        corrupt_writer(tmp_path / "src" / "jazz" / f"bad{i}.wav", "text")
    rc, _, err = _main(capsys, tmp_path / "src", "--out", tmp_path / "o", "--folds", "3")
    _assert_refused(rc, err, "--folds 3: only 2 tracks with decodable audio to fill 3 folds; use --folds 2")
    assert not (tmp_path / "o").exists()


def test_zero_valid_share_is_kept_and_said_in_the_summary(tmp_path, corpus, capsys):
    rc, out, err = _main(capsys, corpus, "--out", tmp_path / "o", "--split-ratios", "1,0,0")
    assert rc == 0, err
    assert "warning: no valid split (--split-ratios gives it 0)" in out


# --------------------------------------------------------------------------------------------- layouts
def test_gtzan_layout_on_a_plain_folder_with_an_unreadable_subfolder_is_refused(
    tmp_path, corpus, run_unprivileged, snapshot
):
    (corpus / "rock" / "locked").mkdir()
    os.chmod(corpus / "rock" / "locked", 0)
    before = snapshot(tmp_path)
    try:
        proc = run_unprivileged([sys.executable, TOOL, corpus, "--layout", "gtzan", "--out", tmp_path / "o"])
    finally:
        os.chmod(corpus / "rock" / "locked", 0o755)
    _assert_refused(proc.returncode, proc.stderr, f"{corpus}: not a GTZAN tree")
    assert snapshot(tmp_path) == before


def test_unreadable_folder_met_by_the_walk_is_in_skipped_and_the_summary(tmp_path, corpus, run_unprivileged):
    locked = corpus / "rock" / "sub"
    locked.mkdir()
    (locked / "x.wav").write_bytes((corpus / "rock" / "c0.wav").read_bytes())
    os.chmod(locked, 0)
    try:
        proc = run_unprivileged([sys.executable, TOOL, corpus, "--out", tmp_path / "o", "--no-progress", "-q"])
    finally:
        os.chmod(locked, 0o755)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    reason = "cannot read this folder (permission denied): the files in it are not included"
    assert {"path": "rock/sub", "reason": reason} in manifest["skipped"]
    assert f"rock/sub: {reason}" in proc.stdout
    assert sum(manifest["splits"][s]["tracks"] for s in manifest["splits"]) == 9


def test_non_utf8_file_name_is_skipped_with_the_reason_and_the_rest_is_ingested(tmp_path, corpus, capsys):
    data = (corpus / "jazz" / "c0.wav").read_bytes()
    with open(os.path.join(os.fsencode(corpus / "jazz"), b"caf\xe9.wav"), "wb") as fh:
        fh.write(data[:-2] + b"\x01\x00")  # other bytes than c0: not a content duplicate
    rc, out, err = _main(capsys, corpus, "--out", tmp_path / "o")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text(encoding="utf-8"))
    (skip,) = [s for s in manifest["skipped"] if "caf" in s["path"]]
    assert skip["path"] == "jazz/caf\\xe9.wav" and skip["reason"].startswith("file name is not valid UTF-8")
    assert "jazz/caf\\xe9.wav: file name is not valid UTF-8" in out
    assert sum(manifest["splits"][s]["tracks"] for s in manifest["splits"]) == 9


def test_source_path_that_is_not_utf8_is_refused(tmp_path, capsys, snapshot):
    src = os.path.join(os.fsencode(tmp_path), b"m\xfasica")
    os.mkdir(src)
    before = snapshot(tmp_path)
    rc, _, err = _main(capsys, os.fsdecode(src), "--out", tmp_path / "o")
    _assert_refused(rc, err, "m\\xfasica: the path is not valid UTF-8")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- csv
def test_csv_listing_one_file_with_two_labels_skips_it_with_the_reason(tmp_path, corpus, capsys):
    wavs = sorted(corpus.rglob("*.wav"))
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in wavs] + [f"{wavs[0]},rock"]
    (tmp_path / "dup.csv").write_text("\n".join(rows) + "\n")
    rc, out, err = _main(capsys, tmp_path / "dup.csv", "--out", tmp_path / "o")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    reason = "conflicting labels: listed in dup.csv as 'blues' on line 2, 'rock' on line 11; keep one row per file"
    assert [s for s in manifest["skipped"]] == [{"path": str(wavs[0]), "reason": reason + " to ingest it"}]
    assert sum(manifest["splits"][s]["tracks"] for s in manifest["splits"]) == 8
    assert "conflicting labels" in out


def test_csv_with_non_utf8_bytes_is_refused_naming_the_file_offset_and_line(tmp_path, corpus, capsys, snapshot):
    wavs = sorted(corpus.rglob("*.wav"))
    body = "path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in wavs[:2])
    (tmp_path / "latin1.csv").write_bytes(body.encode() + b"/x/caf\xe9.wav,blues\n")
    before = snapshot(tmp_path)
    rc, _, err = _main(capsys, tmp_path / "latin1.csv", "--out", tmp_path / "o")
    offset = len(body.encode()) + len("/x/caf")
    _assert_refused(
        rc, err, f"{tmp_path / 'latin1.csv'}: not UTF-8 text (byte 0xe9 at offset {offset}, line 4)", "save the file as UTF-8"
    )
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- properties
@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cfg")
    (root / "src" / "rock").mkdir(parents=True)
    (root / "src" / "rock" / "a.wav").write_bytes(b"")
    return root / "src", root / "out"


def _refusal(paths, **kw) -> str | None:
    try:
        IngestConfig(source=paths[0], out=paths[1], **kw).validate()
    except IngestError as err:
        return str(err)
    return None


_PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6)


@_PROPS
@given(rate=st.integers(-(10**9), 10**9) | st.sampled_from([0, MIN_SAMPLE_RATE - 1, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, MAX_SAMPLE_RATE + 1]))
def test_sample_rate_accepted_exactly_in_range(paths, rate):
    msg = _refusal(paths, sample_rate=rate)
    if MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        assert msg is None
    else:
        assert msg is not None and msg.startswith(f"--sample-rate {rate}:")


@_PROPS
@given(value=_FLOATS, option=st.sampled_from(["max_seconds", "trim_silence"]))
def test_seconds_and_decibels_accepted_when_positive_and_finite(paths, value, option):
    msg = _refusal(paths, **{option: value})
    flag = "--" + option.replace("_", "-")
    if math.isfinite(value) and value > 0:
        assert msg is None
    else:
        assert msg is not None and msg.startswith(f"{flag} {value}:")


@_PROPS
@given(workers=st.integers(-(10**6), 10**6) | st.sampled_from([0, 1, MAX_WORKERS, MAX_WORKERS + 1]))
def test_workers_accepted_exactly_in_range(paths, workers):
    msg = _refusal(paths, workers=workers)
    assert (msg is None) == (1 <= workers <= MAX_WORKERS)
    assert msg is None or msg.startswith(f"--workers {workers}:")


@_PROPS
@given(folds=st.integers(-(10**6), 10**6) | st.sampled_from([-1, 0, 1, 2]))
def test_folds_accepted_when_zero_or_at_least_two(paths, folds):
    msg = _refusal(paths, folds=folds)
    assert (msg is None) == (folds == 0 or folds >= 2)
    assert msg is None or msg.startswith(f"--folds {folds}:")


@_PROPS
@given(ratios=st.lists(_FLOATS | st.sampled_from([0, 0.0, -0.0]), min_size=1, max_size=4), folds=st.sampled_from([0, 3]))
def test_split_ratios_accepted_when_three_finite_non_negative_with_a_share(paths, ratios, folds):
    msg = _refusal(paths, split_ratios=tuple(ratios), folds=folds)
    ok = len(ratios) == 3 and all(math.isfinite(r) and r >= 0 for r in ratios) and sum(ratios) > 0
    ok = ok and not (folds and ratios[0] == 0)
    assert (msg is None) == ok, (ratios, msg)
    assert msg is None or msg.startswith("--split-ratios ")


@_PROPS
@given(n=st.integers(-(10**6), 10**9), unit=st.sampled_from(["", "B", "KB", "MB", "GiB", "xB", " MB"]))
def test_shard_size_accepted_when_a_positive_count_or_size(paths, n, unit):
    text = f"{n}{unit}"
    msg = _refusal(paths, shard_size=text)
    ok = n > 0 and unit in ("", "B", "KB", "MB", "GiB", " MB")
    assert (msg is None) == ok, (text, msg)
    assert msg is None or msg.startswith(f"--shard-size {text!r}:")
