"""Child processes that stop with their parent: the launcher's workers, the pipeline's steps, the
rank audit's trainings.

- `start_child` starts a command in its own process group (a Ctrl-C at the terminal reaches this process
  alone, which passes it on; the final SIGKILL reaches everything the command started) and makes it die
  when this process dies, even by SIGKILL (Linux: PR_SET_PDEATHSIG). A worker started by
  multiprocessing calls `exit_with_parent` itself, which elsewhere falls back to a watchdog thread.
- `raising_stop_signals` turns SIGINT / SIGTERM (Ctrl-C, `kill`, `timeout`, SLURM's requeue or cancel)
  into a `Stopped` exception in the main thread; `stop_processes` forwards that signal to the children,
  gives them `STOP_GRACE_S` seconds, then SIGKILLs what is left and reaps it; `resend_signal` then ends
  this process as the signal would have without the handler.
"""

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterable, List, Sequence, Union

__all__ = [
    "STOP_GRACE_S",
    "STOP_SIGNALS",
    "Stopped",
    "exit_with_parent",
    "raising_stop_signals",
    "resend_signal",
    "start_child",
    "stop_children",
    "stop_processes",
    "stop_signal_of",
]

STOP_GRACE_S = 10.0  # below SLURM's default KillWait (30 s) between SIGTERM and SIGKILL
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PR_SET_PDEATHSIG = 1
_ON_LINUX = sys.platform.startswith("linux")

Process = Union[subprocess.Popen, multiprocessing.process.BaseProcess]

logger = logging.getLogger(__name__)
_children: List[subprocess.Popen] = []  # started by start_child (those reaped are dropped)
_children_lock = threading.Lock()


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM received under `raising_stop_signals` (a KeyboardInterrupt, as Ctrl-C's)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def stop_signal_of(error: BaseException) -> int:
    """The signal to pass on to children when `error` stops this process: the one received, SIGINT for
    a plain KeyboardInterrupt (Ctrl-C), else SIGTERM."""
    if isinstance(error, Stopped):
        return error.signum
    return signal.SIGINT if isinstance(error, KeyboardInterrupt) else signal.SIGTERM


@contextlib.contextmanager
def raising_stop_signals():
    """SIGINT and SIGTERM raise `Stopped(signum)` in the main thread while inside; yields the handlers
    they replaced ({signum: handler}; empty outside the main thread, where nothing changes). A signal the
    caller ignores (e.g. SIGINT of a background job) stays ignored."""

    def handler(signum, frame):
        raise Stopped(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
    try:
        yield previous
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def resend_signal(signum: int):
    """End this process as `signum` would have under the handlers now in place (call it after
    `raising_stop_signals` has restored them): the default action dies of it (exit status 128 + signum),
    Python's SIGINT handler raises KeyboardInterrupt; an ignored signal, or a handler that returns, ends
    in SystemExit(128 + signum)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if signal.getsignal(signum) is None:  # a handler not set from Python: act as the default one
        signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    raise SystemExit(128 + signum)


def _libc():
    """The C library (prctl), or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(None, use_errno=True) if _ON_LINUX else None
    except OSError:
        return None


def _die_with_parent(libc, parent_pid: int):
    """In a child of `start_child`, between fork and exec: SIGKILL when the parent dies. Only a C call
    (`libc` was loaded by the parent: loading it here could block on a lock another thread held)."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def start_child(cmd: Sequence[str], **popen_kwargs) -> subprocess.Popen:
    """`subprocess.Popen(cmd, **popen_kwargs)` in a new process group (a Ctrl-C at the terminal reaches
    this process, which stops the child: `stop_processes`), killed when this process dies (on Linux;
    the death of the thread that started it counts, so start it from a thread that waits for it).
    Tracked until reaped, for `stop_children`."""
    parent, libc = os.getpid(), _libc()
    if libc is not None:
        popen_kwargs["preexec_fn"] = lambda: _die_with_parent(libc, parent)
    with _children_lock:
        _children[:] = [c for c in _children if c.returncode is None]  # forget those reaped
        proc = subprocess.Popen(cmd, start_new_session=True, **popen_kwargs)
        _children.append(proc)
    return proc


def stop_children(signum: int = signal.SIGTERM, grace_s: float = STOP_GRACE_S):
    """`stop_processes` on every child of `start_child` not reaped yet (from any thread)."""
    with _children_lock:
        children = [c for c in _children if c.returncode is None]
    stop_processes(children, grace_s, signum)


def _alive(process: Process) -> bool:
    if isinstance(process, subprocess.Popen):
        return process.poll() is None
    return process.is_alive()


def _wait(process: Process, timeout: float = None):
    if isinstance(process, subprocess.Popen):
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    else:
        process.join(timeout)


def _send(process: Process, signum: int, group: bool):
    """`signum` to the process (`group`: to its process group, as start_child makes them)."""
    if process.pid is None or not _alive(process):
        return
    try:
        if group:
            os.killpg(process.pid, signum)
        else:
            os.kill(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _own_group(process: Process) -> bool:
    try:
        return isinstance(process, subprocess.Popen) and os.getpgid(process.pid) == process.pid
    except (ProcessLookupError, AttributeError):
        return False


def stop_processes(processes: Iterable[Process], grace_s: float = STOP_GRACE_S, signum: int = None):
    """Send `signum` (if given) to each process still running, wait up to `grace_s` seconds for all of
    them, then SIGKILL those left (the whole group of a `start_child` child) and reap them.
    `processes`: subprocess.Popen or multiprocessing processes."""
    processes = list(processes)
    groups = {id(p): _own_group(p) for p in processes}
    if signum is not None:
        for process in processes:
            _send(process, signum, group=False)
    deadline = time.monotonic() + grace_s
    for process in processes:
        _wait(process, max(0.0, deadline - time.monotonic()))
    for process in processes:
        if _alive(process):
            logger.warning(
                f"Process {process.pid} still running {grace_s:.0f} s after the stop: SIGKILL"
            )
            _send(process, signal.SIGKILL, group=groups[id(process)])
        _wait(process)


def exit_with_parent(parent_pid: int):
    """Make this process die when `parent_pid` does, even by SIGKILL: on Linux the kernel sends it
    SIGKILL (prctl PR_SET_PDEATHSIG), elsewhere a watchdog thread notices the new parent."""
    libc = _libc()
    try:
        if libc is None or libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError):
        _start_parent_watchdog(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _start_parent_watchdog(parent_pid: int, period_s: float = 1.0):
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        os._exit(1)

    threading.Thread(target=watch, name="detnas-parent-watchdog", daemon=True).start()
