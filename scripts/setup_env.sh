#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment with every pinned
# package, including mmcv 2.1.0 built with its CPU ops, and the project itself.
# Idempotent: a stamp file keyed on the requirement files skips work already done.
#
#   VENV=.venv (default)   where the environment lives
#   PYTHON=python3         interpreter used to create it (3.11)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
# Absolute paths: the mmcv build cd's into its unpacked sdist.
case "$VENV" in /*) ;; *) VENV="$here/$VENV" ;; esac

# The pins (torch 2.14.1 wheels, numpy 2.4, ...) are for CPython 3.11.
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "ERROR: '$PYTHON' not found. Install Python 3.11 and rerun, or name it: PYTHON=/path/to/python3.11 make setup" >&2
    exit 1
fi
py_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$py_version" != "3.11" ]; then
    echo "ERROR: $PYTHON is Python $py_version; this project's pins need Python 3.11." >&2
    echo "Install 3.11 (e.g. 'uv python install 3.11', pyenv, or your distribution's python3.11)" >&2
    echo "and rerun with PYTHON=python3.11 make setup (or make demo / make test)." >&2
    exit 1
fi

stamp_key=$(cat requirements/*.txt pyproject.toml scripts/setup_env.sh envs/torch.post-deploy.sh | sha256sum | cut -c1-16)
stamp="$VENV/.lesioncl-installed-$stamp_key"
if [ -f "$stamp" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

pip install --quiet --upgrade "pip==25.3" "setuptools==80.9.0" "wheel==0.45.1"
pip install --quiet -r requirements/base.txt -c requirements/constraints.txt
# mmcv's setup.py imports pkg_resources, which setuptools 81 removed.
"$py" -c 'import pkg_resources' 2>/dev/null || {
    echo "ERROR: setuptools $("$py" -c 'import setuptools; print(setuptools.__version__)') has no pkg_resources; a pin above raised it past 80.9.0" >&2
    exit 1
}
# lesioncl (editable, from this checkout), mmcv (cached build with ops), mmengine, mmdet:
# the same script --use-conda runs.
FORCE_CUDA=${FORCE_CUDA:-0} PYTHON="$py" LESIONCL_ROOT="$here" bash envs/torch.post-deploy.sh

if ! "$py" -c "import mmcv.ops, mmdet, mmengine; from mmcv.ops import nms, RoIAlign" ; then
    echo "ERROR: 'import mmcv.ops' failed: mmcv was installed without its compiled ops." >&2
    echo "Delete the cached wheel under \${XDG_CACHE_HOME:-~/.cache}/lesioncl/wheels and rerun." >&2
    exit 1
fi
# mmcv/mmengine declare opencv-python; opencv-python-headless provides the same cv2.
broken=$("$py" -m pip check 2>&1 | grep -v "requires opencv-python, which is not installed" | grep -v "^No broken" || true)
if [ -n "$broken" ]; then
    echo "ERROR: pip check found broken requirements:" >&2
    echo "$broken" >&2
    exit 1
fi
rm -f "$VENV"/.lesioncl-installed-*
touch "$stamp"
echo "environment ready: $VENV"
