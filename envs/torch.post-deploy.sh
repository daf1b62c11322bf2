#!/usr/bin/env bash
# Install the OpenMMLab stack into the active Python environment: mmcv 2.1.0 with
# its compiled ops (built once from the sdist and cached as a wheel), then mmengine
# and mmdet. All three go in with --no-deps: they declare opencv-python, which
# would clash with opencv-python-headless; their real dependencies are pinned in
# envs/torch.yaml and requirements/base.txt.
#
# Used twice: Snakemake runs it after creating envs/torch.yaml (--use-conda), and
# scripts/setup_env.sh runs it for the project's virtual environment. The wheel is
# cached under ${XDG_CACHE_HOME:-~/.cache}/lesioncl/wheels, keyed by torch version,
# Python, machine and CPU/CUDA flavour, so every environment after the first
# installs in seconds.
#
# mmcv 2.1.0 (the last release mmdet 3.3.0 accepts) publishes no wheels for
# recent torch, so we build it from the sdist:
#   * its setup.py imports pkg_resources  -> setuptools<81, --no-build-isolation
#   * recent torch headers need C++20     -> patch -std=c++17 to -std=c++20
#   * CFLAGS without debug info, with -O3 -> ~10 min on 2 cores, 2 MB wheel
# CUDA ops: with nvcc on PATH (conda: cuda-nvcc, matching torch's CUDA) and
# FORCE_CUDA=1, the GPU kernels are built too (set TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0").
set -euo pipefail

MMCV_VERSION=2.1.0
OPENMMLAB_PINS=(mmengine==0.10.7 mmdet==3.3.0)
PY=${PYTHON:-python}
install() {
    "$PY" -m pip install --quiet --no-deps "$1" "${OPENMMLAB_PINS[@]}"
    echo "installed $1 ${OPENMMLAB_PINS[*]}" >&2
}
# The workflow's own package (lesioncl), editable from the workflow's checkout:
# LESIONCL_ROOT is set by workflow/rules/common.smk (--use-conda) and by
# scripts/setup_env.sh. envs/data.post-deploy.sh does the same for envs/data.yaml.
if [ -z "${LESIONCL_ROOT:-}" ] || [ ! -f "$LESIONCL_ROOT/pyproject.toml" ]; then
    echo "ERROR: LESIONCL_ROOT='${LESIONCL_ROOT:-}' is not the lesioncl checkout (no pyproject.toml);" \
        "create this environment through the workflow (snakemake --use-conda --conda-create-envs-only)" >&2
    exit 1
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation --editable "$LESIONCL_ROOT"
echo "installed lesioncl (editable) from $LESIONCL_ROOT" >&2
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/lesioncl/wheels
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# Build the CUDA kernels when nvcc is available (GPU environments), unless told not to.
if [ -z "${FORCE_CUDA:-}" ]; then
    FORCE_CUDA=0
    command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import torch,sys; sys.exit(not torch.version.cuda)' && FORCE_CUDA=1
fi
flavour=cpu
[ "$FORCE_CUDA" = "1" ] && flavour=cuda
dest="$cache_root/mmcv-$MMCV_VERSION-torch$torch_version-$py_tag-$(uname -m)-$flavour"

existing=$(ls "$dest"/mmcv-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$existing" ]; then
    install "$existing"
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
    export MMCV_WITH_OPS=1 FORCE_CUDA
    export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
    export CFLAGS="-DNDEBUG -g0 -fwrapv -O3 -Wall"
    "$PY" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" . >&2
)
mkdir -p "$dest"
cp "$work"/dist/mmcv-*.whl "$dest/"
install "$(ls "$dest"/mmcv-*.whl | head -n 1)"
