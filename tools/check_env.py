"""Check that the current Python environment runs detnas-d2; exit 1 naming what is missing.

Used by tools/install.sh (a complete environment is left untouched) and handy on its own:
    python tools/check_env.py [--only torch] [--quiet]
"""
import argparse
import ast
import importlib
import importlib.metadata as md
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def check_detectron2():
    import detectron2

    import detnas_d2  # noqa: F401  (applies detnas_d2.compat)

    for mod in ("detectron2.modeling", "detectron2.engine", "detectron2.evaluation", "detectron2.data"):
        importlib.import_module(mod)
    return f"detectron2 {detectron2.__version__} at {Path(detectron2.__file__).parent}"


def check_project():
    import detnas_d2

    where = Path(detnas_d2.__file__).resolve().parents[1]
    if where != ROOT:
        raise RuntimeError(f"detnas_d2 is imported from {where}, not from this checkout {ROOT}")
    return f"detnas_d2 (editable) at {where}"


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
    args = parser.parse_args()
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
