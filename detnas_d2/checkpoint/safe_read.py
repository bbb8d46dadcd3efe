"""Reading a checkpoint file without running code from it.

Every file is read with `torch.load(weights_only=True)`; the types that MMRazor / mmengine / mmcv files
need besides tensors (numpy scalars, arrays and dtypes; mmengine's `HistoryBuffer`, read as an inert
placeholder) are an explicit allow-list, and a file that asks for anything else is refused with the names
of the types it asked for. Pickle `.pkl` files (Detectron2 / Caffe2 model zoo) are read only with
`DETNAS_ALLOW_PICKLE=1`, and then with an unpickler that builds numpy arrays and nothing else; `.pkl`
files written by torch.save (the official DetNAS ImageNet models) are read as such.

A file that is no checkpoint (missing, a folder, empty, text, a Git LFS pointer, an HTML page, another
binary format) or a damaged one (a truncated zip archive) is an `UnreadableCheckpointError` saying which.
"""

import collections
import importlib
import io
import os
import pickle
from typing import Optional, Tuple

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

from ..user_errors import UserError

__all__ = [
    "ALLOW_PICKLE_ENV",
    "SAFE_GLOBALS",
    "CheckpointError",
    "RefusedCheckpointError",
    "UnreadableCheckpointError",
    "read_checkpoint",
    "require_local_file",
]

ALLOW_PICKLE_ENV = "DETNAS_ALLOW_PICKLE"
# A torch.save file: zip archive, or the legacy format that starts with a pickled magic number.
_TORCH_FILE_STARTS = (
    b"PK\x03\x04",
    pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1],
)
_PICKLE_START = b"\x80"  # the PROTO opcode that pickles of protocol 2 and later start with


class CheckpointError(UserError):
    """A checkpoint file that cannot be used as asked; the message names the file, the problem and the fix."""


class RefusedCheckpointError(CheckpointError):
    """A checkpoint that cannot be read without running code it names (or a pickle file not opted into)."""


class UnreadableCheckpointError(CheckpointError):
    """A file that is not a checkpoint, or a damaged one."""


_np_multiarray = importlib.import_module(
    "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
)


class _InertObject:
    """Stands in for a class of a training framework found in a checkpoint's bookkeeping (e.g. mmengine's
    HistoryBuffer in `message_hub`): built without running any of that framework's code, never used."""

    def __setstate__(self, state):
        self.state = state


def _numpy_globals():
    """(object, name in the file) pairs that numpy arrays, scalars and dtypes pickle as, numpy 1.x and 2.x."""
    pairs = []
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        pairs.append((_np_multiarray.scalar, f"{module}.scalar"))
        pairs.append((_np_multiarray._reconstruct, f"{module}._reconstruct"))
    pairs += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for code in "?bBhHiIlLqQefdgFDG":
        cls = type(np.dtype(code))
        pairs.append((cls, f"{cls.__module__}.{cls.__qualname__}"))
    return pairs


# What a checkpoint may ask for besides tensors and plain containers. Nothing here runs code of the file:
# numpy rebuilds arrays/scalars from bytes; _InertObject only stores its state.
SAFE_GLOBALS = _numpy_globals() + [
    (_InertObject, "mmengine.logging.history_buffer.HistoryBuffer"),
]
_PICKLE_GLOBALS = {name: obj for obj, name in SAFE_GLOBALS if obj is not _InertObject}
_PICKLE_GLOBALS["collections.OrderedDict"] = collections.OrderedDict


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Reads a Detectron2 / Caffe2 model-zoo `.pkl` (dicts of numpy arrays) and nothing else."""

    def __init__(self, file, filename):
        super().__init__(file, encoding="latin1")
        self._filename = filename

    def find_class(self, module, name):
        obj = _PICKLE_GLOBALS.get(f"{module}.{name}")
        if obj is None:
            raise RefusedCheckpointError(
                f"{self._filename}: refused: the pickle asks for '{module}.{name}', which is not a numpy array "
                f"type or plain container; reading it would run that code. Allowed: {sorted(_PICKLE_GLOBALS)}"
            )
        return obj


def _pickle_allowed(allow_pickle: Optional[bool]) -> bool:
    if allow_pickle is not None:
        return allow_pickle
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def _read_pickle(filename: str, data: bytes, allow_pickle: Optional[bool]):
    if not _pickle_allowed(allow_pickle):
        raise RefusedCheckpointError(
            f"{filename} is a pickle file (.pkl, the Detectron2 / Caffe2 model-zoo format). Unpickling can run "
            f"any code the file names, so detnas-d2 reads it only if you trust it and say so: set "
            f"{ALLOW_PICKLE_ENV}=1. Even then only numpy arrays and plain containers are built. Weights saved "
            "with torch.save need no such flag."
        )
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), filename).load()
    except RefusedCheckpointError:
        raise
    except Exception as e:  # a damaged pickle fails anywhere inside the unpickler
        raise _unreadable(filename, data, e) from None


def _refusal(filename: str, data: bytes, error: Exception) -> RefusedCheckpointError:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # an old-format file: the unpickler's message names the first one
        names = []
    allowed = {name for _, name in SAFE_GLOBALS}
    names = [n for n in names if n not in allowed]
    asked = ", ".join(f"'{n}'" for n in names) if names else f"a type not allowed ({error})"
    return RefusedCheckpointError(
        f"{filename}: refused: reading it would run code named in the file: it asks for {asked}. "
        "Checkpoints are read with torch.load(weights_only=True): tensors, plain containers and numbers, plus "
        "numpy arrays/scalars and mmengine's HistoryBuffer as data. If you trust the file, load it in its own "
        "framework and save its state dict alone (torch.save(ckpt['state_dict'], path))."
    )


_AGAIN = "save it again with torch.save, or copy or download it again"


def _text_start(data: bytes) -> Optional[str]:
    """The file's first characters if it starts as UTF-8 text, else None."""
    head = data[:512]
    for cut in range(4):  # the 512th byte may fall inside a character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return text if all(c.isprintable() or c.isspace() for c in text) else None
    return None


