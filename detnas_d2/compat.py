"""Shims for running Detectron2 v0.6's Python sources on current torch and Pillow.

This module is the one place that says what detnas-d2 patches in Detectron2 at run time, why, and when each
shim goes. `apply()` runs once when `detnas_d2` is imported and patches only what the installed Detectron2
needs, judged from its sources (never from `__version__`: Detectron2 main still says "0.6"):

1. `detectron2._C` attribute stub. Needed when Detectron2 has no compiled ops (the pb1-detectron2 sdist
   ships none) and its sources import them unguarded: v0.6's layers/deform_conv.py, rotated_boxes.py and
   roi_align_rotated.py do `from detectron2 import _C` at import, and evaluation/coco_evaluation.py imports
   fast_eval_api.py, which does too. The stub is an attribute (a `sys.modules` entry would break
   `collect_env_info`) whose every attribute raises `MissingCompiledOpError` naming the op; DetNAS uses
   none of them. Never set where the imports are guarded: Detectron2 main (its rotated ops call
   `torch.ops.detectron2.*`, and its `COCOEvaluator` falls back to pycocotools only while `_C` is absent,
   which a stub would defeat) and the v0.6 copy that tools/install.sh installs (made optional there).
   Goes when Detectron2 > 0.6 is the minimum, or Detectron2 is built with its C++ part.
2. `PIL.Image.LINEAR`: removed in Pillow 10, still the default `interp` of v0.6's
   data/transforms/transform.py (`ExtentTransform`), evaluated when the module is imported. Aliased to
   `Image.BILINEAR` (its value before Pillow 10) only if that source still names it and Pillow lacks it.
   Goes when Detectron2 > 0.6 (fixed upstream) is the minimum.
3. `numpy.str`: removed in NumPy 1.24, still the dtype v0.6's data/datasets/pascal_voc.py reads VOC
   image-set files with (`load_voc_instances`), so no Pascal VOC split loads. Aliased to the builtin
   `str` (what it was) only if that source names it and NumPy lacks it. It is read when a VOC dataset is
   loaded, long after `import detnas_d2`, so the import order does not matter for it. Goes when
   Detectron2 > 0.6 (fixed upstream: `dtype=str`) is the minimum.

These shims cover `import detnas_d2` before any Detectron2 module that needs them. For *any* import order,
the sources themselves must not need shims 1 and 2: tools/install.sh applies both fixes to the v0.6
sources it installs (see `needs_c_stub` / `needs_linear_alias` for what is checked), and Detectron2 main
needs neither.
"""

import ast
import importlib.util
import re
import types
from pathlib import Path
from typing import Iterable, Optional, Set

__all__ = [
    "MissingCompiledOpError",
    "apply",
    "has_compiled_ops",
    "needs_c_stub",
    "needs_linear_alias",
    "needs_numpy_str_alias",
    "unguarded_c_imports",
    "uses_image_linear",
    "uses_numpy_str",
]

# Sources (relative to the detectron2 package) whose module-level `_C` imports run when
# `detectron2.layers` / `detectron2.evaluation` are imported, and the modules they import that may in turn.
_C_IMPORTERS = {
    "layers/deform_conv.py": (),
    "layers/rotated_boxes.py": (),
    "layers/roi_align_rotated.py": (),
    "evaluation/coco_evaluation.py": ("detectron2.evaluation.fast_eval_api",),
}
_LINEAR_USER = "data/transforms/transform.py"
_NUMPY_STR_USER = "data/datasets/pascal_voc.py"


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


