"""One run per output folder: a training or search holds OUTPUT_DIR/.lock for its whole life.

The lock is an exclusive `flock` on OUTPUT_DIR/.lock, taken by the main process of the run (rank 0 of
all machines) before anything is written there; the file names the holder (pid, host, command, start
time). The kernel drops a flock when its process dies, even by SIGKILL, so the lock of a run that was
killed is free: the next run takes it over and says whose it was. A run that finds the lock held by a
live run stops with one line naming that run and the fix. The file is removed when the run ends; a
folder the lock created is removed too if the run wrote nothing else (a refused run leaves the folder
as it found it).
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from typing import Callable, Dict, Optional

from detectron2.utils import comm

from .user_errors import UserError

__all__ = ["LOCK_FILE", "RunLock", "RunLockError", "locked_output_dir"]

LOCK_FILE = ".lock"
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)  # file systems without flock (some NFS)

logger = logging.getLogger(__name__)


class RunLockError(UserError):
    """OUTPUT_DIR is in use by another live run, or cannot be locked."""


def _describe(holder: Dict) -> str:
    if not holder:
        return "a run that has not written its name yet"
    started = holder.get("started")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started)) if started else ""
    command = str(holder.get("command", "?"))
    command = command if len(command) <= 160 else command[:157] + "..."
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{since}: {command}"


def _read_holder(fd: int) -> Dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode("utf-8", "replace").strip()
    if not text:
        return {}
    try:
        holder = json.loads(text)
    except ValueError:
        return {"command": text[:200]}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """The lock on `folder` (module doc). `acquire()` raises RunLockError while another live run holds
    it; `release()` gives it back. `taken_over`: the holder record of a dead run found in the file."""

    def __init__(self, folder: str, command: Optional[str] = None):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_FILE)
        self.command = command if command is not None else " ".join(sys.argv)
        self.taken_over: Dict = {}
        self._fd: Optional[int] = None
        self._created_folder = False

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise RunLockError(f"OUTPUT_DIR {self.folder} is a file: give a folder")
        try:
            self._created_folder = not os.path.isdir(self.folder)
            os.makedirs(self.folder, exist_ok=True)
            while self._fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_holder(fd)
                    os.close(fd)
                    self._remove_created_folder()
                    raise RunLockError(
                        f"OUTPUT_DIR {self.folder} is in use by another run ({_describe(holder)}): "
                        "wait for it to end (or stop it), or give this run another OUTPUT_DIR"
                    ) from None
                except OSError as e:
                    if e.errno not in _NO_LOCKS:
                        os.close(fd)
                        raise
                    logger.warning(
                        f"{self.path}: this file system has no file locks ({e.strerror}): the run "
                        "goes on without the lock, so make sure no other run uses its OUTPUT_DIR"
                    )
                if self._same_file(fd):
                    self._fd = fd
                else:  # its holder removed the file between our open and flock: lock the new one
                    os.close(fd)
            self.taken_over = _read_holder(self._fd)
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": self.command,
                "started": time.time(),
            }
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError as e:
            self.release()
            raise RunLockError(
                f"cannot lock OUTPUT_DIR {self.folder} ({e.strerror or e}): give a folder this user "
                "can write"
            ) from None
        if self.taken_over:
            logger.warning(
                f"{self.path}: taking over the lock of a run that did not end cleanly "
                f"({_describe(self.taken_over)}); it is no longer running"
            )
        return self

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _remove_created_folder(self):
        if self._created_folder:
            with contextlib.suppress(OSError):  # not empty: the run wrote there
                os.rmdir(self.folder)
            self._created_folder = False

    def release(self):
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # while held: a waiting run then locks a new file (_same_file)
            os.close(self._fd)
            self._fd = None
        self._remove_created_folder()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def locked_output_dir(folder: str, check: Optional[Callable[[], None]] = None):
    """Every process of a run: the main process holds the lock on `folder` inside, and first runs
    `check` (the run's refusals of the folder's contents, which must write nothing); the others wait
    for it. If locking or `check` fails, the main process raises the error (the lock given back, the
    folder as it was) and the others leave quietly (SystemExit 0), so the error is reported once."""
    lock = RunLock(folder) if comm.is_main_process() else None
    failure = None
    if lock is not None:
        try:
            lock.acquire()
            if check is not None:
                check()
        except BaseException as e:  # KeyboardInterrupt too: the others must not wait for the lock
            failure = e
            lock.release()
    failed = failure is not None
    if comm.get_world_size() > 1:
        failed = comm.all_gather(failed)[0]
    if failed:
        if failure is not None:
            raise failure
        raise SystemExit(0)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
