"""The output file of ``classify``: one line per input file, resumable, mergeable across ranks.

- :class:`LineWriter` appends whole lines (JSONL or CSV) with one ``os.write`` each; :class:`ResultSink`
  puts each file's record through it once and counts this run's results;
- ownership: :func:`check_output_owned` (before any work): an existing ``OUT`` is appended to only when
  its sidecar ``OUT.run.json`` says classify wrote it, else refused (``--overwrite`` replaces it);
- resume: :func:`check_output_identity` (``OUT.run.json``: the model's sha256 and the line layout),
  :func:`repair_tail` (a torn last line), :func:`read_records` (what is already done);
- several ranks write ``OUT.rank{r}.part``; :func:`merge_parts` appends them to ``OUT`` once each;
- :func:`summarize`: the summary counted over the whole output file; :func:`record_ignored` adds the walk's
  count of non-audio files to ``OUT.run.json``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from shards.outputs import OutputError, prepare_output_file
from shards.resumable import atomic_write_text, identity_diff
from shards.writer import sha256_file

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
#: the reason of the error line of a folder the walk could not list (:func:`shards.layouts.walk_paths`)
UNREADABLE_FOLDER = "cannot read this folder"


def output_format(out: str, fmt: str | None) -> str:
    """``fmt``, or by default ``csv`` for an ``out`` ending in ``.csv`` and ``jsonl`` otherwise."""
    fmt = fmt or ("csv" if out.lower().endswith(".csv") else "jsonl")
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not jsonl or csv")
    return fmt


#: the CSV column of a tag model's tags (those at or above their threshold, highest first), joined by this
TAG_SEP = ";"


def _csv_header(top_k: int, timeline: bool, tags_column: bool = False) -> list[str]:
    cols = ["path", "status", "reason", "duration"]
    for k in range(1, top_k + 1):
        cols += [f"label_{k}", f"prob_{k}"]
    if tags_column:
        cols.append("tags")
    cols += ["windows", "note"]
    if timeline:
        cols.append("timeline")
    return cols


def _csv_line(row: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def _fmt_num(x: float | None) -> str:
    return "" if x is None else repr(float(x))


class LineWriter:
    """Appends complete lines to ``path``: each line is one ``os.write`` on an ``O_APPEND`` descriptor.

    No Python buffering, so a killed process leaves only whole lines (and at most a partial last one if
    the kernel write itself was cut, which :func:`repair_tail` removes on resume). ``tags_column``: a tag
    model's CSV, with a ``tags`` column after the top-k ones (the record's ``tags`` labels joined by
    :data:`TAG_SEP`).
    """

    def __init__(
        self, path: str | os.PathLike, fmt: str, top_k: int, timeline: bool, tags_column: bool = False
    ) -> None:
        self.path, self.fmt, self.top_k, self.timeline = str(path), fmt, top_k, timeline
        self.tags_column = tags_column
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if fmt == "csv" and os.fstat(self.fd).st_size == 0:
            self.write_line(_csv_line(_csv_header(top_k, timeline, tags_column)))

    def write_line(self, line: str) -> None:
        """Append ``line`` (ending in a newline) as it is."""
        data = line.encode("utf-8")
        while data:
            n = os.write(self.fd, data)
            data = data[n:]

    def write(self, rec: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.write_line(json.dumps(rec, ensure_ascii=False) + "\n")
            return
        row: list[Any] = [rec["path"], rec["status"], rec.get("reason") or "", _fmt_num(rec.get("duration"))]
        top = rec.get("top") or []
        for k in range(self.top_k):
            row += [top[k]["label"], _fmt_num(top[k]["prob"])] if k < len(top) else ["", ""]
        if self.tags_column:
            row.append(TAG_SEP.join(t["label"] for t in rec.get("tags") or []))
        row += [rec.get("windows", 0), "; ".join(rec.get("notes") or [])]
        if self.timeline:
            row.append(json.dumps(rec.get("timeline") or [], ensure_ascii=False))
        self.write_line(_csv_line(row))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ResultSink:
    """Writes each input file's record once (a file named twice gets one line) and counts this run's lines.

    ``new``, ``ok``, ``error`` count the lines written; ``seconds`` the audio of the ``ok`` ones. ``bar`` (a
    tqdm bar or None) advances per line and shows the audio-hours per second since the sink was made.
    """

    def __init__(self, writer: LineWriter, bar: Any = None) -> None:
        self.writer, self.bar = writer, bar
        self.written: set[str] = set()
        self.new = self.ok = self.error = 0
        self.seconds = 0.0
        self.t0 = time.perf_counter()

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            if rec["path"] in self.written:
                continue
            self.writer.write(rec)
            self.written.add(rec["path"])  # only once the line is out (a worker's death may interrupt)
            if rec["status"] == "ok":
                self.ok += 1
                self.seconds += rec["duration"] or 0.0
            else:
                self.error += 1
            self.new += 1
            if self.bar is not None:
                el = max(time.perf_counter() - self.t0, 1e-9)
                self.bar.update(1)
                self.bar.set_postfix_str(
                    f"{self.seconds / 3600 / el:.3g} audio-h/s, {self.error} errors", refresh=False
                )

    def close(self) -> None:
        self.writer.close()
        if self.bar is not None:
            self.bar.close()


def repair_tail(path: str | os.PathLike) -> int:
    """Truncate a trailing partial line (no newline) left by a killed writer; returns bytes removed."""
    path = str(path)
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return 0
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        fh.truncate(keep)
        logger.warning(
            "%s: removed a partial last line (%d bytes) left by an interrupted run", path, size - keep
        )
        return size - keep


def read_records(path: str | os.PathLike, fmt: str) -> Iterator[dict[str, Any]]:
    """Parse an output file (JSONL or CSV) into record dicts; unparsable lines are logged and skipped."""
    path = str(path)
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", newline="") as fh:
        if fmt == "jsonl":
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s:%d: not a JSON line, ignored", path, n)
            return
        for row in csv.DictReader(fh):
            if not row.get("path"):
                continue
            top = []
            k = 1
            while f"label_{k}" in row:
                if row[f"label_{k}"]:
                    top.append({"label": row[f"label_{k}"], "prob": float(row[f"prob_{k}"])})
                k += 1
            rec: dict[str, Any] = {
                "path": row["path"],
                "status": row["status"],
                "reason": row.get("reason") or None,
                "duration": float(row["duration"]) if row.get("duration") else None,
                "top": top,
            }
            if "tags" in row:  # a tag model's CSV: the names only (their scores are in the JSONL lines)
                rec["tags"] = [{"label": t} for t in (row["tags"] or "").split(TAG_SEP) if t]
            if row.get("timeline"):
                rec["timeline"] = json.loads(row["timeline"])
            yield rec


#: ``OUT.run.json`` fields written later than the first ones, with the value an older file stands for.
# (``tag_list``: whether a tag model's lines list its tags above their thresholds, which a CSV's header shows)
_IDENTITY_DEFAULTS = {"kind": "genres", "tags": None, "pad": "zero", "threshold": None, "tag_list": False}


def check_output_identity(
    out: str, checkpoint: str, fmt: str, top_k: int, timeline: bool, *, write: bool, kind: str = "genres",
    tags: str | None = None, pad: str = "loop", threshold: float | None = None,
) -> None:  # fmt: skip
    """Refuse to resume ``out`` with another model or another CSV layout; record this run's identity.

    ``OUT.run.json`` beside the output holds the model file's sha256 (``checkpoint`` is the file itself, a
    pretrained name already resolved), what its scores are (``kind``: ``genres``, a softmax, or ``tags``,
    independent sigmoids), the tag group kept (``tags``), the ``--threshold`` that overrides a tag model's own
    cuts (None: the model's) and the settings that shape a line (format; for CSV also top-k, timeline and
    ``tag_list``, the tags column of a tag model, which fix its header). A rerun into an ``out`` that already
    holds lines must match them, or the file would silently mix two models' genres (or CSV rows under another
    header). A tag-model CSV written before lines listed tags (no ``tags`` column) is refused; such a JSONL
    output resumes, its new lines with ``tags``.
    """
    meta_path = sidecar_path(out)
    ident = {"model_sha256": sha256_file(checkpoint), "model": os.path.abspath(checkpoint), "format": fmt,
             "top_k": top_k, "timeline": timeline, "kind": kind, "tags": tags, "pad": pad, "threshold": threshold,
             "tag_list": kind == "tags"}  # fmt: skip
    has_lines = any(os.path.isfile(f) and os.path.getsize(f) > 0 for f in [out, *part_files(out)])
    if has_lines and os.path.isfile(meta_path):
        old = json.loads(Path(meta_path).read_text())
        # a CSV's header fixes top-k and the timeline column; JSONL lines carry their own fields
        keys = ("model_sha256", "format", "top_k", "timeline", "tag_list") if fmt == "csv" else ("model_sha256", "format")
        keys += ("kind", "tags", "pad", "threshold")  # pad: how a short file's window is filled changes its scores
        diff = identity_diff(old, ident, keys, _IDENTITY_DEFAULTS)
        if diff:
            what = "another model (" + old.get("model", "?") + ")" if "model_sha256" in diff else ", ".join(
                f"{k}={old.get(k, _IDENTITY_DEFAULTS.get(k))!r}" for k in diff
            )
            if diff == ["tag_list"]:
                what = "an older classify, whose CSV has no tags column"
            raise ValueError(
                f"{out} already holds results made with {what}; resuming would mix them. "
                "Choose another --out, or delete the file (and its .run.json) to start over."
            )
    if write:
        Path(meta_path).parent.mkdir(parents=True, exist_ok=True)  # a missing output folder is created
        atomic_write_text(meta_path, json.dumps(ident, indent=2))


def sidecar_path(out: str) -> str:
    """``OUT.run.json``: the run's identity, beside the output."""
    return out + ".run.json"


