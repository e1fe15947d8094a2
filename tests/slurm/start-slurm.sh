#!/usr/bin/env bash
# start-slurm.sh - bring up the real, throw-away SLURM 22.05 cluster that itwinai-hpc's tests
# submit to (Debian 12, root, no systemd, no cgroups). Adopted from a tested single-machine
# recipe; see README.md here for the gotchas it handles.
# Idempotent: if the cluster in $SLURM_CI_DIR is already up it only re-checks it.
# Logs go to stderr; stdout is one line,   export SLURM_CONF=...   so use:
#   eval "$(bash tests/slurm/start-slurm.sh)"
#
# Knobs (environment):
#   SLURM_CI_DIR=/tmp/itwinai-hpc-slurm  everything (conf, state, spool, logs, munge, pids, db)
#   SLURM_CI_NODES=2            emulated nodes node1..nodeN (one `slurmd -N nodeK` each, same
#                               host); 2 so that a `nodes: 2` step can run. 1 -> one node
#                               named after the host
#   SLURM_CI_CPUS=2             CPUs per node; 2 nodes x 2 lets up to 4 one-CPU jobs run side
#                               by side. Every node binds into the same real cores 0..CPUS-1, so
#                               with binding on it may not exceed the cores this script may use
#                               (tasks on a CPU that does not exist fail: "Unable to layout
#                               tasks"); with SLURM_CI_BIND=none it may (config_overrides)
#   SLURM_CI_BIND=cores         cores: TaskPlugin=task/affinity, tasks bound to cores by default
#                               (TaskPluginParam=Cores), like a real site; none: task/none
#   SLURM_CI_GPUS=4             GPUs per node: gres/gpu without devices (File= aliases of
#                               /dev/null: SLURM 22.05 drops a GPU that has no File=), so
#                               --gpus-per-node and --gres=gpu:N are scheduled for real; 0: none
#   SLURM_CI_ACCOUNTING=jobcomp jobcomp: jobcomp/filetxt, `sacct -c` only (no extra daemon)
#                               dbd: + slurmdbd + private mariadbd => full `sacct` (installs
#                                    mariadb-server slurmdbd if missing)
#                               none: nothing (status only from squeue/scontrol)
#   SLURM_CI_MINJOBAGE=300      seconds a finished job stays visible in scontrol/squeue
#                               (5 -> gone ~12 s after it ended)
#   SLURM_CI_PORT=7817          slurmctld port; slurmd ports PORT+1..PORT+NODES; slurmdbd
#                               PORT+100; mariadbd PORT+101 (127.0.0.1 only). Not the usual
#                               6817, so a colleague's cluster on the default port is no clash
#   SLURM_CI_EXTRA_CONF=''      extra slurm.conf lines appended verbatim (later value wins)
#   SLURM_CI_LINK_ETC=1         symlink /etc/slurm/slurm.conf -> $DIR/slurm.conf, only if that
#                               path is free (absent or a dangling link), so sbatch etc. work
#                               without SLURM_CONF; another cluster's link is left alone
#   SLURM_CI_TIMEOUT=60         seconds to wait for the node(s) to become idle
# A second cluster beside this one needs its own SLURM_CI_DIR and SLURM_CI_PORT.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${SLURM_CI_DIR:-/tmp/itwinai-hpc-slurm}
NODES=${SLURM_CI_NODES:-2}
CPUS=${SLURM_CI_CPUS:-2}
BIND=${SLURM_CI_BIND:-cores}
GPUS=${SLURM_CI_GPUS:-4}
ACCT=${SLURM_CI_ACCOUNTING:-jobcomp}
MINJOBAGE=${SLURM_CI_MINJOBAGE:-300}
PORT=${SLURM_CI_PORT:-7817}
DBD_PORT=$((PORT + 100))
SQL_PORT=$((PORT + 101))
EXTRA=${SLURM_CI_EXTRA_CONF:-}
LINK_ETC=${SLURM_CI_LINK_ETC:-1}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
TEMPLATE=${SLURM_CI_TEMPLATE:-$HERE/slurm.conf.template}
export SLURM_CONF=$DIR/slurm.conf   # slurmdbd also finds slurmdbd.conf next to it
export SLURM_CI_OWNER=$DIR          # marker in our daemons' environment; stop-slurm.sh uses it
log() { echo "[start-slurm] $*" >&2; }

