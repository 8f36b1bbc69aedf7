"""Where a command meets the file system: outputs checked before any work, and one-line answers for mistakes.

Every command that writes calls :func:`prepare_output_dir` / :func:`prepare_output_file` on each output path
*before* it reads its inputs or starts a long job, so a path that cannot work is refused at once, with a
one-line :class:`OutputError` that names the path, what is wrong and the fix. Nothing is created or changed
by a refusal.

Policy for missing folders (the same for every command): a missing output folder, and any missing parent
folders of an output path, are created when the command first writes there (``create=True`` creates them at
once). The check only demands that the nearest existing ancestor is a folder this process can write in.

Writability is asked twice: :func:`os.access` (cheap, and right for ordinary users), then a real probe (a
file created and removed at once in an existing output folder; an existing output file opened for writing,
unchanged). The probe is what catches root without ``CAP_DAC_OVERRIDE``, read-only and root-squashed
mounts, and immutable files, where :func:`os.access` alone may say yes.

:func:`describe_os_error` and :func:`describe_unicode_error` turn the exceptions the file system raises into
one line naming the path; :func:`cli_errors` wraps a command's ``main(argv) -> int`` so that an
:class:`OutputError` / :class:`InputError`, an :class:`OSError` or a :class:`UnicodeDecodeError` escaping it
becomes that line on stderr and exit status 2 (no traceback). :func:`decode_utf8` reads a user's text file
strictly, naming the byte offset and line of the first bad byte. :func:`printable_path` shows a path whose
name is not valid UTF-8 with ``\\xNN`` escapes (safe for JSON, terminals and logs).
"""

from __future__ import annotations

import codecs
import errno
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "EXIT_USER_ERROR",
    "InputError",
    "OutputError",
    "PathProblem",
    "cli_errors",
    "decode_utf8",
    "describe_os_error",
    "describe_unicode_error",
    "is_utf8_path",
    "prepare_output_dir",
    "prepare_output_file",
    "printable_path",
]

EXIT_USER_ERROR = 2  # the exit status of a refused command (argparse's too)

PathLike = str | os.PathLike[str]
MainFn = Callable[[Sequence[str] | None], int]


class PathProblem(ValueError):
    """A path a command cannot use: ``path`` (printable), ``problem`` (what is wrong), ``fix`` (what to do).

    ``str(err)`` is one line: ``"{flag} {path}: {problem}; {fix}"`` (no flag when none was given)."""

    def __init__(self, path: PathLike, problem: str, fix: str = "", *, flag: str | None = None) -> None:
        self.path = printable_path(path)
        self.problem = problem
        self.fix = fix
        self.flag = flag
        where = f"{flag} {self.path}" if flag else self.path
        super().__init__(f"{where}: {problem}" + (f"; {fix}" if fix else ""))


class OutputError(PathProblem):
    """An output path that cannot be written (wrong kind, read-only, a file in the way, not ours to replace)."""


class InputError(PathProblem):
    """An input file or folder that cannot be read as asked (unreadable, not UTF-8 text)."""


# --------------------------------------------------------------------------------------------- names
def printable_path(path: PathLike | bytes) -> str:
    """``path`` as text that encodes to UTF-8: bytes of a name that is not valid UTF-8 become ``\\xNN``."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def is_utf8_path(path: PathLike) -> bool:
    """Whether the name is valid UTF-8 (a str from the file system holds surrogates where it is not)."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------- errors
_OS_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "change its permissions or choose another path"),
    errno.EPERM: ("operation not permitted", "check its permissions and attributes, or choose another path"),
    errno.ENOENT: ("does not exist", "check the path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("is a folder, not a file", "name a file"),
    errno.EEXIST: ("already exists", "remove it or choose another path"),
    errno.ENOTEMPTY: ("folder is not empty", "empty it or choose another path"),
    errno.ENOSPC: ("no space left on the device", "free space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space or write elsewhere"),
    errno.EROFS: ("is on a read-only file system", "write elsewhere"),
    errno.ENAMETOOLONG: ("name too long", "use a shorter path"),
    errno.ELOOP: ("too many levels of symbolic links", "check the links on the path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer workers"),
    errno.EIO: ("input/output error", "check the disk or the network mount"),
}


