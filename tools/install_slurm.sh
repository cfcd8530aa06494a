#!/usr/bin/env bash
# Installs what the real-Slurm tests (tests/test_slurm.py) start: munge, mariadb (the accounting
# database behind `sacct`, which submitit reads job states from), slurmdbd, slurmctld, slurmd and
# the Slurm client commands. Debian/Ubuntu only; needs root. Idempotent: does nothing when all
# daemons are already installed. Nothing is started or enabled here: the test fixture
# (tests/slurm_cluster.py) starts private daemons with state in a temporary folder.
set -euo pipefail
need=(munged mariadbd slurmdbd slurmctld slurmd sbatch sacct scontrol)
missing=()
for exe in "${need[@]}"; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || missing+=("$exe")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install_slurm: all present (${need[*]})"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_slurm: missing ${missing[*]} and not root: cannot apt-get install" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: missing ${missing[*]} and no apt-get (not Debian/Ubuntu)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d 101: the packages' post-install scripts must not start system-wide daemons.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends munge mariadb-server slurmdbd slurm-wlm slurm-client
echo "install_slurm: installed munge mariadb-server slurmdbd slurm-wlm"
