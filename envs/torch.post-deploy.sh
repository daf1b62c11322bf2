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
# The build cd's into the unpacked sdist: resolve the interpreter to an absolute path first.
case "$PY" in
    /*) ;;
    */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;;
    *) PY=$(command -v "$PY") ;;
esac
[ -x "$PY" ] || { echo "ERROR: Python interpreter '$PY' not found or not executable" >&2; exit 1; }
install() {
    "$PY" -m pip install --quiet --no-deps "$1" "${OPENMMLAB_PINS[@]}"
    echo "installed $1 ${OPENMMLAB_PINS[*]}" >&2
}
cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/lesioncl/wheels
torch_version=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# Build the CUDA kernels when nvcc is available (GPU environments), unless told not to.
if [ -z "${FORCE_CUDA:-}" ]; then
    FORCE_CUDA=0
    command -v nvcc >/dev/null 2>&1 && "$PY" -c 'import torch,sys; sys.exit(not torch.version.cuda)' && FORCE_CUDA=1
fi
if [ "$FORCE_CUDA" = "1" ]; then
    # CUDA ops: check the toolchain before an hour-long build and tell torch where it is.
    cuda_fail() { echo "ERROR (FORCE_CUDA=1): $*; or set FORCE_CUDA=0 to build mmcv's CPU ops only" >&2; exit 1; }
    command -v nvcc >/dev/null 2>&1 ||
        cuda_fail "nvcc is not on the PATH: install the CUDA compiler matching torch's CUDA (conda: cuda-nvcc, cuda-cudart-dev)"
    torch_cuda=$("$PY" -c 'import torch; print(torch.version.cuda or "")')
    [ -n "$torch_cuda" ] || cuda_fail "torch $torch_version is a CPU-only build: install a CUDA build of torch"
    nvcc_cuda=$(nvcc --version | sed -n 's/.*release \([0-9][0-9.]*\),.*/\1/p')
    [ "${nvcc_cuda%%.*}" = "${torch_cuda%%.*}" ] ||
        cuda_fail "nvcc is CUDA ${nvcc_cuda:-?} but torch was built with CUDA $torch_cuda: install nvcc $torch_cuda"
    # torch takes CUDA_HOME to be nvcc's grandparent folder, wrong when the nvcc on the PATH
    # is a wrapper script or a link (e.g. /usr/local/bin/nvcc): ask nvcc where its toolkit is.
    if [ -z "${CUDA_HOME:-}" ]; then
        top=$(nvcc --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
        { [ -n "$top" ] && [ -d "$top" ]; } || cuda_fail "cannot find the CUDA toolkit of $(command -v nvcc): set CUDA_HOME"
        CUDA_HOME=$(cd "$top" && pwd -P)
    fi
    [ -f "$CUDA_HOME/include/cuda_runtime.h" ] || [ -f "$CUDA_HOME/targets/$(uname -m)-linux/include/cuda_runtime.h" ] ||
        cuda_fail "CUDA_HOME=$CUDA_HOME has no include/cuda_runtime.h (conda: add cuda-cudart-dev): set CUDA_HOME to the toolkit"
    export CUDA_HOME
    # torch's CUDA headers include the math libraries' (cusparse.h, cublas_v2.h, ...), which a
    # minimal toolkit (nvcc + cudart) lacks; torch's nvidia-* wheels ship them: put those
    # folders on CPATH, which gcc and nvcc's preprocessing read.
    cuda_header() { [ -f "$CUDA_HOME/include/$1" ] || [ -f "$CUDA_HOME/targets/$(uname -m)-linux/include/$1" ]; }
    missing=""
    for header in cusparse.h cublas_v2.h cublasLt.h cusolverDn.h; do cuda_header "$header" || missing="$missing $header"; done
    if [ -n "$missing" ]; then
        # shellcheck disable=SC2086  # one argument per header
        wheel_includes=$("$PY" - $missing <<'PYTHON'
import glob, os, sys
try:
    import nvidia  # the namespace package of torch's nvidia-* wheels
except ImportError:
    sys.exit()
folders = []
for name in sys.argv[1:]:
    hits = [h for base in nvidia.__path__ for h in sorted(glob.glob(os.path.join(base, "**", "include", name), recursive=True))]
    if hits and os.path.dirname(hits[0]) not in folders:
        folders.append(os.path.dirname(hits[0]))
    if not hits:
        sys.exit(f"no {name}")
print(os.pathsep.join(folders))
PYTHON
        ) || wheel_includes=""
        [ -n "$wheel_includes" ] || cuda_fail "neither CUDA_HOME=$CUDA_HOME nor torch's nvidia-* wheels hold$missing: install the CUDA math libraries' headers (conda: libcublas-dev, libcusparse-dev, libcusolver-dev)"
        export CPATH="$wheel_includes${CPATH:+:$CPATH}"
        echo "headers$missing: not in CUDA_HOME, taken from torch's nvidia wheels ($wheel_includes)" >&2
    fi
    # The GPUs to compile for: the visible ones, else every architecture torch was built for
    # (several times longer): name yours, e.g. TORCH_CUDA_ARCH_LIST="9.0" for an H100/H200.
    if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
        TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch
if torch.cuda.is_available():
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    print(";".join(f"{a}.{b}" for a, b in sorted(caps)))
else:
    print(";".join(f"{a[3:-1]}.{a[-1]}" for a in torch.cuda.get_arch_list() if a.startswith("sm_") and a[3:].isdigit()))')
        echo "TORCH_CUDA_ARCH_LIST is not set: building the CUDA ops for $TORCH_CUDA_ARCH_LIST" >&2
    fi
    export TORCH_CUDA_ARCH_LIST
    echo "CUDA ops: nvcc $nvcc_cuda, torch CUDA $torch_cuda, CUDA_HOME=$CUDA_HOME, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" >&2
fi
flavour=cpu
[ "$FORCE_CUDA" = "1" ] && flavour=cuda${TORCH_CUDA_ARCH_LIST:+-$(echo "$TORCH_CUDA_ARCH_LIST" | tr -c '0-9A-Za-z.\n' '_')}
# The key holds everything that shapes the build: the build part of this script, the build tools' versions,
# torch, Python, machine and flavour. Any change builds a new wheel.
tools=$("$PY" -c 'import importlib.metadata as m; print(" ".join(m.version(p) for p in ("pip", "setuptools", "wheel")))')
build_key=$( { sed -n '/^# ---- mmcv build/,$p' "${BASH_SOURCE[0]}"; echo "$tools"; } | sha256sum | cut -c1-12)
dest="$cache_root/mmcv-$MMCV_VERSION-torch$torch_version-$py_tag-$(uname -m)-$flavour-$build_key"

# LESIONCL_MMCV_PLAN=1: print what would be used and check the interpreter runs from
# another directory (as it must inside the unpacked sdist), then stop (tests).
if [ -n "${LESIONCL_MMCV_PLAN:-}" ]; then
    (cd / && "$PY" -c 'import sys') || { echo "ERROR: $PY does not run from another directory" >&2; exit 1; }
    echo "python=$PY"
    echo "flavour=$flavour"
    echo "wheel_dir=$dest"
    exit 0
fi

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

# ---- mmcv build (everything from here on is part of the wheel's cache key) ----
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
