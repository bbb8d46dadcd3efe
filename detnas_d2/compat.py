"""Shims for running Detectron2 v0.6's Python sources on current torch and Pillow.

Applied once when `detnas_d2` is imported, and only where needed. Nothing else is patched.

1. `detectron2._C`: the pb1-detectron2 sdist has no compiled ops, yet layers/deform_conv.py,
   rotated_boxes.py and roi_align_rotated.py do `from detectron2 import _C` at import. We set an
   attribute stub (a `sys.modules` entry would break `collect_env_info`) whose every attribute raises
   an error naming the op. DetNAS uses none of them. Goes when Detectron2 is built with its C++ part.
2. `PIL.Image.LINEAR`: removed in Pillow 10, still a default argument in
   detectron2/data/transforms/transform.py. Aliased to `Image.BILINEAR` (its old value).
   Goes when Detectron2 > 0.6 (fixed upstream) is the minimum.
"""
import importlib.util
import types

__all__ = ["MissingCompiledOpError", "apply"]


class MissingCompiledOpError(RuntimeError):
    pass


class _MissingCompiledOps(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise MissingCompiledOpError(
            f"detectron2._C.{name} is a compiled Detectron2 op, and this Detectron2 was installed "
            "without its C++ part. DetNAS does not need it; build Detectron2 from source to use it."
        )


def _has_compiled_ops():
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def apply():
    import detectron2
    from PIL import Image

    if not hasattr(detectron2, "_C") and not _has_compiled_ops():
        detectron2._C = _MissingCompiledOps("detectron2._C")
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR


def has_compiled_ops():
    """Whether the real compiled ops are present (e.g. for COCOEvaluator's fast path)."""
    import detectron2

    return not isinstance(getattr(detectron2, "_C", None), _MissingCompiledOps) and _has_compiled_ops()