def _is_our_sidecar(path: str) -> bool:
    """Whether ``path`` is an ``OUT.run.json`` that classify wrote (a JSON object with the model's sha256)."""
    try:
        with open(path, "rb") as fh:
            meta = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "model_sha256" in meta and "format" in meta


def check_output_owned(out: str, *, overwrite: bool = False) -> None:
    """Refuse, before any work, an ``out`` this run may not write (:class:`shards.outputs.OutputError`).

    An existing ``out`` (or ``OUT.rank*.part``) is appended to (resumed) only when ``OUT.run.json`` beside
    it proves that classify wrote it: a user's CSV, JSONL or notes file, or an output whose sidecar is
    missing, is refused and left as it is, unless ``overwrite`` (then the run replaces it, see
    :func:`remove_output`). A folder at ``out``, a read-only file or folder, a file in the way of a missing
    parent folder are refused too; a missing parent folder is created when the run first writes."""
    meta = sidecar_path(out)
    ours = _is_our_sidecar(meta)
    name = os.path.basename(meta)
    hint = (f"it was not written by classify (no valid {name} beside it): pass --overwrite to replace it, "
            "or choose another --out")  # fmt: skip
    prepare_output_file(out, replace=overwrite or ours, replace_hint=hint)
    parts = part_files(out)
    if parts and not (ours or overwrite):
        raise OutputError(parts[0], "is a part of a classify run without its " + name, hint, flag="--out")
    if os.path.lexists(meta):
        if not (ours or overwrite):
            raise OutputError(meta, "exists and is not a classify run file", "pass --overwrite to replace it, "
                              "or choose another --out", flag="--out")  # fmt: skip
        prepare_output_file(meta, replace=True)


