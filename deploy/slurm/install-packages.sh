#!/bin/bash
# Installs Debian's slurm-wlm and munge for tests/test_slurm.py (a one-node SLURM cluster), as root and only when
# sbatch is missing. Never fails: without the packages the SLURM tests skip with their reason.
# `make test` runs it when SFTL_INSTALL_SLURM=1 (as .ci/run sets).
if [ "$(id -u)" != 0 ] || command -v sbatch >/dev/null 2>&1; then
    exit 0
fi
apt_log=$(mktemp)
if { timeout 600 apt-get update -q && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q slurm-wlm munge; } \
        >"$apt_log" 2>&1; then
    echo "installed slurm-wlm and munge for tests/test_slurm.py"
else
    echo "could not install slurm-wlm and munge (tests/test_slurm.py will skip):" >&2
    tail -n 5 "$apt_log" >&2 || true
fi
rm -f "$apt_log"
exit 0
