#!/usr/bin/env bash
# Build (once) and cache a wheel of mmcv 2.1.0 with its compiled ops for the
# torch in the active Python environment, then print the wheel's path.
#
# mmcv 2.1.0 (the last release mmdet 3.3.0 accepts) publishes no wheels for
# recent torch, so we build it from the sdist:
#   * its setup.py imports pkg_resources  -> setuptools<81, --no-build-isolation
#   * recent torch headers need C++20     -> patch -std=c++17 to -std=c++20
#   * CFLAGS without debug info, with -O3 -> ~10 min on 2 cores, 2 MB wheel
# Set FORCE_CUDA=1 (with nvcc and a CUDA torch) to build the CUDA ops instead.
set -euo pipefail

MMCV_VERSION=2.1.0
PY=${PYTHON:-python}
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/lesioncl/wheels
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
flavour=cpu
[ "${FORCE_CUDA:-0}" = "1" ] && flavour=cuda
dest="$cache_root/mmcv-$MMCV_VERSION-torch$torch_version-$py_tag-$(uname -m)-$flavour"

existing=$(ls "$dest"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ]; then
    echo "$existing"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building mmcv $MMCV_VERSION ($flavour ops) for torch $torch_version; this takes ~10 minutes" >&2
"$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
    "mmcv==$MMCV_VERSION" -d "$work" >&2
tar -xzf "$work/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
src="$work/mmcv-$MMCV_VERSION"
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
grep -q -- '-std=c++20' "$src/setup.py" || { echo "mmcv setup.py patch failed" >&2; exit 1; }
(
    cd "$src"
    export MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}"
    export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
    export CFLAGS="-DNDEBUG -g0 -fwrapv -O3 -Wall"
    "$PY" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" . >&2
)
mkdir -p "$dest"
cp "$work"/dist/mmcv-*.whl "$dest/"
ls "$dest"/mmcv-*.whl | head -n 1