def remove_output(out: str) -> None:
    """``--overwrite``: remove ``out``, its part files and its sidecar (the run then starts afresh)."""
    for f in [out, *part_files(out), sidecar_path(out)]:
        if os.path.lexists(f):
            os.remove(f)


def record_ignored(out: str, counts: dict[str, int], unreadable_folders: int = 0) -> None:
    """Put this run's count of the non-audio files under the inputs into ``OUT.run.json`` as ``ignored``
    (``{".jpg": 9, ...}``, by :func:`shards.audio.ignored_key`) and ``ignored_files`` (their total).

    ``unreadable_folders``: the folders under the inputs that could not be listed (each has its error line
    in ``out``), as ``unreadable_folders``.

    The walk counts afresh on every run, resumed or not, so the counts replace the ones there. They are no
    part of the identity a resume checks.
    """
    meta_path = sidecar_path(out)
    meta = json.loads(Path(meta_path).read_text()) if os.path.isfile(meta_path) else {}
    meta["ignored"] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    meta["ignored_files"] = sum(counts.values())
    meta["unreadable_folders"] = unreadable_folders
    atomic_write_text(meta_path, json.dumps(meta, indent=2, ensure_ascii=False))


def part_files(out: str) -> list[str]:
    """The per-rank files ``OUT.rank*.part`` of a several-process run (not merged yet), sorted."""
    return sorted(glob.glob(glob.escape(out) + ".rank*.part"))


