"""One shard set from N processes on M machines: the ingest's ranks, and what they exchange.

Under ``accelerate launch`` or ``torchrun`` (the launchers and the rendezvous training uses: ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment) every process runs the same ingest
(:func:`shards.ingest.run_ingest`) and they meet in a gloo process group (CPU only: the GPUs stay free):

1. **plan, once** -- rank 0 scans, checks the resume state and builds the plan; the file reads the plan needs
   (dedupe hashes, probes) are spread over every rank (:class:`RankMapper`: rank 0 broadcasts each map, rank r
   does items ``r::world`` with its own decode pool, rank 0 gathers them back in order); the plan is then
   broadcast. Its bytes do not depend on the number of ranks.
2. **write** -- the shards not yet done (each rank checks a share of the done-records) are dealt to the ranks,
   largest first to the least loaded (:func:`deal_shards`); each shard is written by exactly one rank, tmp +
   rename, so a rank that dies leaves only finished shards.
3. **finish** -- a heartbeat (a small all_reduce every :data:`HEARTBEAT_S` on a group of its own, from a thread)
   carries the counts of every rank to rank 0's progress bar and tells every rank when all are done; rank 0
   gathers the done-records and writes ``manifest.json``.

A rank that dies closes its sockets: the others' next collective fails at once, and a rank that hangs fails
them after ``timeout`` -- the run then stops with :class:`RankError` (rerun the same command, with any number of
processes, to resume). Without a launcher (``WORLD_SIZE`` unset or 1) :class:`Ranks` is one process and every
exchange here is the identity: the same code path as before.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

from shards.ingest_config import IngestError
from shards.procs import Mapper

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TIMEOUT_S", "HEARTBEAT_S", "RankError", "RankMapper", "Ranks", "WriteWatch", "deal_shards"]

DEFAULT_TIMEOUT_S = 1800.0  # a rank waiting on another (rank 0's scan of a large tree) before giving up
HEARTBEAT_S = 1.0  # seconds between heartbeats during the write phase
HEARTBEAT_TIMEOUT_S = 120.0  # a heartbeat unanswered this long: a rank hangs


def _no_result(_exitcode: int | None) -> None:  # picklable: a map's default on_crash travels to the ranks
    return None


class RankError(IngestError):
    """Another rank died, hung or failed: the run stops; a rerun resumes it."""


def _lost(err: BaseException) -> RankError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RankError(
        f"a process of this multi-process ingest stopped answering ({first[:300]}); the shards finished so far "
        "are kept: rerun the same command (any number of processes) to write the rest"
    )


class Ranks:
    """This process's place in the ingest: ``rank`` of ``world``; object collectives over gloo."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, group: Any = None) -> None:
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.heartbeat_group = group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
        """One process (``WORLD_SIZE`` unset or 1), or a gloo group over the launcher's rendezvous with
        ``timeout_s`` on every collective."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist  # noqa: PLC0415 -- only a multi-process run needs it

        try:
            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
            group = dist.new_group(backend="gloo", timeout=timedelta(seconds=HEARTBEAT_TIMEOUT_S))
        except (RuntimeError, ValueError) as err:
            raise RankError(f"cannot join the other processes (rendezvous failed: {err})") from None
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group)

    # ---- object collectives (identity with one process); any failure of a peer -> RankError
    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist  # noqa: PLC0415

        box = [obj]
        try:
            dist.broadcast_object_list(box, src=0)
        except (RuntimeError, ValueError, pickle.UnpicklingError) as err:
            raise _lost(err) from None
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist  # noqa: PLC0415

        box: list[Any] = [None] * self.world
        try:
            dist.all_gather_object(box, obj)
        except (RuntimeError, ValueError, pickle.UnpicklingError) as err:
            raise _lost(err) from None
        return box

    def barrier(self) -> None:
        self.all_gather(None)

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist  # noqa: PLC0415

            if dist.is_initialized():
                dist.destroy_process_group()

    # ---- rank 0 computes, the others lend their processes
    def lead(self, fn: Callable[[Mapper], Any], mapper: Mapper) -> Any:
        """``fn(mapper)`` on rank 0 with its maps spread over every rank (:class:`RankMapper`); its result on
        every rank. The others serve those maps until it ends; an :class:`IngestError` (or any failure) of
        rank 0 is raised on every rank."""
        if self.world == 1:
            return fn(mapper)
        if not self.is_main:
            return self._serve(mapper)
        try:
            result = fn(RankMapper(mapper, self))
        except IngestError as err:
            self.broadcast(("error", str(err)))
            raise
        except BaseException as err:
            self.broadcast(("error", f"rank 0 failed ({type(err).__name__}: {err})"))
            raise
        self.broadcast(("done", result))
        return result

    def _serve(self, mapper: Mapper) -> Any:
        while True:
            msg = self.broadcast()
            if msg[0] == "done":
                return msg[1]
            if msg[0] == "error":
                raise IngestError(msg[1])
            _, fn, items, chunksize, on_crash = msg
            mine = items[self.rank :: self.world]
            self.all_gather(list(mapper.imap(fn, mine, chunksize, on_crash=on_crash)))


class RankMapper:
    """A :class:`shards.procs.Mapper` for rank 0 whose ``imap`` is done by every rank: rank r maps items
    ``r::world`` with its own pool; the results come back in item order (so the plan is the same for any
    number of ranks)."""

    def __init__(self, mapper: Mapper, ranks: Ranks) -> None:
        self.mapper, self.ranks = mapper, ranks
        self.workers = mapper.workers * ranks.world  # what chunk sizes are computed from

    def imap(
        self, fn: Callable, items: Sequence, chunksize: int = 1, window: int | None = None,
        on_crash: Callable[[int | None], Any] = _no_result,
    ) -> Iterator:  # fmt: skip
        items = list(items)
        self.ranks.broadcast(("map", fn, items, chunksize, on_crash))
        mine = list(self.mapper.imap(fn, items[:: self.ranks.world], chunksize, window, on_crash))
        parts = self.ranks.all_gather(mine)
        out: list[Any] = [None] * len(items)
        for r, part in enumerate(parts):
            out[r :: self.ranks.world] = part
        return iter(out)


def deal_shards(shards: Sequence[dict[str, Any]], world: int) -> list[list[dict[str, Any]]]:
    """The plan's ``shards`` (``start``/``stop`` ranges) dealt to ``world`` ranks: largest first (track count;
    ties in plan order) to the least loaded rank (ties: the lowest); each rank's list in plan order. Only the
    split of the work depends on ``world``, never the bytes of a shard."""
    order = sorted(range(len(shards)), key=lambda i: (-(shards[i]["stop"] - shards[i]["start"]), i))
    load = [0] * world
    mine: list[list[int]] = [[] for _ in range(world)]
    for i in order:
        r = min(range(world), key=lambda k: (load[k], k))
        load[r] += shards[i]["stop"] - shards[i]["start"]
        mine[r].append(i)
    return [[shards[i] for i in sorted(m)] for m in mine]


class WriteWatch:
    """The write phase across ranks: this rank's counts (``add``), the heartbeat that sums them on rank 0's
    bar (files/s and audio hours/s) and ends once every rank is done (``finish``).

    With one process it is only the counts; the caller keeps its own bar."""

    def __init__(self, ranks: Ranks, total_files: int, progress: bool | None) -> None:
        self.ranks = ranks
        self.files = 0
        self.seconds = 0.0
        self._state = 0.0  # 1: this rank finished, 2: it failed
        self._error: BaseException | None = None
        self._others_failed = False
        self._thread: threading.Thread | None = None
        self._bar = None
        if ranks.world > 1:
            if ranks.is_main:
                from shards.plan import progress_bar  # noqa: PLC0415 -- the one bar style of the ingest

                self._bar = progress_bar(total_files, f"decode ({ranks.world} processes)", progress)
            self._thread = threading.Thread(target=self._beat, name="ingest-heartbeat", daemon=True)
            self._thread.start()

    def add(self, files: int, seconds: float) -> None:
        self.files += files
        self.seconds += seconds

    def _beat(self) -> None:
        import torch  # noqa: PLC0415
        import torch.distributed as dist  # noqa: PLC0415

        t0, shown = time.perf_counter(), 0
        try:
            while True:
                t = torch.tensor([float(self.files), self.seconds, float(self._state == 1), float(self._state == 2)],
                                 dtype=torch.float64)  # fmt: skip
                dist.all_reduce(t, group=self.ranks.heartbeat_group)
                files, seconds, finished, failed = (float(x) for x in t)
                if self._bar is not None:
                    self._bar.update(int(files) - shown)
                    shown = int(files)
                    dt = max(1e-9, time.perf_counter() - t0)
                    self._bar.set_postfix_str(f"{seconds / 3600 / dt:.4f} audio h/s", refresh=False)
                if finished + failed >= self.ranks.world:
                    self._others_failed = failed > float(self._state == 2)
                    return
                time.sleep(HEARTBEAT_S)
        except (RuntimeError, ValueError) as err:
            self._error = err

    def finish(self, ok: bool = True) -> None:
        """This rank is done (``ok``) or failed; with several, wait until every rank is, then raise
        :class:`RankError` if another failed or stopped answering."""
        if self._thread is None:
            return
        self._state = 1.0 if ok else 2.0
        self._thread.join()
        if self._bar is not None:
            self._bar.close()
        if not ok:
            return
        if self._error is not None:
            raise _lost(self._error)
        if self._others_failed:
            raise RankError(
                "another process of this multi-process ingest failed (see its error above); the shards finished "
                "so far are kept: rerun the same command to write the rest"
            )