def describe_os_error(err: OSError, path: PathLike | None = None) -> str:
    """One line for ``err``: ``"PATH: permission denied; change its permissions or choose another path"``.

    ``path`` defaults to the error's own ``filename`` (and ``filename2``, for a rename)."""
    where = path if path is not None else err.filename
    if where is None:
        where_s = ""
    else:
        where_s = printable_path(where if not isinstance(where, int) else str(where))
        if path is None and err.filename2 is not None:
            where_s += f" -> {printable_path(err.filename2)}"
    problem, fix = _OS_PROBLEMS.get(err.errno or -1, (err.strerror or str(err) or type(err).__name__, ""))
    line = f"{where_s}: {problem}" if where_s else problem
    return line + (f"; {fix}" if fix else "")


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def describe_unicode_error(err: UnicodeDecodeError, path: PathLike | None = None) -> str:
    """One line for a text file that is not UTF-8: the bad byte, its offset (and line, when ``err.object``
    holds the whole file) and the fix."""
    bad = err.object[err.start : err.start + 1].hex()
    where = f"{printable_path(path)}: " if path is not None else ""
    line = _line_of(bytes(err.object), err.start)
    return (
        f"{where}not UTF-8 text (byte 0x{bad} at offset {err.start}, line {line}); "
        "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def decode_utf8(data: bytes, path: PathLike, *, bom: bool = True) -> str:
    """``data`` (the whole content of the text file ``path``) as str; raises :class:`InputError` naming the
    offset and line of the first byte that is not UTF-8. ``bom``: drop a leading UTF-8 byte-order mark.

    No fallback encoding is guessed: a Latin-1 file read as something else gives names that do not exist."""
    skip = len(codecs.BOM_UTF8) if bom and data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        at = err.start + skip  # an offset into the file, BOM included
        raise InputError(
            path,
            f"not UTF-8 text (byte 0x{data[at:at + 1].hex()} at offset {at}, line {_line_of(data, at)})",
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None


# --------------------------------------------------------------------------------------------- checks
def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (as anything); ``path`` is absolute."""
    cur = path
    while not os.path.lexists(cur) and cur.parent != cur:
        cur = cur.parent
    return cur


def _probe_dir(folder: Path) -> OSError | None:
    """Create and remove a file in ``folder``: None when that works, the error otherwise."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    except OSError as err:
        return err
    os.close(fd)
    os.unlink(name)
    return None


def _check_writable_dir(folder: Path, target: Path, flag: str | None, cls: type[PathProblem]) -> None:
    """Refuse when this process cannot create entries in ``folder`` (on the way to ``target``)."""
    what = "it" if folder == target else f"{printable_path(folder)}"
    err: OSError | None = None
    if not os.access(folder, os.W_OK | os.X_OK):
        err = PermissionError(errno.EACCES, "Permission denied", str(folder))
    else:
        err = _probe_dir(folder)
    if err is None:
        return
    problem, _ = _OS_PROBLEMS.get(err.errno or -1, (err.strerror or str(err), ""))
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        problem = f"cannot write in {what}: read-only ({problem})"
    else:
        problem = f"cannot write in {what}: {problem}"
    raise cls(target, problem, "choose a folder you can write to, or change its permissions", flag=flag)


def _check_parent_chain(target: Path, flag: str | None) -> None:
    """``target`` does not exist: its nearest existing ancestor must be a folder we can write in (the missing
    folders between are created on first write)."""
    anc = _nearest_existing(target.parent)
    if not anc.is_dir():
        raise OutputError(
            target,
            f"{printable_path(anc)} is a file, not a folder, so nothing can be created under it",
            "choose another path",
            flag=flag,
        )
    _check_writable_dir(anc, target, flag, OutputError)


def prepare_output_dir(path: PathLike, *, flag: str | None = "--out", create: bool = False) -> Path:
    """Check that ``path`` can be this command's output folder; returns it as a :class:`Path`.

    Refused with :class:`OutputError` (nothing created): a file (or anything not a folder) at ``path``, an
    existing folder this process cannot write in, a file in the way of a missing parent, a missing folder
    whose nearest existing ancestor is read-only. Whether an existing folder's *content* may be reused or
    replaced is the command's business (a resume). ``create``: create ``path`` and its missing parents now
    (else the command creates them when it first writes, see the module doc). ``flag`` names the option in
    the message (None: no flag)."""
    target = Path(os.path.abspath(os.fspath(path)))
    if os.path.lexists(target) and not target.is_dir():
        raise OutputError(
            path,
            "is a file, not a folder" if target.exists() else "is a dangling symbolic link, not a folder",
            "name a folder (a new one is created), or remove or rename the file",
            flag=flag,
        )
    if target.is_dir():
        _check_writable_dir(target, target, flag, OutputError)
    else:
        _check_parent_chain(target, flag)
        if create:
            target.mkdir(parents=True, exist_ok=True)
    return Path(path)


def prepare_output_file(
    path: PathLike,
    *,
    flag: str | None = "--out",
    replace: bool | Callable[[Path], bool] = False,
    replace_hint: str = "choose another name, or remove the file yourself",
    create_parents: bool = False,
) -> Path:
    """Check that ``path`` can be this command's output file; returns it as a :class:`Path`.

    Refused with :class:`OutputError` (nothing created or changed): a folder at ``path``; an existing file
    the command may not replace (``replace`` False, or a callable that says False: e.g. "was this file
    written by us?", so a user's own file is never touched; ``replace_hint`` is the fix then); an existing
    file this process cannot write; a file in the way of a missing parent; a read-only parent.
    ``create_parents``: create the missing parent folders now (else on first write)."""
    target = Path(os.path.abspath(os.fspath(path)))
    if target.is_dir():
        raise OutputError(
            path, "is a folder, not a file", f"name a file, e.g. {printable_path(target / 'out')}", flag=flag
        )
    if os.path.lexists(target):
        may = replace(target) if callable(replace) else replace
        if not may:
            raise OutputError(path, "exists and is not an output this command may replace", replace_hint, flag=flag)
        try:  # opened for writing, not truncated: the content and mtime stay as they are
            with open(target, "r+b"):
                pass
        except OSError as err:
            problem, _ = _OS_PROBLEMS.get(err.errno or -1, (err.strerror or str(err), ""))
            raise OutputError(
                path, f"cannot write it ({problem})", "change its permissions or choose another name", flag=flag
            ) from None
        _check_writable_dir(target.parent, target, flag, OutputError)  # the atomic rename needs the folder
        return Path(path)
    _check_parent_chain(target, flag)
    if create_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    return Path(path)


# --------------------------------------------------------------------------------------------- CLI
def cli_errors(prog: str) -> Callable[[MainFn], MainFn]:
    """Decorator for a command's ``main(argv) -> int``: a :class:`PathProblem` (:class:`OutputError`,
    :class:`InputError`), an :class:`OSError` or a :class:`UnicodeDecodeError` escaping it is printed as one
    line ``"{prog}: error: ..."`` on stderr and the command returns :data:`EXIT_USER_ERROR` (2), without a
    traceback. Everything else (a bug, ``KeyboardInterrupt``, ``SystemExit``) passes through.

    A command still cleans up after itself (``.tmp`` files, sidecars) in its own ``finally`` / ``except``
    blocks: the wrapper only reports."""

    def wrap(main: MainFn) -> MainFn:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            try:
                return main(argv)
            except PathProblem as err:
                line = str(err)
            except UnicodeDecodeError as err:
                line = describe_unicode_error(err)
            except OSError as err:
                line = describe_os_error(err)
            print(f"{prog}: error: {line}", file=sys.stderr)
            return EXIT_USER_ERROR

        return wrapped

    return wrap
