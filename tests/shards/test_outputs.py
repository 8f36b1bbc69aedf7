"""shards.outputs: output paths refused before any work with one line naming the path, the problem and the
fix; nothing created or changed by a check; OS and decoding errors turned into one line and exit status 2.

Read-only cases run in a subprocess without CAP_DAC_OVERRIDE (``run_unprivileged``): the tests run as root.
"""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest

from shards.outputs import (
    EXIT_USER_ERROR,
    InputError,
    OutputError,
    cli_errors,
    decode_utf8,
    describe_os_error,
    describe_unicode_error,
    is_utf8_path,
    prepare_output_dir,
    prepare_output_file,
    printable_path,
)

_PROBE = (
    "import json, sys\n"
    "from shards.outputs import OutputError, prepare_output_dir, prepare_output_file\n"
    "fn = {'dir': prepare_output_dir, 'file': prepare_output_file}[sys.argv[1]]\n"
    "try:\n"
    "    fn(sys.argv[2])\n"
    "    print(json.dumps({'ok': True}))\n"
    "except OutputError as e:\n"
    "    print(json.dumps({'ok': False, 'msg': str(e)}))\n"
)


def _probe_unprivileged(run, kind: str, path) -> dict:
    proc = run([sys.executable, "-c", _PROBE, kind, path])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------------------------- folders
def test_missing_output_folder_passes_the_check_and_nothing_is_created_until_asked(tmp_path, snapshot):
    before = snapshot(tmp_path)
    assert prepare_output_dir(tmp_path / "a" / "b" / "out") == tmp_path / "a" / "b" / "out"
    assert snapshot(tmp_path) == before
    prepare_output_dir(tmp_path / "a" / "b" / "out", create=True)
    assert (tmp_path / "a" / "b" / "out").is_dir()


def test_existing_output_folder_passes_and_its_content_is_untouched(tmp_path, snapshot):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("user data")
    before = snapshot(tmp_path)
    prepare_output_dir(tmp_path / "out")
    assert snapshot(tmp_path) == before  # the write probe left nothing behind


def test_output_folder_that_is_a_file_is_refused_naming_path_problem_and_fix(tmp_path, snapshot):
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError) as exc:
        prepare_output_dir(tmp_path / "afile")
    msg = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert msg.startswith(f"--out {tmp_path / 'afile'}: is a file, not a folder; name a folder")
    assert "\n" not in msg and exc.value.problem and exc.value.fix
    assert snapshot(tmp_path) == before


def test_output_folder_under_a_file_is_refused_naming_the_file(tmp_path, snapshot):
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match=r"afile is a file, not a folder, so nothing can be created under it"):
        prepare_output_dir(tmp_path / "afile" / "sub" / "out", flag="--shards-out")
    assert snapshot(tmp_path) == before


def test_output_folder_that_is_a_dangling_link_is_refused(tmp_path):
    os.symlink(tmp_path / "nowhere", tmp_path / "link")
    with pytest.raises(OutputError, match="dangling symbolic link"):
        prepare_output_dir(tmp_path / "link")


def test_flag_none_gives_the_bare_path(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError) as exc:
        prepare_output_dir(tmp_path / "f", flag=None)
    assert str(exc.value).startswith(f"{tmp_path / 'f'}: is a file")


def test_output_folder_in_a_read_only_folder_is_refused_as_read_only(tmp_path, run_unprivileged, snapshot):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    before = snapshot(tmp_path)
    try:
        res = _probe_unprivileged(run_unprivileged, "dir", tmp_path / "ro" / "new" / "out")
        assert not res["ok"]
        assert f"{tmp_path / 'ro' / 'new' / 'out'}: cannot write in {tmp_path / 'ro'}: read-only" in res["msg"]
        res = _probe_unprivileged(run_unprivileged, "dir", tmp_path / "ro")  # an existing read-only output folder
        assert not res["ok"] and "cannot write in it: read-only" in res["msg"]
        assert snapshot(tmp_path) == before
    finally:
        os.chmod(tmp_path / "ro", 0o755)


# --------------------------------------------------------------------------------------------- files
def test_output_file_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match=r"is a folder, not a file; name a file, e\.g\. "):
        prepare_output_file(tmp_path / "d")


def test_existing_file_not_ours_is_refused_and_left_as_it_is(tmp_path, snapshot):
    (tmp_path / "user.csv").write_text("my,own,data\n")
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match="exists and is not an output this command may replace; choose another"):
        prepare_output_file(tmp_path / "user.csv")
    with pytest.raises(OutputError, match="remove the sidecar"):
        prepare_output_file(tmp_path / "user.csv", replace=lambda p: False, replace_hint="remove the sidecar")
    assert snapshot(tmp_path) == before


def test_existing_file_we_may_replace_passes_unchanged(tmp_path, snapshot):
    (tmp_path / "ours.jsonl").write_text('{"a": 1}\n')
    mtime = (tmp_path / "ours.jsonl").stat().st_mtime_ns
    before = snapshot(tmp_path)
    seen = []
    prepare_output_file(tmp_path / "ours.jsonl", replace=lambda p: seen.append(p) or True)
    assert seen == [tmp_path / "ours.jsonl"]
    assert snapshot(tmp_path) == before and (tmp_path / "ours.jsonl").stat().st_mtime_ns == mtime


