#!/usr/bin/env bash
# Install a single-node SLURM from Debian's packages: munge (authentication),
# slurmctld (controller), slurmd (node daemon) and slurm-client (sbatch, squeue,
# scancel, sinfo, scontrol). Used by .ci/run so that tests/test_slurm.py runs
# the workflow through a real SLURM; tests/slurm_cluster.py starts the daemons.
#
# Idempotent and quick: when every package is installed it only says so.
# Services are NOT started by the install (a temporary policy-rc.d forbids it):
# the test starts its own daemons with their own configuration and stops them.
# Needs root (or sudo) when something is missing.
set -euo pipefail

packages=(munge slurmctld slurmd slurm-client)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "SLURM packages already installed: ${packages[*]}"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1; then
    as_root() { sudo "$@"; }
else
    echo "ERROR: installing ${missing[*]} needs root (or sudo)." >&2
    exit 1
fi

# Keep the packages' maintainer scripts from starting munge/slurm services.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" = 1 ]; then as_root rm -f "$policy"; fi; }
trap cleanup EXIT

echo "installing SLURM packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
as_root apt-get update -qq
as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for tool in munged slurmctld slurmd sbatch squeue scancel sinfo scontrol; do
    command -v "$tool" >/dev/null || { echo "ERROR: $tool missing after install" >&2; exit 1; }
done
echo "SLURM installed: $(slurmctld -V)"
