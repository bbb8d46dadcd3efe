"""Which detnas_d2 a checkout's scripts run: the root scripts (train_net.py, search_net.py) import the
package beside them; every other script imports the environment's package without touching sys.path, and
tools/check_env.py (so tools/install.sh) refuses an environment whose detnas_d2 is another checkout's."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT_SCRIPTS = ["train_net.py", "search_net.py"]
MARKED_PACKAGE = (
    'import sys\nprint("detnas_d2 imported from", __file__, flush=True)\nsys.exit(17)\n'
)
SYS_PATH_EDIT = re.compile(r"\bsys\.path\s*(\.\s*(insert|append|extend|remove)\b|\+?=|\[)")


def _second_checkout(tmp_path, package=True):
    """A copy of this checkout's scripts (and package), as a second clone would hold them."""
    clone = tmp_path / "second clone"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "configs")
    for folder in ["tools"] + (["detnas_d2", "configs"] if package else []):
        shutil.copytree(
            REPO / folder, clone / folder, ignore=ignore if folder == "detnas_d2" else None
        )
    for name in ROOT_SCRIPTS + ["setup.py"]:
        shutil.copy2(REPO / name, clone / name)
    return clone


@pytest.mark.slow
@pytest.mark.parametrize("script", ROOT_SCRIPTS)
def test_root_scripts_import_their_own_checkouts_package(tmp_path, script):
    clone = _second_checkout(tmp_path, package=False)
    (clone / "detnas_d2").mkdir()
    (clone / "detnas_d2" / "__init__.py").write_text(
        MARKED_PACKAGE
    )  # says where it was imported from
    result = subprocess.run(
        [sys.executable, str(clone / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        result.returncode == 17
        and f"detnas_d2 imported from {clone / 'detnas_d2'}" in result.stdout
    ), (
        f"{script} of a second checkout did not import that checkout's detnas_d2:\n"
        f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
    )


@pytest.mark.slow
def test_check_env_accepts_this_checkout_and_refuses_another(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_env.py"), "--only", "project"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and f"editable) at {REPO}" in result.stdout, (
        result.stdout + result.stderr
    )
    clone = _second_checkout(tmp_path)
    result = subprocess.run(
        [sys.executable, str(clone / "tools" / "check_env.py"), "--only", "project"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"detnas_d2 is imported from {REPO}, not from this checkout {clone}" in result.stderr
    assert "run tools/install.sh in this checkout" in result.stderr


def test_no_script_edits_sys_path():
    """Scripts and tests import the installed package (tests/fixtures is a package under tests/)."""
    edits = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("tools", "benchmarks", "studies", "tests", "detnas_d2")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != Path(__file__)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SYS_PATH_EDIT.search(line)
    ]
    assert not edits, f"sys.path changed at {edits}: import the installed package instead"
