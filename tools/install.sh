#!/usr/bin/env bash
# Idempotent set-up of the detnas-d2 environment. Re-running it only checks, unless something is missing.
#
# Which Python environment:
#   DETNAS_PYTHON=/path/to/python   use that interpreter's environment;
#   an activated virtualenv or conda env   use it (its working torch/torchvision/detectron2 are kept);
#   otherwise a venv at ${DETNAS_VENV:-~/.cache/detnas-d2/venv} (created with --system-site-packages,
#   so a system-wide working torch or Detectron2 is kept too).
# The chosen environment is linked as ./.venv, so `source .venv/bin/activate` re-activates it.
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
  VENV="${DETNAS_VENV:-$HOME/.cache/detnas-d2/venv}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[install] creating virtualenv $VENV"
    python3 -m venv --system-site-packages "$VENV"
  fi
  PY="$VENV/bin/python"
fi
PREFIX="$("$PY" -c 'import sys; print(sys.prefix)')"
if [[ "$(readlink -f .venv 2>/dev/null || true)" != "$(readlink -f "$PREFIX")" ]]; then
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

# 2. Detectron2: keep any importable one, else the Python part of the pinned sdist (hash-checked).
if ! "$PY" -c 'import detectron2' 2>/dev/null; then
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
  # Install its Python packages with our own setup script: the sdist ships no C++ sources to build.
  cp tools/detectron2_python_setup.py "$src/setup.py"
  "${PIP[@]}" --no-build-isolation --no-deps "$src"
fi

# 3. The project (editable) with its pure-Python dependencies and test tools.
"${PIP[@]}" --no-build-isolation -e ".[test]"

"$PY" tools/check_env.py
echo "[install] done in $(( $(date +%s) - start ))s; activate with: source $ROOT/.venv/bin/activate"
