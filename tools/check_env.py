"""Check that the current Python environment runs this checkout's detnas-d2; exit 1 naming what is missing.

Used by tools/install.sh (a complete environment is left untouched) and handy on its own:
    python tools/check_env.py [--only torch] [--quiet]
    python tools/check_env.py --detectron2-state   # missing | own | pb1 | pb1-unfixed (for install.sh)

Runs before detnas_d2 is installed: the checkout is this file's, and everything but the project check
works without the package (detnas_d2/compat.py is loaded on its own).
"""

import argparse
import ast
import importlib
import importlib.metadata as md
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

D2_MODULES = (
    "detectron2.modeling",
    "detectron2.engine",
    "detectron2.evaluation",
    "detectron2.data",
)


def _declared_requirements():
    """INSTALL_REQUIRES and EXTRAS_REQUIRE['test'] as written in setup.py (read, not executed)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("INSTALL_REQUIRES", "TEST_REQUIRES"):
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found.get("INSTALL_REQUIRES", []) + found.get("TEST_REQUIRES", [])


def check_torch():
    import torch
    import torchvision
    from torchvision.ops import nms

    keep = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10]]), torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0], "torchvision.ops.nms gave a wrong result"
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}"


def check_requirements():
    from packaging.requirements import Requirement

    missing = []
    for line in _declared_requirements():
        req = Requirement(line)
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            missing.append(f"{req.name} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (found {version})")
    if missing:
        raise RuntimeError("unmet requirements: " + ", ".join(missing))
    return f"{len(_declared_requirements())} requirements met"


def _compat():
    """detnas_d2/compat.py of this checkout, loaded on its own (no detnas_d2 or Detectron2 imports)."""
    spec = importlib.util.spec_from_file_location(
        "_detnas_compat", ROOT / "detnas_d2" / "compat.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detectron2_state():
    """(state, unfixed sources): 'missing'; 'own' (any Detectron2 not installed from pb1-detectron2, kept
    by install.sh); 'pb1' (pb1-detectron2 0.6 with install.sh's fixes); 'pb1-unfixed' (without them)."""
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return "missing", []
    root = Path(list(spec.submodule_search_locations)[0])
    compat = _compat()
    unfixed = sorted(compat.unguarded_c_imports(root)) + (
        ["Image.LINEAR"] if compat.uses_image_linear(root) else []
    )
    try:
        files = md.distribution("pb1-detectron2").files or []
        from_pb1 = any(
            f.parts[:2] == ("detectron2", "__init__.py") and Path(f.locate()).parent == root
            for f in files
        )
    except md.PackageNotFoundError:
        from_pb1 = False
    if not from_pb1:
        return "own", unfixed
    return ("pb1-unfixed" if unfixed else "pb1"), unfixed


def check_detectron2():
    import detectron2

    where = Path(detectron2.__file__).parent
    state, unfixed = detectron2_state()
    if state == "pb1-unfixed":
        raise RuntimeError(
            f"Detectron2 at {where} is pb1-detectron2 0.6 without install.sh's fixes (still needed: "
            f"{', '.join(unfixed)}), so it imports only after detnas_d2: rerun tools/install.sh"
        )
    _compat().apply()  # as `import detnas_d2` does, where this Detectron2 needs it
    for mod in D2_MODULES:
        importlib.import_module(mod)
    msg = f"detectron2 {detectron2.__version__} at {where}"
    if unfixed:  # a Detectron2 of the user's own that needs the shims
        msg += f" (needs `import detnas_d2` before Detectron2's modules: {', '.join(unfixed)})"
    return msg


def check_project():
    """detnas_d2 is this checkout's (an editable install: the tools run the environment's package) and
    holds its configs (detnas_d2/configs, linked by setup.py)."""
    try:
        import detnas_d2
    except ImportError as e:
        raise RuntimeError(
            f"detnas_d2 is not installed in this environment ({e}): run tools/install.sh"
        ) from None
    package = Path(detnas_d2.__file__).resolve().parent
    if package.parent != ROOT:
        raise RuntimeError(
            f"detnas_d2 is imported from {package.parent}, not from this checkout {ROOT}, so this "
            "checkout's tools would run that code: run tools/install.sh in this checkout"
        )
    if not (package / "configs" / "Toy").is_dir():
        raise RuntimeError(
            f"{package / 'configs'} (the package's configs) is missing: run tools/install.sh "
            "(installing the package links configs/ there)"
        )
    return f"detnas_d2 (editable) at {ROOT}"


CHECKS = {
    "torch": check_torch,
    "requirements": check_requirements,
    "detectron2": check_detectron2,
    "project": check_project,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(CHECKS))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--detectron2-state",
        action="store_true",
        help="print missing|own|pb1|pb1-unfixed (what install.sh does with Detectron2) and exit",
    )
    args = parser.parse_args()
    if args.detectron2_state:
        print(detectron2_state()[0])
        return
    ok = True
    for name, check in CHECKS.items():
        if args.only and name != args.only:
            continue
        try:
            msg = check()
        except Exception as e:  # report every failing check, not only the first
            ok = False
            print(f"[check_env] {name}: MISSING: {type(e).__name__}: {e}", file=sys.stderr)
            if name == "torch" and not args.only:
                break  # everything else needs torch
            continue
        if not args.quiet:
            print(f"[check_env] {name}: ok: {msg}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
