"""File writing and reading shared by the project: one atomic write for every file it rewrites (search
state, arch files, tables, logs), one reader of JSON-lines files (score files, a search's candidates.jsonl)."""

import json
import logging
import os
import shutil
from typing import Callable, List

from detectron2.utils.file_io import PathManager

__all__ = ["atomic_write", "read_json_lines"]

logger = logging.getLogger(__name__)


def atomic_write(path: str, data, backup: bool = False):
    """Write `data` (str or bytes) to `path` so that a reader sees the old file or the new one, never a
    part: a temp file in the same folder, fsync, then `os.replace`. With `backup`, the file it replaces is
    kept as `<path>.bak` (itself replaced atomically). Remote PathManager URIs are written directly."""
    mode = "wb" if isinstance(data, bytes) else "w"
    if "://" in path and not path.startswith("file://"):
        with PathManager.open(path, mode) as f:
            f.write(data)
        return
    local = PathManager.get_local_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(local)), exist_ok=True)
    tmp = f"{local}.tmp{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if backup and os.path.exists(local):  # `local` itself never goes missing
            shutil.copyfile(local, tmp + ".bak")
            os.replace(tmp + ".bak", local + ".bak")
        os.replace(tmp, local)
    finally:
        for leftover in (tmp, tmp + ".bak"):
            if os.path.exists(leftover):
                os.unlink(leftover)


def read_json_lines(
    path, repair: bool = False, log: Callable[[str], None] = logger.warning
) -> List:
    """The records of a JSON-lines file, one per line ([] if there is no file; blank lines skipped). A last
    line cut short (a writer killed mid-line) is dropped, which `log` reports, and with `repair` the file is
    rewritten without it; any other line that is not JSON is a ValueError naming the file and line."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read()
    lines = text.split("\n")
    records, kept = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
            kept.append(line)
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[i + 1 :]):
                raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:80]!r}") from None
            log(f"{path}: the last line was cut short (a run stopped while writing it): dropped")
    if repair and "".join(line + "\n" for line in kept) != text:
        atomic_write(str(path), "".join(line + "\n" for line in kept))
    return records