def _detectron2_dir() -> Optional[Path]:
    """The detectron2 package folder, found without importing anything under it."""
    try:
        spec = importlib.util.find_spec("detectron2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _has_compiled_ops() -> bool:
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def _guarded(node_stack) -> bool:
    """Whether an import sits inside a `try` whose handlers catch ImportError (or everything)."""
    for node in node_stack:
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                names = []
                if handler.type is None:
                    return True
                for t in (
                    handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                ):
                    names.append(getattr(t, "id", getattr(t, "attr", "")))
                if {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"} & set(
                    names
                ):
                    return True
    return False


def _module_level_imports(source: str, package: str) -> Iterable[tuple]:
    """(absolute module or `module.name`, guarded) for every import run when the module is imported
    (module body, including `if`/`try` blocks; not function or class bodies)."""
    tree = ast.parse(source)

    def walk(body, stack):
        for node in body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, _guarded(stack)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                yield base, _guarded(stack)
                for alias in node.names:
                    yield f"{base}.{alias.name}", _guarded(stack)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []):
                        yield from walk(
                            child.body if isinstance(child, ast.ExceptHandler) else [child],
                            stack + [node],
                        )

    yield from walk(tree.body, [])


def _read(root: Path, relative: str) -> Optional[str]:
    try:
        return (root / relative).read_text(encoding="utf-8")
    except OSError:
        return None


def unguarded_c_imports(root: Optional[Path] = None) -> Set[str]:
    """Sources of the installed Detectron2 (relative paths) that import `detectron2._C` unguarded when
    `detectron2.layers` or `detectron2.evaluation` is imported: these fail without the compiled ops."""
    root = root or _detectron2_dir()
    if root is None:
        return set()
    found = set()
    for relative, follow in _C_IMPORTERS.items():
        source = _read(root, relative)
        if source is None:
            continue
        package = "detectron2." + relative.rsplit("/", 1)[0].replace("/", ".")
        imports = list(_module_level_imports(source, package))
        if any(name == "detectron2._C" and not guarded for name, guarded in imports):
            found.add(relative)
        for module in follow:  # an unguarded import of a module that imports _C unguarded
            if any(name == module and not guarded for name, guarded in imports):
                sub = module[len("detectron2.") :].replace(".", "/") + ".py"
                sub_source = _read(root, sub)
                sub_package = module.rsplit(".", 1)[0]
                if sub_source and any(
                    name == "detectron2._C" and not guarded
                    for name, guarded in _module_level_imports(sub_source, sub_package)
                ):
                    found.add(relative)
    return found


def needs_c_stub(root: Optional[Path] = None) -> bool:
    """Whether importing detectron2.layers / .evaluation would fail for want of `detectron2._C`."""
    if _has_compiled_ops():
        return False
    return bool(unguarded_c_imports(root))


def uses_image_linear(root: Optional[Path] = None) -> bool:
    """Whether the installed Detectron2's transform source names `Image.LINEAR` (gone in Pillow 10)."""
    root = root or _detectron2_dir()
    source = _read(root, _LINEAR_USER) if root is not None else None
    return bool(source and re.search(r"\bImage\.LINEAR\b", source))


def needs_linear_alias(root: Optional[Path] = None) -> bool:
    """Whether Detectron2's transform source uses `Image.LINEAR` and the installed Pillow lacks it."""
    from PIL import Image

    return not hasattr(Image, "LINEAR") and uses_image_linear(root)


def uses_numpy_str(root: Optional[Path] = None) -> bool:
    """Whether the installed Detectron2's VOC loader names `np.str` (gone in NumPy 1.24)."""
    root = root or _detectron2_dir()
    source = _read(root, _NUMPY_STR_USER) if root is not None else None
    return bool(source and re.search(r"\bnp\.str\b", source))


def needs_numpy_str_alias(root: Optional[Path] = None) -> bool:
    """Whether Detectron2's VOC loader uses `np.str` and the installed NumPy lacks it."""
    import numpy

    return "str" not in vars(numpy) and uses_numpy_str(root)


def apply():
    import detectron2
    from PIL import Image

    if not hasattr(detectron2, "_C") and needs_c_stub():
        detectron2._C = _MissingCompiledOps("detectron2._C")
    if needs_linear_alias():
        Image.LINEAR = Image.BILINEAR
    if needs_numpy_str_alias():
        import numpy

        numpy.str = str


def has_compiled_ops() -> bool:
    """Whether the real compiled ops are present (e.g. for COCOEvaluator's fast path)."""
    import detectron2

    return (
        not isinstance(getattr(detectron2, "_C", None), _MissingCompiledOps) and _has_compiled_ops()
    )