def test_new_output_file_in_missing_folders_passes_and_parents_are_created_when_asked(tmp_path, snapshot):
    before = snapshot(tmp_path)
    prepare_output_file(tmp_path / "x" / "y" / "o.jsonl")
    assert snapshot(tmp_path) == before
    prepare_output_file(tmp_path / "x" / "y" / "o.jsonl", create_parents=True)
    assert (tmp_path / "x" / "y").is_dir() and not (tmp_path / "x" / "y" / "o.jsonl").exists()


def test_output_file_read_only_or_in_a_read_only_folder_is_refused(tmp_path, run_unprivileged, snapshot):
    (tmp_path / "ro").mkdir()
    (tmp_path / "rofile.jsonl").write_text("{}\n")
    os.chmod(tmp_path / "rofile.jsonl", 0o444)
    os.chmod(tmp_path / "ro", 0o555)
    before = snapshot(tmp_path)
    try:
        res = _probe_unprivileged(run_unprivileged, "file", tmp_path / "ro" / "o.jsonl")
        assert not res["ok"] and "read-only" in res["msg"] and str(tmp_path / "ro") in res["msg"]
        assert snapshot(tmp_path) == before
    finally:
        os.chmod(tmp_path / "ro", 0o755)
    code = (
        "import sys\nfrom shards.outputs import OutputError, prepare_output_file\n"
        "try:\n    prepare_output_file(sys.argv[1], replace=True)\nexcept OutputError as e:\n    print(e)\n"
    )
    proc = run_unprivileged([sys.executable, "-c", code, tmp_path / "rofile.jsonl"])
    assert "cannot write it (permission denied)" in proc.stdout, proc.stdout + proc.stderr
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- errors
def test_describe_os_error_is_one_line_with_the_path_and_a_fix(tmp_path):
    err = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "x"))
    assert describe_os_error(err) == f"{tmp_path / 'x'}: permission denied; change its permissions or choose another path"
    assert describe_os_error(OSError(errno.ENOSPC, "No space"), "/data/out").startswith(
        "/data/out: no space left on the device; "
    )
    assert describe_os_error(OSError(errno.ENOTSUP, "Operation not supported", "/p")) == "/p: Operation not supported"
    err2 = OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")
    assert describe_os_error(err2) == "/a -> /b: Invalid cross-device link"
    assert describe_os_error(OSError(errno.ENOENT, "x")) == "does not exist; check the path"


def test_utf8_reading_names_offset_and_line_and_guesses_no_encoding(tmp_path):
    data = b"path,label\na.wav,rock\n/x/caf\xe9.wav,blues\n"
    with pytest.raises(InputError) as exc:
        decode_utf8(data, tmp_path / "l.csv")
    assert str(exc.value) == (
        f"{tmp_path / 'l.csv'}: not UTF-8 text (byte 0xe9 at offset 28, line 3); save the file as UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8)"
    )
    assert decode_utf8(b"\xef\xbb\xbfpath\n", "f") == "path\n"
    with pytest.raises(InputError, match=r"byte 0xe9 at offset 5, line 2\)"):  # offsets count the BOM
        decode_utf8(b"\xef\xbb\xbfa\n\xe9", "f")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        assert describe_unicode_error(err, "l.csv").startswith("l.csv: not UTF-8 text (byte 0xe9 at offset 28, line 3)")


def test_non_utf8_names_are_shown_with_escapes():
    name = os.fsdecode(b"/music/caf\xe9.wav")
    assert not is_utf8_path(name) and is_utf8_path("/music/café.wav")
    assert printable_path(name) == "/music/caf\\xe9.wav"
    assert printable_path(b"/a/\xff") == "/a/\\xff"
    assert OutputError(name, "p", "f").path == "/music/caf\\xe9.wav"


# --------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (OutputError("/o", "is a file, not a folder", "name a folder"), "/o: is a file, not a folder; name a folder"),
        (PermissionError(errno.EACCES, "Permission denied", "/o/x"), "/o/x: permission denied; change its"),
        ("decode", "not UTF-8 text (byte 0xe9 at offset 3, line 1)"),
    ],
    ids=["output-error", "os-error", "unicode-error"],
)
def test_cli_errors_turns_a_user_mistake_into_one_line_and_exit_2(exc, line, capsys):
    @cli_errors("tool")
    def main(argv=None) -> int:
        if exc == "decode":
            b"caf\xe9".decode("utf-8")
        raise exc

    assert main([]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"tool: error: {line}") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_errors_passes_results_and_bugs_through(capsys):
    @cli_errors("tool")
    def ok(argv=None) -> int:
        return 7

    @cli_errors("tool")
    def bug(argv=None) -> int:
        raise KeyError("a bug is not a user mistake")

    assert ok(["x"]) == 7 and ok.__name__ == "ok"
    with pytest.raises(KeyError):
        bug([])
    assert capsys.readouterr().err == ""
