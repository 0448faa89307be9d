#!/usr/bin/env bash
# Stop the test cluster .ci/slurm_up.sh started (jobs first, then the daemons).
set -uo pipefail
command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null
for d in slurmd slurmctld slurmdbd mariadbd munged; do
    pkill -x "$d" 2>/dev/null
done
for _ in $(seq 50); do
    pgrep -x 'slurmd|slurmctld|slurmdbd|mariadbd|munged' >/dev/null || exit 0
    sleep 0.2
done
pkill -9 -x 'slurmd|slurmctld|slurmdbd|mariadbd|munged' 2>/dev/null
exit 0
