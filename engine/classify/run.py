"""``classify()``: the job, top to bottom -- check the options, load the model, resume, decode, score, write."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from engine.classify.decode import (
    DEFAULT_CHUNK_SECONDS,
    DecodeStream,
    IgnoredFiles,
    decode_to_end,
    error_piece,
    pieces_as_they_come,
    read_markers,
)
from engine.classify.inputs import read_list
from engine.classify.output import (
    LineWriter,
    ResultSink,
    check_output_identity,
    check_output_owned,
    done_paths,
    merge_parts,
    output_format,
    part_file,
    part_files,
    read_records,
    record_ignored,
    remove_output,
    repair_tail,
    summarize,
)
from engine.classify.predictor import Predictor
from engine.classify.tracks import TrackAverager
from shards.outputs import printable_path
from shards.procs import crash_reason, run_alone
from shards.reader import default_num_workers

logger = logging.getLogger(__name__)

MAX_DECODE_RESTARTS = 10  # decode-worker deaths one run recovers from before it gives up


def classify(
    checkpoint: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    from_list: str | os.PathLike | None = None,
    fmt: str | None = None,
    top_k: int = 3,
    batch_size: int = 64,
    max_windows: int | None = None,
    pad: str = "loop",
    timeline: bool = False,
    precision: str = "auto",
    num_workers: int | None = None,
    device: str | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    channels_last: bool = True,
    progress: bool = True,
    tags: str | None = None,
    threshold: float | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Classify every audio file in ``paths`` (files, folders, plus ``from_list``) into ``out``.

    ``checkpoint`` is a training checkpoint, a pretrained name (``musicnn:MSD_musicnn``) or an exported model
    (TorchScript, ``torch.export`` ``.pt2``, ONNX; :mod:`engine.classify.predictor`). A multi-label tag model
    (the pretrained musicnn ones) scores each tag by its own sigmoid, averaged over the track's windows;
    its lines carry ``"kind": "tags"`` and ``"tags"``, the tags whose score is at least their threshold
    (``[{"label", "score"}]``, highest first; a CSV's ``tags`` column: the names joined by ``;``): ``threshold``
    (in [0, 1]) for every tag when given, else the per-tag cuts a multi-label run chose on its validation split
    (``extra["thresholds"]``), else 0.5 (the pretrained musicnn models). ``tags="genre"`` keeps only the tags
    that are genres. One line per input file (JSONL, or CSV when ``fmt="csv"`` or
    ``out`` ends in ``.csv``); files already in ``out`` are skipped (resume). Under ``accelerate launch``
    each rank classifies ``index % world`` of the stream into ``out.rank{r}.part`` and the main process
    merges the parts into ``out``.

    ``batch_size`` counts windows (of ``segment_samples`` from the checkpoint), ``precision`` is the autocast
    dtype (the feature front end always runs in float32), ``channels_last`` runs the backbone's convs NHWC,
    ``chunk_seconds`` bounds the audio a decode worker hands over at once (memory for long files).

    ``out`` is this command's own: an existing ``out`` is resumed only when ``OUT.run.json`` beside it says
    classify wrote it with the same model and line layout; anything else there is refused before any work
    (:class:`shards.outputs.OutputError`, nothing touched) unless ``overwrite``, which replaces the old
    output and its sidecar once the options and the model have passed. A missing output folder is created.
    A folder under the inputs that cannot be listed gets an error line (reason ``cannot read this folder
    (...)``), counted as ``unreadable_folders`` in the summary and ``OUT.run.json``; a file name that is not
    valid UTF-8 is written with ``\\xNN`` escapes.

    A file under a folder is an input when its name or its content says audio
    (:func:`shards.audio.is_audio_file`); every other file there is counted, not classified: ``ignored``
    (``{".jpg": 9, ".txt": 3}``) in the summary and in ``OUT.run.json``, recounted by each run's walk. A
    decode worker that dies (the OOM killer, a crash in a native decoder) costs no line: fresh workers take
    over, and a file that takes down a process decoding it alone gets an error line ("decoder crashed").

    Returns the summary (computed over the whole output file on the main process): ``files``, ``ok``,
    ``error``, ``errors_by_reason``, ``genres`` (top-1 histogram), ``audio_hours`` (a tag model's also
    ``tag_counts``: files per tag at or above its threshold), plus this run's
    ``new``, ``skipped``, ``ignored``, ``ignored_files``, ``elapsed_s``, ``files_per_s``,
    ``audio_hours_per_s``, ``world_size``, ``precision``, ``device``.
    """
    from accelerate import PartialState  # noqa: PLC0415 -- heavy import, only for real runs

    out, checkpoint = os.fspath(out), os.fspath(checkpoint)
    fmt = output_format(out, fmt)
    paths = [os.fspath(p) for p in paths]
    from_list = None if from_list is None else os.fspath(from_list)
    _check_options(paths, from_list, top_k, batch_size, max_windows, pad, num_workers, device, chunk_seconds, threshold)
    check_output_owned(out, overwrite=overwrite)  # before the model loads: nothing is created by a refusal

    # without CUDA (or with --device cpu) the processes of `accelerate launch` talk over gloo on the CPU
    state = PartialState(cpu=_on_cpu(device))
    dev = torch.device(device) if device else state.device
    predictor = Predictor(checkpoint, dev, precision, channels_last=channels_last, tags=tags, threshold=threshold)
    top_k = min(top_k, len(predictor.labels))
    layout = _Layout(fmt, top_k, timeline, dict(kind=predictor.label_kind, tags=tags, pad=pad, threshold=threshold))
    done = _open_output(state, out, predictor, layout, overwrite)

    workers = default_num_workers(state.num_processes, decode=True) if num_workers is None else num_workers
    stream = DecodeStream(
        paths, from_list, predictor.sample_rate, predictor.segment_samples, rank=state.process_index,
        world_size=state.num_processes, done=done, max_windows=max_windows, pad=pad, chunk_seconds=chunk_seconds,
    )  # fmt: skip
    sink, ignored, elapsed = _classify_stream(state, out, stream, predictor, layout, batch_size, workers, progress)

    state.wait_for_everyone()
    run_stats = _run_stats(sink, elapsed, state, predictor, dev, workers, skipped=len(done), out=out)
    if not state.is_main_process:
        state.wait_for_everyone()
        return {**run_stats, "main": False}
    merge_parts(out, fmt, top_k, timeline, layout.tags_column)
    totals = summarize(out, fmt)
    record_ignored(out, ignored, totals["unreadable_folders"])
    counts = dict(sorted(ignored.items(), key=lambda kv: (-kv[1], kv[0])))
    summary = {**totals, **run_stats, "ignored": counts, "ignored_files": sum(counts.values()), "main": True}
    state.wait_for_everyone()
    return summary


