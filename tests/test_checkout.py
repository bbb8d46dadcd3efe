"""A second checkout's scripts run that checkout's detnas_d2, also with the first checkout's environment
(whose editable install points at the first checkout): never the other checkout's code, silently."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Every script a user runs from a checkout (the two entry points and every tool), with arguments that
# stop right after `import detnas_d2`.
SCRIPTS = [["train_net.py", "--help"], ["search_net.py", "--help"]] + [
    [f"tools/{path.name}", *(["--only", "project"] if path.name == "check_env.py" else ["--help"])]
    for path in sorted((REPO / "tools").glob("*.py"))
    # Not: the setup.py install.sh drops into Detectron2's sdist, and the fixture makers that run MMRazor's
    # code (in a side environment) and the official DetNAS code (from a checkout): they never import
    # detnas_d2.
    if path.name not in ("detectron2_python_setup.py", "make_parity_fixtures.py", "make_official_fixtures.py")
]
MARKED_PACKAGE = 'import sys\nprint("detnas_d2 imported from", __file__, flush=True)\nsys.exit(17)\n'


def _second_checkout(tmp_path, package=True):
    """A copy of this checkout's scripts (and package), as a second clone would hold them."""
    clone = tmp_path / "second clone"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ["tools"] + (["detnas_d2", "configs"] if package else []):
        shutil.copytree(REPO / folder, clone / folder, ignore=ignore)
    for name in ("train_net.py", "search_net.py", "setup.py"):
        shutil.copy2(REPO / name, clone / name)
    return clone


@pytest.mark.parametrize("script", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_scripts_import_their_own_checkouts_package(tmp_path, script):
    clone = _second_checkout(tmp_path, package=False)
    (clone / "detnas_d2").mkdir()
    (clone / "detnas_d2" / "__init__.py").write_text(MARKED_PACKAGE)  # says where it was imported from
    result = subprocess.run([sys.executable, str(clone / script[0]), *script[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 17 and f"detnas_d2 imported from {clone / 'detnas_d2'}" in result.stdout, (
        f"{script[0]} of a second checkout did not import that checkout's detnas_d2:\n"
        f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
    )


def test_check_env_reports_the_second_checkout(tmp_path):
    clone = _second_checkout(tmp_path)
    result = subprocess.run([sys.executable, str(clone / "tools" / "check_env.py"), "--only", "project"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"detnas_d2 at {clone}" in result.stdout
    if str(REPO) != str(clone):  # the environment is the first checkout's: say so
        assert f"editable install is the checkout {REPO}" in result.stdout or "not installed" in result.stdout
