#!/usr/bin/env bash
# Idempotent set-up of the detnas-d2 environment. Re-running it only checks, unless something is missing.
#
# Which Python environment:
#   DETNAS_PYTHON=/path/to/python   use that interpreter's environment;
#   an activated virtualenv or conda env   use it (its working torch/torchvision/detectron2 are kept);
#   otherwise a venv of this checkout at ./.venv (or at $DETNAS_VENV), created with
#   --system-site-packages, so a system-wide working torch or Detectron2 is kept too.
# Each checkout has its own environment: a second clone never runs the first one's code. pip's cache
# keeps a second install fast. A chosen environment elsewhere is linked as ./.venv, so
# `source .venv/bin/activate` re-activates it.
#
# Detectron2: any Detectron2 of your own is kept as it is (`import detnas_d2` first applies the shims of
# detnas_d2/compat.py where it needs them). Otherwise the Python part of pb1-detectron2==0.6 (upstream v0.6
# without its C++ folder) is installed, sha256-checked, with two fixes to its sources so that Detectron2
# and detnas_d2 import in any order (see fix_detectron2_sources below: what, why, when each goes).
# An earlier install of that sdist without the fixes is reinstalled with them.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_SPEC="${DETNAS_TORCH_SPEC:-torch===2.13.0}"          # '===' takes the registry's full build
TORCHVISION_SPEC="${DETNAS_TORCHVISION_SPEC:-torchvision==0.28.0}"
D2_SDIST="pb1-detectron2==0.6"
D2_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

if [[ -n "${DETNAS_PYTHON:-}" ]]; then
  PY="$DETNAS_PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [[ -n "${CONDA_PREFIX:-}" ]]; then
  PY="$CONDA_PREFIX/bin/python"
else
  VENV="${DETNAS_VENV:-$ROOT/.venv}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[install] creating virtualenv $VENV"
    python3 -m venv --system-site-packages "$VENV"
  fi
  PY="$VENV/bin/python"
fi
PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
if [[ "$(readlink -f .venv 2>/dev/null || true)" != "$(readlink -f "$PREFIX")" ]]; then
  # ./.venv is not the chosen environment: link it there (a real folder that is another env is kept).
  if [[ -e .venv && ! -L .venv ]]; then
    echo "[install] ./.venv exists and is not a link; leaving it (environment: $PREFIX)" >&2
  else
    ln -sfn "$PREFIX" .venv
  fi
fi

if "$PY" tools/check_env.py --quiet; then
  echo "[install] environment $PREFIX is complete (nothing installed)"
  exit 0
fi

start=$(date +%s)
PIP=("$PY" -m pip install --disable-pip-version-check)

# 1. torch + torchvision: keep a pair that works, else install the default pair.
if ! "$PY" tools/check_env.py --only torch --quiet; then
  echo "[install] installing $TORCH_SPEC $TORCHVISION_SPEC"
  "${PIP[@]}" "$TORCH_SPEC" "$TORCHVISION_SPEC"
fi

