"""The audit's messages on stdout: whole lines, also when concurrent trainings' threads report."""

import threading

__all__ = ["log"]

_lock = threading.Lock()


def log(message: str):
    with _lock:
        print(message, flush=True)
