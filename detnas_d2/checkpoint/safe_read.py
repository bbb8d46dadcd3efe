"""Reading a checkpoint file without running code from it.

Every file is read with `torch.load(weights_only=True)`; the types that MMRazor / mmengine / mmcv files
need besides tensors (numpy scalars, arrays and dtypes; mmengine's `HistoryBuffer`, read as an inert
placeholder) are an explicit allow-list, and a file that asks for anything else is refused with the names
of the types it asked for. Pickle `.pkl` files (Detectron2 / Caffe2 model zoo) are read only with
`DETNAS_ALLOW_PICKLE=1`, and then with an unpickler that builds numpy arrays and nothing else; `.pkl`
files written by torch.save (the official DetNAS ImageNet models) are read as such.
"""

import collections
import importlib
import io
import os
import pickle
from typing import Optional

import numpy as np
import torch
from detectron2.utils.file_io import PathManager

__all__ = ["ALLOW_PICKLE_ENV", "SAFE_GLOBALS", "RefusedCheckpointError", "read_checkpoint"]

ALLOW_PICKLE_ENV = "DETNAS_ALLOW_PICKLE"
# A torch.save file: zip archive, or the legacy format that starts with a pickled magic number.
_TORCH_FILE_STARTS = (
    b"PK\x03\x04",
    pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1],
)


class RefusedCheckpointError(RuntimeError):
    """A checkpoint that cannot be read without running code it names (or a pickle file not opted into)."""


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


def _read_pickle(filename: str, allow_pickle: Optional[bool]):
    if not _pickle_allowed(allow_pickle):
        raise RefusedCheckpointError(
            f"{filename} is a pickle file (.pkl, the Detectron2 / Caffe2 model-zoo format). Unpickling can run "
            f"any code the file names, so detnas-d2 reads it only if you trust it and say so: set "
            f"{ALLOW_PICKLE_ENV}=1. Even then only numpy arrays and plain containers are built. Weights saved "
            "with torch.save need no such flag."
        )
    with PathManager.open(filename, "rb") as f:
        return _NumpyOnlyUnpickler(f, filename).load()


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


def read_checkpoint(filename: str, allow_pickle: Optional[bool] = None):
    """The object in a checkpoint file, read without running code from it (module doc). `.pkl` files need
    `allow_pickle` (default: the DETNAS_ALLOW_PICKLE environment variable), unless torch.save wrote them
    (the official DetNAS ImageNet models are such files)."""
    with PathManager.open(filename, "rb") as f:
        data = f.read()
    if filename.endswith(".pkl") and not data.startswith(_TORCH_FILE_STARTS):
        return _read_pickle(filename, allow_pickle)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # a type the weights-only unpickler does not build
            raise _refusal(filename, data, e) from None
        raise