# Two fixes to the v0.6 Python sources in folder $1/detectron2, applied before they are installed. Each
# replaces text that must occur exactly once, and the result is checked with the same source checks that
# detnas_d2/compat.py uses to decide on its shims (so compat applies none to this install).
#  a) Compiled ops optional. v0.6 does `from detectron2 import _C` at import in layers/deform_conv.py,
#     rotated_boxes.py and roi_align_rotated.py, and evaluation/coco_evaluation.py imports
#     fast_eval_api.py, which does the same; the sdist has no `_C`, so `import detectron2.modeling` (or
#     .layers, .evaluation) failed unless `import detnas_d2` had set its stub first. Now the three imports
#     are guarded (using an op raises an error naming it; DetNAS uses none; on CPU DeformConv still runs
#     torchvision's op), and COCOEvaluator falls back to pycocotools' COCOeval without `_C`, as on
#     Detectron2 main. Goes when Detectron2 > 0.6 is the pinned fallback (main has both changes).
#  b) Pillow 10 removed `Image.LINEAR`, the default `interp` of data/transforms/transform.py, evaluated at
#     import, so `import detectron2.data` (or .engine, .evaluation) failed before `import detnas_d2`.
#     Now `Image.BILINEAR` (the value LINEAR had). Goes with Detectron2 > 0.6 (fixed upstream).
fix_detectron2_sources() {
  "$PY" - "$1" "$ROOT/detnas_d2/compat.py" <<'EOF'
import importlib.util, sys
from pathlib import Path

d2 = Path(sys.argv[1]) / "detectron2"
MARK = "# detnas-d2 tools/install.sh:"
LAZY_C = f"""try:  {MARK} compiled ops optional (this Detectron2 has none)
    from detectron2 import _C
except ImportError:

    class _MissingCompiledOps:
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            raise RuntimeError(
                f"detectron2._C.{{name}} is a compiled Detectron2 op, and this Detectron2 was installed "
                "without its C++ part; build Detectron2 from source to use it"
            )

    _C = _MissingCompiledOps()
"""
FIXES = {
    "layers/deform_conv.py": [("from detectron2 import _C\n", LAZY_C)],
    "layers/rotated_boxes.py": [("from detectron2 import _C\n", LAZY_C)],
    "layers/roi_align_rotated.py": [("from detectron2 import _C\n", LAZY_C)],
    "evaluation/coco_evaluation.py": [
        (
            "from detectron2.evaluation.fast_eval_api import COCOeval_opt\n",
            f"try:  {MARK} as on Detectron2 main, the fast path needs the compiled ops\n"
            "    from detectron2.evaluation.fast_eval_api import COCOeval_opt\n"
            "except ImportError:\n"
            "    COCOeval_opt = COCOeval\n",
        ),
        (
            "        self._use_fast_impl = use_fast_impl\n",
            f"        if use_fast_impl and COCOeval_opt is COCOeval:  {MARK} as on Detectron2 main\n"
            '            self._logger.info("Fast COCO eval is not built. Falling back to official COCO eval.")\n'
            "            use_fast_impl = False\n"
            "        self._use_fast_impl = use_fast_impl\n",
        ),
    ],
    "data/transforms/transform.py": [
        (
            "    def __init__(self, src_rect, output_size, interp=Image.LINEAR, fill=0):\n",
            f"    {MARK} Pillow 10 dropped LINEAR, an alias of BILINEAR\n"
            "    def __init__(self, src_rect, output_size, interp=Image.BILINEAR, fill=0):\n",
        ),
    ],
}
for relative, replacements in FIXES.items():
    path = d2 / relative
    text = path.read_text()
    if MARK in text:
        continue  # fixed already
    for old, new in replacements:
        starts = [i for i in range(len(text)) if text.startswith(old, i) and (i == 0 or text[i - 1] == "\n")]
        if len(starts) != 1:
            sys.exit(f"[install] {path}: expected the line {old.strip()!r} once, found {len(starts)}; not v0.6?")
        text = text[: starts[0]] + new + text[starts[0] + len(old):]
    path.write_text(text)

spec = importlib.util.spec_from_file_location("detnas_compat", sys.argv[2])
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
left = sorted(compat.unguarded_c_imports(d2)) + (["Image.LINEAR"] if compat.uses_image_linear(d2) else [])
if left:
    sys.exit(f"[install] fixes incomplete, still needed: {left}")
EOF
}

# 2. Detectron2: keep any of your own; else the Python part of the pinned sdist (hash-checked, fixed).
d2_state="$("$PY" tools/check_env.py --detectron2-state)"
if [[ "$d2_state" == "missing" || "$d2_state" == "pb1-unfixed" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "[install] fetching $D2_SDIST"
  # --no-build-isolation: the sdist's setup.py imports torch just to read its metadata.
  "$PY" -m pip download --disable-pip-version-check --no-deps --no-build-isolation -q -d "$tmp" "$D2_SDIST"
  sdist="$(ls "$tmp"/*.tar.gz)"
  echo "$D2_SHA256  $sdist" | sha256sum -c - >/dev/null || {
    echo "[install] sha256 mismatch for $sdist (expected $D2_SHA256)" >&2; exit 1; }
  tar -xzf "$sdist" -C "$tmp"
  src="$(ls -d "$tmp"/pb1-detectron2-*/)"
  echo "[install] fixing its sources: compiled ops optional, Image.LINEAR -> Image.BILINEAR"
  fix_detectron2_sources "$src"
  # Install its Python packages with our own setup script: the sdist ships no C++ sources to build.
  cp tools/detectron2_python_setup.py "$src/setup.py"
  # --force-reinstall: replaces an earlier install of the same version without the fixes.
  "${PIP[@]}" --no-build-isolation --no-deps --force-reinstall "$src"
else
  echo "[install] keeping Detectron2 ($d2_state)"
fi

# 3. The project (editable) with its pure-Python dependencies and test tools.
"${PIP[@]}" --no-build-isolation -e ".[test]"

"$PY" tools/check_env.py
echo "[install] done in $(( $(date +%s) - start ))s; activate with: source $ROOT/.venv/bin/activate"