@dataclass
class _Layout:
    """How the output's lines look: format, top-k, timeline, and the identity keys ``kind``/``tags``/``pad``/
    ``threshold``."""

    fmt: str
    top_k: int
    timeline: bool
    ident: dict[str, Any]

    @property
    def tags_column(self) -> bool:
        """A tag model's CSV has a ``tags`` column."""
        return self.ident["kind"] == "tags"


def _open_output(state: Any, out: str, predictor: Predictor, layout: _Layout, overwrite: bool) -> set[str]:
    """Make ``out`` this run's: check the identity, record it, repair torn lines; returns the paths done.

    Resume: the same model and line layout as the lines already there (checked on every rank, so none hangs
    in the barrier); the main process records the identity and repairs torn last lines, then every rank
    reads what is done. The identity is the model file's: a pretrained name counts as the checkpoint it
    resolved to. ``overwrite``: the main process first removes the old output, its parts and its sidecar
    (only now, once the options and the model have passed)."""
    check = partial(check_output_identity, out, predictor.path, layout.fmt, layout.top_k, layout.timeline,
                    **layout.ident)  # fmt: skip
    if not overwrite:
        check(write=False)
    state.wait_for_everyone()
    if state.is_main_process:
        if overwrite:
            remove_output(out)
        check(write=True)
        for f in [out, *part_files(out)]:
            repair_tail(f)
    state.wait_for_everyone()
    done = done_paths(out, layout.fmt)
    if done and state.is_main_process:
        logger.info("resuming: %d files already in %s are skipped", len(done), out)
    return done


def _classify_stream(
    state: Any, out: str, stream: DecodeStream, predictor: Predictor, layout: _Layout, batch_size: int,
    workers: int, progress: bool,
) -> tuple[ResultSink, dict[str, int], float]:  # fmt: skip
    """Decode, score and write every input of this rank; returns the sink, the walk's count of non-audio
    files (``{".jpg": 9}``) and the seconds it took. Decode workers that die are replaced
    (:data:`MAX_DECODE_RESTARTS` times)."""
    world = state.num_processes
    writer = LineWriter(out if world == 1 else part_file(out, state.process_index), layout.fmt, layout.top_k,
                        layout.timeline, layout.tags_column)  # fmt: skip
    # where each decode worker notes the file it is on, so that a worker's death is traced to its file
    markers = tempfile.mkdtemp(prefix="classify-decoding-") if workers > 0 else None
    stream.markers = markers
    averager = TrackAverager(predictor, batch_size, layout.top_k, layout.timeline)
    sink = ResultSink(writer, _progress_bar(world) if progress and state.is_main_process else None)
    done = set(stream.done)
    t0 = time.perf_counter()
    ignored: dict[str, int] = {}  # sent by the decode worker that owns input 0 of rank 0
    try:
        for restart in range(MAX_DECODE_RESTARTS + 1):
            loader = iter(DataLoader(
                stream, batch_size=None, collate_fn=pieces_as_they_come, num_workers=workers,
                prefetch_factor=2 if workers > 0 else None, persistent_workers=False,
            ))  # fmt: skip
            died = None
            try:
                for piece in loader:
                    if isinstance(piece, IgnoredFiles):
                        ignored = piece.counts
                        continue
                    sink.write(averager.add(piece))
            except RuntimeError as err:
                # torch raises this from the loader, or from its SIGCHLD handler anywhere in the loop
                if markers is None or "DataLoader worker" not in str(err) or restart == MAX_DECODE_RESTARTS:
                    raise
                died = str(err)
            del loader  # shuts the other workers down
            if died is None:
                break
            _after_worker_death(died, stream, averager, sink, done, markers)
        sink.write(averager.flush())
    finally:
        sink.close()
        if markers is not None:
            shutil.rmtree(markers, ignore_errors=True)
    return sink, ignored, time.perf_counter() - t0


