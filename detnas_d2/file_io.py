"""One atomic file write for every file the project rewrites (search state, arch files, tables, logs)."""
import os
import shutil

from detectron2.utils.file_io import PathManager

__all__ = ["atomic_write"]


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