# One start (or restart) at a time: two test sessions that both find the cluster down or
# outdated would otherwise start two sets of daemons in the same directory.
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9

# alive PIDFILE NAME: process in PIDFILE exists, is not a zombie, and its comm starts with NAME
alive() {
  local p st
  [[ -s $1 ]] || return 1
  p=$(<"$1")
  [[ $p =~ ^[0-9]+$ && -r /proc/$p/stat ]] || return 1
  st=$(sed 's/.*) //' "/proc/$p/stat" | cut -d' ' -f1)
  [[ $st != Z ]] || return 1                 # PID 1 here reaps orphans late
  [[ $(<"/proc/$p/comm") == "$2"* ]]
}
node_names() {
  if ((NODES == 1)); then hostname -s; else for ((i = 1; i <= NODES; i++)); do echo "node$i"; done; fi
}
# Each node's name on the "fast network" (JSC's <node>i InfiniBand names), on an address of its
# own (127.0.2.K), so a test can show that a rendezvous over those names works while SLURM and
# $SLURMD_NODENAME keep the plain names (which resolve to 127.0.0.1, the NodeAddr).
fabric_hosts() {
  if ((NODES > 1)); then for ((i = 1; i <= NODES; i++)); do echo "127.0.2.$i node${i}i"; done; fi
}
all_up() {
  alive "$DIR/munge/munged.pid" munged && alive "$DIR/slurmctld.pid" slurmctld || return 1
  if [[ $ACCT == dbd ]]; then
    alive "$DIR/mysql/mysqld.pid" mariadbd && alive "$DIR/slurmdbd.pid" slurmdbd || return 1
  fi
  local n
  for n in $(node_names); do alive "$DIR/slurmd-$n.pid" slurmd || return 1; done
}
# What a registered, usable node may show while jobs come and go: a job's end leaves its node
# "completing" for up to KillWait, backfill marks a node it holds for a pending job "planned".
# Treating those as broken made a second start (another pytest worker, another session)
# restart a busy cluster and kill every job on it.
USABLE='^(idle|mixed|allocated|completing|planned)$'
nodes_usable() {   # every node registered and usable
  local states
  states=$(sinfo -h -N -o '%T' 2>/dev/null) || return 1
  [[ -n $states ]] && ! grep -qvE "$USABLE" <<<"$states"
}
wait_for() {     # wait_for WHAT CMD...: poll every 0.2 s until CMD succeeds or TIMEOUT
  local what=$1 deadline=$((SECONDS + TIMEOUT)); shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$what not ready after ${TIMEOUT}s; last log lines:"
      tail -n 20 "$DIR"/log/*.log "$DIR"/log/*.err >&2 2>/dev/null || true
      SLURM_CI_DIR=$DIR "$HERE/stop-slurm.sh" || true
      exit 1
    fi
    sleep 0.2
  done
}

# ---- 0. already running? --------------------------------------------------------------
# A running cluster is reused only if it was started with the same knobs; otherwise a test
# asking for, say, MinJobAge=5 would silently get the 300 of an earlier start.
# The checksums of this script and of the template restart a cluster whose set-up changed.
KNOBS="nodes=$NODES cpus=$CPUS bind=$BIND gpus=$GPUS accounting=$ACCT minjobage=$MINJOBAGE port=$PORT extra=$EXTRA template=$(cksum <"$TEMPLATE") script=$(cksum <"${BASH_SOURCE[0]}")"
case $BIND in
  cores) TASKPLUGIN=$'TaskPlugin=task/affinity\nTaskPluginParam=Cores'
         # the cores this process may use; not nproc alone, which reports OMP_NUM_THREADS
         cores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
         if ((CPUS > cores)); then
           log "SLURM_CI_CPUS=$CPUS but only $cores cores here: with binding every node's CPUs" \
               "must be real ones; use SLURM_CI_CPUS<=$cores or SLURM_CI_BIND=none"
           exit 2
         fi ;;
  none)  TASKPLUGIN=TaskPlugin=task/none ;;
  *) log "SLURM_CI_BIND must be cores or none"; exit 2 ;;
esac
# Every daemon alive: the controller may be slow to answer and a node may show a state outside
# USABLE for a moment while four pytest workers load it; ask again for up to 10 s before
# calling the cluster stale (a restart kills every other worker's jobs: seen once in a full run,
# the answer it went on unrecorded, hence the log line).
reachable() { scontrol ping >/dev/null 2>&1 && nodes_usable; }
usable=0
if all_up; then
  for _ in 1 2 3 4 5 6; do reachable && { usable=1; break; }; sleep 2; done
  ((usable)) || log "daemons alive, but ping or node states say not usable:" \
                    "$(sinfo -h -N -o '%N=%T' 2>&1 | tr '\n' ' ')"
fi
if ((usable)); then
  if [[ $(cat "$DIR/knobs" 2>/dev/null) == "$KNOBS" ]]; then
    log "already running ($DIR)"; echo "export SLURM_CONF=$SLURM_CONF"; exit 0
  fi
  log "running in $DIR with other settings: restarting it"
fi
if compgen -G "$DIR/*.pid" >/dev/null || [[ -e $DIR/munge/munged.pid || -e $DIR/mysql/mysqld.pid ]]; then
  log "partial/stale/other cluster in $DIR: stopping it first"
  SLURM_CI_DIR=$DIR "$HERE/stop-slurm.sh" || true
fi

# ---- 1. packages (Debian 12: slurm-wlm 22.05.8) ---------------------------------------
pkgs=()
for c in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${c%%:*}" >/dev/null || pkgs+=("${c#*:}")
done
if [[ $ACCT == dbd ]]; then
  command -v slurmdbd >/dev/null || pkgs+=(slurmdbd)
  command -v mariadbd >/dev/null || pkgs+=(mariadb-server)
fi
if ((${#pkgs[@]})); then
  log "installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-cache show "${pkgs[0]}" >/dev/null 2>&1 || apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2 ||
    { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2; }
fi

# ---- 2. directories, munge key, config ------------------------------------------------
rm -rf "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/mysql"   # fresh cluster: job ids from 1
mkdir -p "$DIR"/{state,spool,log,munge}
chmod 755 "$DIR" "$DIR/munge"                # munged insists the socket dir is world-x
[[ -s $DIR/munge/munge.key ]] || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"

HOST=$(hostname -s)
MEM_MB=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
REALMEM=$((MEM_MB * 9 / 10 / NODES))          # a bit below the real memory, split over nodes
DEFMEM=$((REALMEM / CPUS))
GRES=""; ((GPUS > 0)) && GRES=" Gres=gpu:$GPUS"
NODESPEC="CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$REALMEM$GRES State=UNKNOWN"
if ((NODES == 1)); then
  NODELINES="NodeName=$HOST NodeAddr=127.0.0.1 Port=$((PORT + 1)) $NODESPEC"
else
  NODELINES="NodeName=node[1-$NODES] NodeHostname=$HOST NodeAddr=127.0.0.1 Port=[$((PORT + 1))-$((PORT + NODES))] $NODESPEC"
fi
case $ACCT in
  none)    ACCTLINES=$'JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none' ;;
  jobcomp) ACCTLINES=$'JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/filetxt\n'"JobCompLoc=$DIR/log/jobcomp.txt" ;;
  dbd)     ACCTLINES=$'JobAcctGatherType=jobacct_gather/linux\nAccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n'"AccountingStoragePort=$DBD_PORT"$'\n'"AccountingStoragePass=$DIR/munge/munge.socket"$'\nAccountingStorageTRES=gres/gpu\nJobCompType=jobcomp/none' ;;
  *) log "SLURM_CI_ACCOUNTING must be none, jobcomp or dbd"; exit 2 ;;
esac
conf=$(<"$TEMPLATE")
conf=${conf//@CLUSTER@/"ci"}
conf=${conf//@HOST@/"$HOST"}
conf=${conf//@DIR@/"$DIR"}
conf=${conf//@CTLD_PORT@/"$PORT"}
conf=${conf//@DEFMEM@/"$DEFMEM"}
conf=${conf//@ACCOUNTING@/"$ACCTLINES"}
conf=${conf//@MINJOBAGE@/"$MINJOBAGE"}
conf=${conf//@TASKPLUGIN@/"$TASKPLUGIN"}
conf=${conf//@NODELINES@/"$NODELINES"}
conf=${conf//@EXTRA@/"$EXTRA"}
printf '%s\n' "$conf" >"$SLURM_CONF"
printf '%s\n' "$KNOBS" >"$DIR/knobs"

rm -f "$DIR/gres.conf"                      # read from the directory of slurm.conf
for n in $(node_names); do mkdir -p "$DIR/spool/$n"; done   # else slurmd logs hwloc/socket errors
if ((GPUS > 0)); then
  mkdir -p "$DIR/dev"
  for n in $(node_names); do
    # must stat as a char device or slurmd drops it (no CUDA_VISIBLE_DEVICES): alias /dev/null
    for ((g = 0; g < GPUS; g++)); do ln -sfn /dev/null "$DIR/dev/$n-gpu$g"; done
    echo "NodeName=$n Name=gpu File=$DIR/dev/$n-gpu[0-$((GPUS - 1))]" >>"$DIR/gres.conf"
  done
fi

if [[ $LINK_ETC == 1 ]]; then
  mkdir -p /etc/slurm
  # -e follows the link: a dangling link (a stopped cluster's) counts as free; a live one is
  # another cluster's and stays
  if [[ ! -e /etc/slurm/slurm.conf ]]; then
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
  elif [[ $(readlink -f /etc/slurm/slurm.conf) != "$SLURM_CONF" ]]; then
    log "/etc/slurm/slurm.conf belongs to another cluster; left alone - export SLURM_CONF=$SLURM_CONF"
  fi
fi
if ((NODES > 1)); then      # torchrun etc. resolve node names -> 127.0.0.1, <node>i -> 127.0.2.K
  while read -r addr n; do
    # Each cluster keeps its own tagged line, so stopping a neighbour cluster with the same
    # node names (which removes its lines) does not break ours; a name that resolves without
    # any slurm-ci line is a real host and is left alone.
    grep -q "^$addr $n # slurm-ci:$DIR\$" /etc/hosts && continue
    if ! getent hosts "$n" >/dev/null || grep -q "^$addr $n # slurm-ci:" /etc/hosts; then
      echo "$addr $n # slurm-ci:$DIR" >>/etc/hosts
    fi
  done < <(for n in $(node_names); do echo "127.0.0.1 $n"; done; fabric_hosts)
fi

# ---- 3. daemons -----------------------------------------------------------------------
# Each daemon is started with fd 9 (the start lock) closed: a daemon holding it would block
# every later start.
munged --socket="$DIR/munge/munge.socket" --key-file="$DIR/munge/munge.key" \
  --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
  --seed-file="$DIR/munge/munged.seed" 9>&-

if [[ $ACCT == dbd ]]; then
  mkdir -p "$DIR/mysql"
  mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" \
    --auth-root-authentication-method=normal --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1
  # mariadbd does not daemonize itself; setsid detaches it from the starting shell
  setsid mariadbd --no-defaults --user=root --datadir="$DIR/mysql" \
    --socket="$DIR/mysql/mysqld.sock" --pid-file="$DIR/mysql/mysqld.pid" \
    --port="$SQL_PORT" --bind-address=127.0.0.1 --log-error="$DIR/log/mariadb.err" \
    --skip-log-bin --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 9>&- &
  sql() { mariadb --no-defaults -S "$DIR/mysql/mysqld.sock" -uroot -e "$1"; }
  wait_for mariadbd sql 'SELECT 1'
  sql "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$SQL_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DIR/slurmdbd.conf"             # slurmdbd refuses a world-readable conf
  slurmdbd 9>&-                              # no -f: reads slurmdbd.conf beside $SLURM_CONF
  wait_for slurmdbd sacctmgr -n list cluster
fi

slurmctld -f "$SLURM_CONF" 9>&-
for n in $(node_names); do slurmd -f "$SLURM_CONF" -N "$n" 9>&-; done

# ---- 4. wait until every node is usable -----------------------------------------------
cluster_ready() { all_up && scontrol ping && nodes_usable; }
wait_for "cluster" cluster_ready
# slurmctld registers with slurmdbd a moment after it is up; sacct finds nothing before that
registered() { sacctmgr -n -P list cluster format=cluster,controlport | grep -qv '|0$'; }
if [[ $ACCT == dbd ]]; then wait_for "cluster registration in slurmdbd" registered; fi
log "up: $(sinfo -h -N -o '%N:%T' | tr '\n' ' ')(accounting=$ACCT, SLURM_CONF=$SLURM_CONF)"
echo "export SLURM_CONF=$SLURM_CONF"