def _after_worker_death(
    died: str, stream: DecodeStream, averager: TrackAverager, sink: ResultSink, done: set[str], markers: str
) -> None:
    """A decode worker died (the OOM killer, a crash in a native decoder). The tracks it and the others were
    on are decoded again by fresh workers; first each file a worker had noted is decoded alone, in a process
    of its own, and one that takes that process down too gets its error line ("decoder crashed: ...")."""
    logger.warning("%s; decoding the files in flight again (each first alone, to find a file that crashes)", died)
    averager.restart()
    # the lines on disk are the truth: the error may have come between a line's write and its bookkeeping
    sink.written.update(r["path"] for r in read_records(sink.writer.path, sink.writer.fmt))
    for index, path in read_markers(markers):
        if printable_path(path) in sink.written or printable_path(path) in done:  # lines hold printable paths
            continue
        decode = partial(decode_to_end, sample_rate=stream.sample_rate, segment_samples=stream.segment_samples,
                         max_windows=stream.max_windows, pad=stream.pad, chunk_seconds=stream.chunk_seconds)  # fmt: skip
        reason = run_alone(decode, path, on_crash=crash_reason)
        if reason is not None:
            logger.error("%s: %s", path, reason)
            sink.write(averager.add(error_piece(index, path, reason, stream.segment_samples)))
    for name in os.listdir(markers):
        os.remove(os.path.join(markers, name))
    stream.done = done | sink.written


def _check_options(
    paths: list[str], from_list: str | None, top_k: int, batch_size: int, max_windows: int | None, pad: str,
    num_workers: int | None, device: str | None, chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    threshold: float | None = None,
) -> None:  # fmt: skip
    """Configuration errors fail before anything is loaded or written (the CLI's parser refuses the numbers
    first; these checks are for callers of :func:`classify`)."""
    for name, value in (("top_k", top_k), ("batch_size", batch_size), ("max_windows", max_windows)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
    if pad not in ("zero", "loop"):
        raise ValueError(f"pad {pad!r} is not zero or loop")
    if threshold is not None and not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if from_list is not None:
        if not os.path.isfile(from_list):
            raise FileNotFoundError(f"--from-list {printable_path(from_list)} does not exist")
        read_list(from_list)  # a list that is not UTF-8 text is refused now, not in a decode worker
    if not paths and from_list is None:
        raise ValueError("no input: give files, folders or --from-list")
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0 (0: decode in this process), got {num_workers}")
    if device is not None:
        try:
            kind = torch.device(device).type
        except RuntimeError as err:
            raise ValueError(f"--device {device!r} is not a torch device ({err})") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available here (use --device cpu or leave it out)")


def _on_cpu(device: str | None) -> bool:
    return (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()


def _progress_bar(world: int) -> Any:
    from tqdm.auto import tqdm  # noqa: PLC0415

    desc = f"classify{f' (rank 0 of {world})' if world > 1 else ''}"
    return tqdm(unit="file", desc=desc, dynamic_ncols=True)


def _run_stats(
    sink: ResultSink, elapsed: float, state: Any, predictor: Predictor, dev: torch.device, workers: int, *,
    skipped: int, out: str,
) -> dict[str, Any]:  # fmt: skip
    """This run's numbers; with several processes the new lines and their audio are summed over all ranks."""
    new, seconds = float(sink.new), sink.seconds
    if state.num_processes > 1:
        from accelerate.utils import reduce  # noqa: PLC0415

        totals = reduce(torch.tensor([new, seconds], dtype=torch.float64, device=state.device), reduction="sum")
        new, seconds = totals.tolist()
    return {
        "new": int(new),
        "skipped": skipped,
        "elapsed_s": elapsed,
        "files_per_s": new / max(elapsed, 1e-9),
        "audio_hours_per_s": seconds / 3600.0 / max(elapsed, 1e-9),
        "world_size": state.num_processes,
        "rank": state.process_index,
        "precision": predictor.precision,
        "kind": predictor.label_kind,
        "device": str(dev),
        "num_workers": workers,
        "out": out,
    }
