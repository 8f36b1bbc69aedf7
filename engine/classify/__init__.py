"""Batch classification of music folders: ``python -m engine classify MODEL PATH... --out results.jsonl``.

Data flow (one process per device; ``accelerate launch`` for several), one module per stage::

    inputs     path stream (files, folders walked lazily, --from-list)
        │  index i goes to rank i % world, then to DataLoader worker (i // world) % workers
        ▼
    decode     DataLoader workers: shards.audio decode + soxr resample to the model rate, cut into windows
               of segment_samples (hop = window, or --max-windows spread evenly), int16, long files read in
               chunks  ▶  pieces: (track, int16 windows [n, T]), at most ``chunk_seconds`` of audio each
        ▼
    tracks     windows of many tracks packed into full batches [batch_size, T]
    predictor  → device → model (checkpoint under autocast bf16/fp16/fp32, or an exported TorchScript /
               torch.export / ONNX graph) → probabilities; tracks: per-track mean of window probabilities
        ▼
    output     one line per input file (JSONL or CSV), written with a single write() and flushed as soon as
               the track is complete; a rerun with the same --out skips what is already there
    run        ``classify()``: the job from options to summary; cli: the command line

Every input file named on the command line (or found under a folder, its name or content saying audio)
gets exactly one line: ``status`` ``ok`` with the top-k genres, or ``error`` with the
:class:`shards.audio.AudioError` reason; the other files under the folders are counted by extension
(``ignored`` in the summary and ``OUT.run.json``). Memory is bounded by ``workers x prefetch x chunk`` plus one batch, whatever the number or length
of the files.
"""

from engine.classify.cli import build_parser, format_summary, main
from engine.classify.decode import DEFAULT_CHUNK_SECONDS, DecodeStream, Piece, decode_track
from engine.classify.inputs import iter_inputs
from engine.classify.output import LineWriter, merge_parts, read_records, repair_tail, summarize
from engine.classify.predictor import (
    CheckpointInputError,
    Predictor,
    check_input_kind,
    is_torchscript_file,
    model_file_kind,
)
from engine.classify.run import classify

__all__ = [
    "DEFAULT_CHUNK_SECONDS",
    "CheckpointInputError",
    "DecodeStream",
    "LineWriter",
    "Piece",
    "Predictor",
    "build_parser",
    "check_input_kind",
    "classify",
    "decode_track",
    "format_summary",
    "is_torchscript_file",
    "iter_inputs",
    "main",
    "merge_parts",
    "model_file_kind",
    "read_records",
    "repair_tail",
    "summarize",
]
