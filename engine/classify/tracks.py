"""From decoded pieces to one record per track: windows of many tracks packed into full device batches,
each track's window probabilities averaged once its last window is scored."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.classify.decode import Piece
from engine.classify.predictor import Predictor

logger = logging.getLogger(__name__)

INCOMPLETE = "incomplete: decoding stopped before the end of the file"


@dataclass
class _Track:
    path: str
    sum_probs: np.ndarray | None = None  # float64 (K,)
    seen: int = 0  # windows with probabilities
    expected: int = 0  # windows sent by the worker so far
    last: bool = False
    duration: float | None = None
    notes: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)


class TrackAverager:
    """Feed :class:`~engine.classify.decode.Piece` s in with :meth:`add`, get finished records back.

    Windows go into one pinned int16 buffer ``[batch_size, segment_samples]``; a full buffer is one
    ``predictor`` call. A track is finished when its last piece has arrived and all its windows are scored:
    its record holds the mean probability over its windows (top ``top_k`` genres; for a tag model the mean
    of the windows' sigmoid scores, top ``top_k`` tags, and ``"kind": "tags"``) and, with ``timeline``,
    each window's top genre. An error piece finishes its track at once (windows of it still in the buffer
    are dropped when scored). Records are dicts in the output's field order.
    """

    def __init__(self, predictor: Predictor, batch_size: int, top_k: int, timeline: bool) -> None:
        self.predictor, self.top_k, self.timeline = predictor, top_k, timeline
        self.buf = torch.empty(
            (batch_size, predictor.segment_samples), dtype=torch.int16, pin_memory=predictor.device.type == "cuda"
        )
        self.owners: list[tuple[int, int]] = []  # (track index, window start) of each filled row of buf
        self.tracks: dict[int, _Track] = {}

    def add(self, piece: Piece) -> list[dict[str, Any]]:
        """Take one piece; returns the records of the tracks it finished (its own, or others' in a batch run)."""
        tr = self.tracks.setdefault(piece.index, _Track(piece.path))
        if piece.status != "ok":
            return [self._finish(piece.index, "error", piece.reason)]
        done: list[dict[str, Any]] = []
        for w, start in zip(piece.windows, piece.starts.tolist()):
            self.buf[len(self.owners)].copy_(torch.from_numpy(w))
            self.owners.append((piece.index, start))
            tr.expected += 1
            if len(self.owners) == len(self.buf):
                done += self._run_batch()
        if piece.last:
            tr.last, tr.duration, tr.notes = True, piece.duration, piece.notes
            if tr.seen == tr.expected and tr.expected > 0:
                done.append(self._finish(piece.index, "ok", None))
        return done

    def flush(self) -> list[dict[str, Any]]:
        """End of input: score the partial batch; a track still unfinished then (only if a decode worker
        died mid-track) gets an error record, so every file still gets its line."""
        done = self._run_batch()
        for index, tr in list(self.tracks.items()):
            logger.error("%s: decoding stopped before the end of the file", tr.path)
            done.append(self._finish(index, "error", INCOMPLETE))
        return done

    def restart(self) -> None:
        """The decode workers died (the error may have surfaced anywhere in the loop, even inside a batch):
        forget the windows in the buffer and every unfinished track -- their pieces come again, from the
        start. Records already returned stand."""
        self.owners.clear()
        self.tracks.clear()

    def _run_batch(self) -> list[dict[str, Any]]:
        n = len(self.owners)
        if n == 0:
            return []
        probs = self.predictor(self.buf[:n])  # (n, K)
        sr, labels = self.predictor.sample_rate, self.predictor.labels
        for row, (index, start) in enumerate(self.owners):
            tr = self.tracks.get(index)
            if tr is None:  # track failed later in its file; its windows are dropped
                continue
            p = probs[row].astype(np.float64)
            tr.sum_probs = p if tr.sum_probs is None else tr.sum_probs + p
            tr.seen += 1
            if self.timeline:
                k = int(np.argmax(p))
                tr.timeline.append({"start": round(start / sr, 3), "label": labels[k], "prob": float(p[k])})
        self.owners.clear()
        finished = [i for i, t in self.tracks.items() if t.last and t.seen == t.expected]
        return [self._finish(i, "ok", None) for i in finished]

    def _finish(self, index: int, status: str, reason: str | None) -> dict[str, Any]:
        tr = self.tracks.pop(index)
        rec: dict[str, Any] = {"path": tr.path, "status": status, "reason": reason, "duration": tr.duration}
        if self.predictor.multi_label:  # scores are independent per-tag sigmoids (a genre line has no "kind")
            rec["kind"] = self.predictor.label_kind
        if status != "ok":
            rec["duration"] = None
            return rec
        assert tr.sum_probs is not None and tr.seen > 0
        mean = tr.sum_probs / tr.seen
        order = np.argsort(-mean, kind="stable")[: self.top_k]
        rec["top"] = [{"label": self.predictor.labels[i], "prob": float(mean[i])} for i in order]
        rec["windows"] = tr.seen
        if tr.notes:
            rec["notes"] = tr.notes
        if self.timeline:
            rec["timeline"] = sorted(tr.timeline, key=lambda w: w["start"])
        return rec
