#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost for the `slurm` tests: munged, MariaDB,
# slurmdbd (accounting: the SLURM executor plugin checks job status with sacct, as on a
# production cluster), slurmctld and slurmd. Needs root and Debian; idempotent.
#
#     bash .ci/slurm_up.sh     # install if missing, configure, start, wait for the idle node
#     bash .ci/slurm_down.sh   # stop every daemon it started
#
# slurm.conf goes to /etc/slurm/slurm.conf, not a SLURM_CONF path: the plugin's job step
# clears every SLURM_* variable before its inner srun. Jobs run under account `cgflow-test`
# in partition `debug` (tests/hpc/site/ names both, as a site profile would).
set -euo pipefail

STATE=${CGFLOW_SLURM_STATE:-/tmp/cgflow-slurm}
CLUSTER=cgflowci
HOST=$(hostname)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
DB_PASS=cgflow-ci-only

log() { echo "slurm_up: $*"; }
trap 'echo "slurm_up: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

if [[ $EUID -ne 0 ]]; then
    echo "slurm_up: needs root (installs Debian packages and starts system daemons)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    log "installing slurm-wlm munge slurmdbd mariadb-server"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server >/dev/null
fi

mkdir -p "$STATE"/{ctld,spool,log} /etc/slurm

# munge: the key comes with the package; its socket directory must exist.
if ! pgrep -x munged >/dev/null; then
    [[ -s /etc/munge/munge.key ]] || { mungekey -c -f -k /etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
fi

# MariaDB with the accounting database.
if ! pgrep -x mariadbd >/dev/null; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null
    (mariadbd --user=mysql >"$STATE/log/mariadb.log" 2>&1 &)
    for _ in $(seq 100); do mariadb -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
fi
mariadb <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

install -m 600 /dev/stdin /etc/slurm/slurmdbd.conf <<EOF
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF

cat >/etc/slurm/slurm.conf <<EOF
# Written by cgflow's .ci/slurm_up.sh: a single-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
MpiDefault=none
ReturnToService=2
MinJobAge=300
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
sacctmgr -n -P list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
sacctmgr -n -P list account format=account | grep -qw cgflow-test || sacctmgr -i add account cgflow-test cluster="$CLUSTER" >/dev/null
sacctmgr -n -P list assoc user="$(id -un)" format=account | grep -qw cgflow-test \
    || sacctmgr -i add user "$(id -un)" account=cgflow-test cluster="$CLUSTER" >/dev/null

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 150); do
    [[ "$(sinfo -h -o %T 2>/dev/null)" == idle ]] && { log "node $HOST idle ($CPUS CPUs, $MEM_MB MB), partition debug, account cgflow-test"; exit 0; }
    sleep 0.2
done
echo "slurm_up: node did not become idle; sinfo says: $(sinfo -h -o '%T %E' 2>&1)" >&2
tail -n 20 "$STATE"/log/*.log >&2
exit 1
