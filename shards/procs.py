"""Worker processes that die: words for how they died, and one call run in a process of its own.

A decode worker can die under any decoder -- the kernel's OOM killer, a crash inside a native library
(FFmpeg, libsndfile) on a pathological file. The ingest's pool (:mod:`shards.ingest`) and ``engine
classify``'s DataLoader both recover the same way: the files in flight are decoded again, each alone in a
process of its own (:func:`run_alone`), so a file that takes its process down gets a reason
(:func:`crash_reason`) and every other file its normal result.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from collections.abc import Callable
from typing import Any

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
