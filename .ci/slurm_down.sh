#!/usr/bin/env bash
# Stop the test cluster .ci/slurm_up.sh started (jobs first, then the daemons).
set -uo pipefail
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)
command -v scancel >/dev/null && scancel --user="$(id -un)" 2>/dev/null
for d in "${DAEMONS[@]}"; do pkill -x "$d"; done
running() { for d in "${DAEMONS[@]}"; do pgrep -x "$d" >/dev/null && return 0; done; return 1; }
for _ in $(seq 50); do running || exit 0; sleep 0.2; done
for d in "${DAEMONS[@]}"; do pkill -9 -x "$d"; done
exit 0
