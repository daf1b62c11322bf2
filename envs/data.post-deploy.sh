#!/usr/bin/env bash
# Install the workflow's own package (lesioncl) into this environment, editable from
# the workflow's checkout, so that every rule's script imports the code of the
# workflow that runs it. Snakemake runs this once after creating envs/data.yaml
# (--use-conda); LESIONCL_ROOT is set by workflow/rules/common.smk to the checkout
# (found from the workflow's own files, whatever the working directory).
# envs/torch.post-deploy.sh ends with the same step.
set -euo pipefail
PY=${PYTHON:-python}
if [ -z "${LESIONCL_ROOT:-}" ] || [ ! -f "$LESIONCL_ROOT/pyproject.toml" ]; then
    echo "ERROR: LESIONCL_ROOT='${LESIONCL_ROOT:-}' is not the lesioncl checkout (no pyproject.toml);" \
        "create this environment through the workflow (snakemake --use-conda --conda-create-envs-only)" >&2
    exit 1
fi
"$PY" -m pip install --quiet --no-deps --no-build-isolation --editable "$LESIONCL_ROOT"
"$PY" -c 'import lesioncl, sys; print("lesioncl", lesioncl.__version__, "from", lesioncl.__file__, file=sys.stderr)'