def part_file(out: str, rank: int) -> str:
    return f"{out}.rank{rank}.part"


def done_paths(out: str, fmt: str) -> set[str]:
    """Paths that already have a line in ``out`` or in one of its part files (skipped on resume)."""
    done: set[str] = set()
    for f in [out, *part_files(out)]:
        done.update(r["path"] for r in read_records(f, fmt))
    return done


def merge_parts(out: str, fmt: str, top_k: int, timeline: bool, tags_column: bool = False) -> int:
    """Append the lines of every ``out.rank*.part`` not yet in ``out`` to ``out``; remove the parts.
    ``top_k``, ``timeline``, ``tags_column``: the CSV header of a new ``out`` (:class:`LineWriter`)."""
    parts = part_files(out)
    if not parts:
        return 0
    seen = {r["path"] for r in read_records(out, fmt)}
    writer = LineWriter(out, fmt, top_k, timeline, tags_column)
    added = 0
    try:
        for part in parts:
            repair_tail(part)
            with open(part, encoding="utf-8", newline="") as fh:
                lines = fh if fmt == "jsonl" else _csv_body_lines(fh)
                for line in lines:
                    path = _line_path(line, fmt)
                    if path is None or path in seen:
                        continue
                    seen.add(path)
                    writer.write_line(line if line.endswith("\n") else line + "\n")
                    added += 1
    finally:
        writer.close()
    for part in parts:  # only after every line is safely in ``out``
        os.remove(part)
    return added


def _csv_body_lines(fh: io.TextIOBase) -> Iterator[str]:
    """Raw CSV records (a quoted field may hold a newline) of a file, header skipped."""
    reader_lines: list[str] = []
    first = True
    for line in fh:
        reader_lines.append(line)
        text = "".join(reader_lines)
        if text.count('"') % 2:  # inside a quoted field spanning lines
            continue
        reader_lines = []
        if first:
            first = False
            continue
        yield text


def _line_path(line: str, fmt: str) -> str | None:
    try:
        if fmt == "jsonl":
            return json.loads(line)["path"] if line.strip() else None
        row = next(csv.reader(io.StringIO(line)))
        return row[0] if row else None
    except (json.JSONDecodeError, KeyError, StopIteration, TypeError):
        return None


def _group_reason(reason: str | None) -> str:
    return (reason or "unknown").split(" (")[0]


def summarize(out: str, fmt: str) -> dict[str, Any]:
    """Counts over the whole output file: ``files``, ``ok``, ``error``, ``errors_by_reason`` (reason up to its
    first `` (``), ``genres`` (top-1 histogram), ``audio_hours`` (of the ``ok`` files),
    ``unreadable_folders`` (error lines of folders that could not be listed); for a tag model's lines also
    ``tag_counts`` (how many files have each tag: score at or above its threshold)."""
    status: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    genres: Counter[str] = Counter()
    tagged: Counter[str] = Counter()
    seconds = 0.0
    for rec in read_records(out, fmt):
        status[rec["status"]] += 1
        if rec["status"] == "ok":
            seconds += rec.get("duration") or 0.0
            if rec.get("top"):
                genres[rec["top"][0]["label"]] += 1
            tagged.update(t["label"] for t in rec.get("tags") or [])
        else:
            reasons[_group_reason(rec.get("reason"))] += 1
    totals = {
        "files": sum(status.values()),
        "ok": status.get("ok", 0),
        "error": status.get("error", 0),
        "errors_by_reason": dict(reasons.most_common()),
        "genres": dict(genres.most_common()),
        "audio_hours": seconds / 3600.0,
        "unreadable_folders": sum(n for r, n in reasons.items() if r.startswith(UNREADABLE_FOLDER)),
    }
    if tagged:
        totals["tag_counts"] = dict(tagged.most_common())
    return totals
