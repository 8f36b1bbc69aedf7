"""From decoded pieces to one record per track: the pieces' windows go to the shared window scorer
(:class:`engine.scoring.WindowScorer`: windows of many tracks packed into full device batches), and each
track's window probabilities are averaged once its last window is scored."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.classify.decode import Piece
from engine.classify.predictor import Predictor
from engine.scoring import ScoredTrack, WindowScorer
from shards.outputs import printable_path

logger = logging.getLogger(__name__)

INCOMPLETE = "incomplete: decoding stopped before the end of the file"


@dataclass
class _TrackInfo:
    path: str
    duration: float | None = None  # seconds of the source file (from the last piece)
    notes: list[str] = field(default_factory=list)


class TrackAverager:
    """Feed :class:`~engine.classify.decode.Piece` s in with :meth:`add`, get finished records back.

    Windows go to a :class:`~engine.scoring.WindowScorer` of ``batch_size`` windows that runs ``predictor``
    on each full batch. A track is finished when its last piece has arrived and all its windows are scored:
    its record holds the mean probability over its windows (top ``top_k`` genres; for a tag model the mean
    of the windows' sigmoid scores, top ``top_k`` tags, ``"kind": "tags"`` and ``"tags"``: every tag whose
    score is at least its threshold, :attr:`Predictor.thresholds`, highest first) and, with ``timeline``,
    each window's top genre. An error piece finishes its track at once (windows of it still in the buffer
    are dropped when scored). Records are dicts in the output's field order.
    """

    def __init__(self, predictor: Predictor, batch_size: int, top_k: int, timeline: bool) -> None:
        self.predictor, self.top_k, self.timeline = predictor, top_k, timeline
        self.scorer = WindowScorer(predictor, batch_size, predictor.segment_samples, predictor.device)

    def add(self, piece: Piece) -> list[dict[str, Any]]:
        """Take one piece; returns the records of the tracks it finished (its own, or others' in a batch run)."""
        if piece.status != "ok":
            track = self.scorer.drop(piece.index) or ScoredTrack(piece.index, _TrackInfo(piece.path))
            return [self._record(track, "error", piece.reason)]
        # duration and notes come with the last piece
        info = _TrackInfo(piece.path, piece.duration, piece.notes) if piece.last else _TrackInfo(piece.path)
        done = self.scorer.add_windows(piece.index, piece.windows, piece.starts, last=piece.last, info=info)
        return [self._record(track, "ok", None) for track in done]

    def flush(self) -> list[dict[str, Any]]:
        """End of input: score the partial batch; a track still unfinished then (only if a decode worker
        died mid-track) gets an error record, so every file still gets its line."""
        done = [self._record(track, "ok", None) for track in self.scorer.flush()]
        for track in self.scorer.clear():
            logger.error("%s: decoding stopped before the end of the file", track.info.path)
            done.append(self._record(track, "error", INCOMPLETE))
        return done

    def restart(self) -> None:
        """The decode workers died (the error may have surfaced anywhere in the loop, even inside a batch):
        forget the windows in the buffer and every unfinished track -- their pieces come again, from the
        start. Records already returned stand."""
        self.scorer.clear()

    def _record(self, track: ScoredTrack, status: str, reason: str | None) -> dict[str, Any]:
        info: _TrackInfo = track.info
        # a name that is not valid UTF-8 is written with \xNN escapes (JSON and CSV need text)
        rec: dict[str, Any] = {"path": printable_path(info.path), "status": status, "reason": reason, "duration": info.duration}
        if self.predictor.multi_label:  # scores are independent per-tag sigmoids (a genre line has no "kind")
            rec["kind"] = self.predictor.label_kind
        if status != "ok":
            rec["duration"] = None
            return rec
        labels = self.predictor.labels
        mean = track.mean()  # (K,) float64
        order = np.argsort(-mean, kind="stable")[: self.top_k]
        rec["top"] = [{"label": labels[i], "prob": float(mean[i])} for i in order]
        if self.predictor.thresholds is not None:  # the tags the track has: score >= the tag's cut, best first
            above = np.flatnonzero(mean >= self.predictor.thresholds)
            rec["tags"] = [{"label": labels[i], "score": float(mean[i])} for i in above[np.argsort(-mean[above], kind="stable")]]
        rec["windows"] = len(track.outputs)
        if info.notes:
            rec["notes"] = info.notes
        if self.timeline:
            rec["timeline"] = sorted(self._timeline(track), key=lambda w: w["start"])
        return rec

    def _timeline(self, track: ScoredTrack) -> list[dict[str, Any]]:
        """Each window's top label and its probability, in scoring order."""
        sr, labels = self.predictor.sample_rate, self.predictor.labels
        out = []
        for start, row in zip(track.starts, track.outputs):
            p = row.astype(np.float64)
            k = int(np.argmax(p))
            out.append({"start": round(start / sr, 3), "label": labels[k], "prob": float(p[k])})
        return out
