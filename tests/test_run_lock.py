"""One run per output folder (detnas_d2.run_lock): a live holder refuses a second run with one line naming
it, the lock of a killed run is taken over, and a refused run leaves the folder as it found it."""

import errno
import json
import os
import signal
import subprocess
import sys

import detnas_d2  # noqa: F401  (compat shims, registrations)
from detnas_d2 import run_lock

import pytest
from log_capture import captured_log

from detnas_d2.run_lock import LOCK_FILE, RunLock, RunLockError, locked_output_dir
from detnas_d2.user_errors import UserError

HOLD = """
import sys, time
from detnas_d2.run_lock import RunLock
lock = RunLock(sys.argv[1], command="the other run").acquire()
print("held", flush=True)
time.sleep(600)
"""


def _hold_in_another_process(folder):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_run_holds_the_folder_and_a_killed_one_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    other = _hold_in_another_process(folder)
    try:
        with pytest.raises(RunLockError) as error:
            RunLock(str(folder)).acquire()
        message = str(error.value)
        assert f"OUTPUT_DIR {folder} is in use by another run (pid {other.pid} on " in message
        assert (
            "the other run" in message and "another OUTPUT_DIR" in message and "\n" not in message
        )
        assert (
            json.loads((folder / LOCK_FILE).read_text())["pid"] == other.pid
        )  # the refusal wrote nothing
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    assert (
        folder / LOCK_FILE
    ).exists()  # a killed holder leaves its file; the kernel dropped its lock
    with captured_log("detnas_d2.run_lock") as log:
        lock = RunLock(str(folder), command="the next run").acquire()
    assert lock.taken_over["pid"] == other.pid
    assert (
        f"taking over the lock of a run that did not end cleanly (pid {other.pid}" in log.getvalue()
    )
    record = json.loads((folder / LOCK_FILE).read_text())
    assert (record["pid"], record["command"]) == (os.getpid(), "the next run")
    lock.release()
    assert not (folder / LOCK_FILE).exists() and folder.is_dir()


def test_one_process_cannot_take_a_folder_twice_and_release_lets_the_next_in(tmp_path):
    first = RunLock(str(tmp_path)).acquire()
    with pytest.raises(RunLockError, match=f"pid {os.getpid()} "):
        RunLock(str(tmp_path)).acquire()
    first.release()
    with RunLock(str(tmp_path)) as second:
        assert second.held and not second.taken_over


def test_a_refusal_leaves_the_folder_as_it_was(tmp_path):
    created = tmp_path / "new"
    with pytest.raises(UserError, match="refused"):
        with locked_output_dir(
            str(created), check=lambda: (_ for _ in ()).throw(UserError("refused"))
        ):
            pass
    assert not created.exists()  # made for the lock, removed with it

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.yaml").write_text("kept")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in existing.iterdir()}
    with pytest.raises(UserError, match="refused"):
        with locked_output_dir(
            str(existing), check=lambda: (_ for _ in ()).throw(UserError("refused"))
        ):
            pass
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in existing.iterdir()} == before

    with locked_output_dir(str(created)) as lock:  # a run that writes keeps its folder
        assert lock.held
        (created / "log.txt").write_text("ran")
    assert [p.name for p in created.iterdir()] == ["log.txt"]


def test_a_folder_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(
        RunLockError, match=f"cannot lock OUTPUT_DIR {blocker}/out .*a folder this user can write"
    ):
        RunLock(str(blocker / "out")).acquire()


def test_a_file_system_without_locks_runs_with_a_warning(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with captured_log("detnas_d2.run_lock") as log:
        with RunLock(str(tmp_path)) as lock:
            assert (
                lock.held and json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
            )
    assert "this file system has no file locks (No locks available)" in log.getvalue()
    assert not (tmp_path / LOCK_FILE).exists()
