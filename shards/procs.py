"""Worker processes that die, and a process pool that survives them.

A decode worker can die under any decoder -- the kernel's OOM killer, a crash inside a native library
(FFmpeg, libsndfile) on a pathological file. The ingest's pool (:class:`Mapper`) and ``engine classify``'s
DataLoader both recover the same way: the files in flight are decoded again, each alone in a process of its
own (:func:`run_alone`), so a file that takes its process down gets a reason (:func:`crash_reason`) and
every other file its normal result.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a wait on a process looks whether it is still alive


def worker_death(exitcode: int | None) -> str:
    """Words for a process's exit code: ``killed by SIGKILL (out of memory?)``, ``crashed with SIGSEGV``."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name} (out of memory?)" if name == "SIGKILL" else f"crashed with {name}"
    return f"exited with status {exitcode}"


def crash_reason(exitcode: int | None) -> str:
    """The reason given to a file whose decoding took down the process decoding it alone."""
    return f"decoder crashed: the worker process decoding this file alone {worker_death(exitcode)}"


def _send_result(fn: Callable, item: Any, conn: Any) -> None:  # the body of a one-call process
    conn.send(fn(item))
    conn.close()


def run_alone(fn: Callable[[Any], Any], item: Any, on_crash: Callable[[int | None], Any] = crash_reason) -> Any:
    """``fn(item)`` in a fresh process; ``on_crash(exitcode)`` if that process dies before it answers.

    ``fn`` and the result travel like multiprocessing task arguments (picklable under ``spawn``).
    """
    ctx = mp.get_context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_send_result, args=(fn, item, send), daemon=True)
    proc.start()
    send.close()
    try:
        while True:
            if recv.poll(POLL_S):
                try:
                    return recv.recv()
                except EOFError:  # the process died before it could send
                    proc.join()
                    return on_crash(proc.exitcode)
            if proc.exitcode is not None and not recv.poll(0):
                return on_crash(proc.exitcode)
    finally:
        recv.close()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _map_chunk(fn: Callable, chunk: list) -> list:  # one pool task: a chunk of items
    return [fn(x) for x in chunk]


class _WorkerDied(Exception):
    def __init__(self, exitcode: int | None) -> None:
        super().__init__(worker_death(exitcode))
        self.exitcode = exitcode


class Mapper:
    """``imap`` over a process pool (order kept), or in-process when ``workers <= 1``.

    A worker process that dies (the OOM killer, a crash inside a native decoder) would leave
    ``multiprocessing.Pool`` waiting forever for its task. The mapper watches its workers instead: on a
    death it starts a fresh pool and runs the tasks that were in flight one at a time, each in a process
    of its own, so the one that takes its process down gets ``on_crash(exitcode)`` as its result (a skip
    reason) and every other task its normal result -- the job neither hangs nor stops.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.ctx = mp.get_context()
        self.pool = None
        self.procs: list[Any] = []
        self._stop = threading.Event()
        if workers > 1:
            self._new_pool()

    def _new_pool(self) -> None:
        before = set(mp.active_children())
        self.pool = self.ctx.Pool(self.workers)
        self.procs = [p for p in mp.active_children() if p not in before]  # this pool's worker processes
        self._stop = threading.Event()

    def imap(
        self, fn: Callable, items: Sequence, chunksize: int = 1, window: int | None = None,
        on_crash: Callable[[int | None], Any] = lambda _code: None,
    ) -> Iterator:  # fmt: skip
        """Ordered ``fn`` over ``items``. ``window`` bounds the tasks in flight: ``Pool.imap`` reads its input
        eagerly, so without it a slow consumer (a slow disk) lets decoded results pile up in memory.
        ``on_crash(exitcode)`` is the result of a task whose process died even when it ran alone."""
        if self.pool is None:
            return map(fn, items)
        return self._guarded(fn, list(items), max(1, chunksize), window, on_crash)

    def _guarded(
        self, fn: Callable, items: list, chunksize: int, window: int | None, on_crash: Callable[[int | None], Any]
    ) -> Iterator:
        k = 0  # index of the next result to hand out
        while k < len(items):
            try:
                for r in self._pool_imap(fn, items[k:], chunksize, window):
                    yield r
                    k += 1
                return
            except _WorkerDied as died:
                # the lost task lies in the chunks in flight from k on: run those alone, then the pool again
                suspects = items[k : k + chunksize * self.workers]
                log.warning(
                    "a worker process %s; running the %d task(s) in flight one at a time", died, len(suspects)
                )
                self._stop.set()
                self.pool.terminate()
                self.pool.join()
                self._new_pool()
                for item in suspects:
                    yield run_alone(fn, item, on_crash)
                    k += 1

    def _pool_imap(self, fn: Callable, items: list, chunksize: int, window: int | None) -> Iterator:
        # chunks are made here, not by Pool.imap (whose chunked form is a plain generator that cannot wait
        # with a timeout): one pool task per chunk, its results a list
        chunks: Iterator[list] = (items[i : i + chunksize] for i in range(0, len(items), chunksize))
        sem, stop = None, self._stop
        if window is not None:
            sem = threading.BoundedSemaphore(max(window, 2 * chunksize * self.workers))

            def throttled(chunks: Iterator[list] = chunks) -> Iterator[list]:
                for chunk in chunks:  # runs in the pool's task-feeding thread
                    for _ in chunk:
                        while not sem.acquire(timeout=0.2):
                            if stop.is_set():
                                return
                    yield chunk

            chunks = throttled()
        results = self.pool.imap(partial(_map_chunk, fn), chunks)
        for _ in range(math.ceil(len(items) / chunksize)):
            while True:
                try:
                    rs = results.next(timeout=POLL_S)
                    break
                except mp.TimeoutError:
                    dead = [p for p in self.procs if p.exitcode is not None]
                    if dead:
                        raise _WorkerDied(dead[0].exitcode) from None
            for r in rs:
                if sem is not None:
                    sem.release()
                yield r

    def close(self) -> None:
        self._stop.set()
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def pool_chunksize(n: int, workers: int, cap: int) -> int:
    """Items per pool task for ``n`` items over ``workers`` processes, at most ``cap``."""
    # ~8 chunks per worker keeps the pool busy to the end; the cap bounds result latency/memory
    return max(1, min(cap, n // max(1, workers * 8)))