def _what_the_file_is(data: bytes) -> Tuple[str, str]:
    """(what a file that torch.load cannot read holds, from its first bytes; the fix)."""
    size = f"{len(data)} bytes"
    if not data:
        return "it is empty (0 bytes: a save, copy or download that did not finish?)", _AGAIN
    if data.startswith(_TORCH_FILE_STARTS):
        return f"it is a damaged torch.save file ({size}: truncated?)", _AGAIN
    if data.startswith(b"PK"):
        return f"it is a zip archive but not one torch.save wrote ({size})", _AGAIN
    if data.startswith(_PICKLE_START):
        return f"it is a damaged pickle or one torch.save did not write ({size})", _AGAIN
    if data.startswith(b"version https://git-lfs"):
        return (
            "it is a Git LFS pointer, not the file it points to",
            "run `git lfs pull` in its repository",
        )
    if len(data) > 10 and data[8:10] == b'{"' and int.from_bytes(data[:8], "little") < len(data):
        return (
            "it is a safetensors file, which is not read here",
            "convert it: torch.save(safetensors.torch.load_file(path), new_path)",
        )
    text = _text_start(data)
    if text is not None:
        if text.lstrip().lower().startswith(("<!doctype html", "<html")):
            return (
                "it is an HTML page (a download that returned an error page?)",
                "download it again",
            )
        first = text.strip().splitlines()[0][:60] if text.strip() else ""
        return f"it is a text file (it starts with {first!r})", _AGAIN
    what = f"it is neither a torch.save file (a zip archive) nor a pickle ({size}, starting {data[:8].hex(' ')})"
    return what, _AGAIN


def _unreadable(
    filename: str, data: bytes, error: Optional[Exception] = None
) -> UnreadableCheckpointError:
    what, fix = _what_the_file_is(data)
    if error is not None:  # the reader's own words, first sentence: what it choked on
        reason = str(error).strip().split("\n")[0].split(". ")[0][:160]
        what += f" ({type(error).__name__}: {reason})" if reason else f" ({type(error).__name__})"
    return UnreadableCheckpointError(f"{filename} cannot be read as a checkpoint: {what}; {fix}")


def require_local_file(filename: str, fix: str = "; check the path") -> None:
    """UnreadableCheckpointError for a local path that is not a file (URLs pass): missing (`fix` says
    what to do) or a folder."""
    if "://" in filename or os.path.isfile(filename):
        return
    if os.path.isdir(filename):
        raise UnreadableCheckpointError(
            f"{filename} cannot be read as a checkpoint: it is a folder; give a checkpoint file in it "
            "(e.g. model_final.pth)"
        )
    raise UnreadableCheckpointError(f"{filename}: no such checkpoint file{fix}")


def _read_bytes(filename: str) -> bytes:
    require_local_file(filename)
    with PathManager.open(filename, "rb") as f:
        return f.read()


def read_checkpoint(filename: str, allow_pickle: Optional[bool] = None):
    """The object in a checkpoint file, read without running code from it (module doc). `.pkl` files need
    `allow_pickle` (default: the DETNAS_ALLOW_PICKLE environment variable), unless torch.save wrote them
    (the official DetNAS ImageNet models are such files). A file that is no checkpoint or a damaged one:
    UnreadableCheckpointError naming what it is."""
    data = _read_bytes(filename)
    is_torch_file = data.startswith(_TORCH_FILE_STARTS)
    if filename.endswith(".pkl") and not is_torch_file and data.startswith(_PICKLE_START):
        return _read_pickle(filename, data, allow_pickle)
    if not is_torch_file:
        # torch.load reads nothing else; its own errors for such files mislead (e.g. advising
        # weights_only=False for random bytes)
        raise _unreadable(filename, data)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if (
            "unsupported global" in str(e).lower()
        ):  # a type the weights-only unpickler does not build
            raise _refusal(filename, data, e) from None
        raise _unreadable(filename, data, e) from None
    except Exception as e:  # a damaged file fails anywhere inside torch.load
        raise _unreadable(filename, data, e) from None
